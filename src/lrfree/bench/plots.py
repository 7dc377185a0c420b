"""One PNG per task: loss and metric curves, effective learning rates, spread over seeds.

Every line has its own colour, line style and marker, so that overlapping lines stay
apart in grey print too; every panel has axis labels and a legend, so that a figure reads
without the report around it.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lrfree.bench.optimizers import cosine_multiplier
from lrfree.bench.results import LR_FREE, TaskResults, mean_curve

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from lrfree.bench.results import Row

# Ours solid, peers dashed, tuned baselines dotted: the family reads from the line style;
# markers tell apart the members of one family.
LINESTYLE = {"ours": "-", "peer": "--"}
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "*", "h", "p")
# The methods whose effective lr is in SGD units (the others: in Adam units).
SGD_UNITS = ("sps", "dadaptsgd", "dog", "momsps")


def styles(task: TaskResults) -> dict[str, dict[str, Any]]:
    """Label -> matplotlib line properties; no two labels share (line style, marker)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    out: dict[str, dict[str, Any]] = {}
    counters: dict[str, itertools.count] = {}
    for i, label in enumerate(sorted(task.rows)):
        ls = LINESTYLE.get(task.rows[label].family, ":")
        marker = MARKERS[next(counters.setdefault(ls, itertools.count())) % len(MARKERS)]
        # tab20 comes in light/dark pairs: take the dark ones first so that neighbours differ
        out[label] = {"color": cmap((2 * i) % 20 + (2 * i // 20) % 2), "ls": ls,
                      "marker": marker, "markersize": 4}
    return out


def _readable_subset(task: TaskResults) -> list[Row]:
    """Ours, the peers, and the best member of each hand-tuned sweep."""
    rows = [r for r in task.rows.values() if r.family in LR_FREE]
    for family in ("adam", "adam-avg", "sgd"):
        best = task.best_of(family)
        if best is not None:
            rows.append(best)
    return sorted(rows, key=lambda r: r.label)


def _markevery(size: int, index: int) -> tuple[int, int]:
    """Markers on every k-th point, starting at a different point for each line of a
    panel: where two lines coincide (a method and its averaged variant train alike), the
    markers of both still show."""
    every = max(2, size // 8)
    return index % every, every


def _legend_label(row: Row) -> str:
    return f"{row.label} (best of sweep)" if row.family in ("adam", "adam-avg", "sgd") \
        else row.label


def _curve_panel(ax: Axes, rows: list[Row], style: dict[str, dict[str, Any]], x_key: str,
                 y_key: str, title: str, ylabel: str, log: bool) -> None:
    """Mean over seeds, with a min–max band where a row has more than one seed; log scale
    when asked and every value is positive."""
    positive, banded = True, False
    for index, row in enumerate(rows):
        x, mean, low, high = mean_curve(row.runs, x_key, y_key)
        if x.size == 0:
            continue
        positive = positive and bool(np.nanmin(low) > 0)
        ax.plot(x, mean, label=_legend_label(row), lw=1.2,
                markevery=_markevery(x.size, index), **style[row.label])
        if len(row.runs) > 1:
            banded = True
            ax.fill_between(x, low, high, color=style[row.label]["color"], alpha=0.15, lw=0)
    if log and positive:
        ax.set_yscale("log")
    seeds = {len(r.runs) for r in rows}
    ax.set_title(title + (" (mean over seeds; band: min–max)" if banded else
                          f" ({_seed_words(seeds)})"))
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=6)


def _seed_words(counts: set[int]) -> str:
    return "one seed" if counts == {1} else "mean over seeds"


def _lr_panel(ax: Axes, task: TaskResults, style: dict[str, dict[str, Any]]) -> None:
    drawn = []
    for row in sorted((r for r in task.rows.values() if r.family in LR_FREE),
                      key=lambda r: r.label):
        x, mean, _, _ = mean_curve(row.runs, "steps", "effective_lr")
        if x.size and np.isfinite(mean).any():
            ax.plot(x, mean, label=row.label, lw=1.2,
                    markevery=_markevery(x.size, len(drawn)), **style[row.label])
            drawn.append(row.label)
    best = task.best_of("adam")
    if best is not None and best.lr is not None:
        steps = max((r["budget_detail"]["steps"] for r in best.runs), default=1)
        ax.axhline(best.lr, color="k", ls=":", lw=1, label=f"best Adam lr {best.lr:g}")
        if best.schedule == "cosine":
            grid = np.linspace(0, steps, 200)
            shape = cosine_multiplier(steps)
            ax.plot(grid, [best.lr * shape(int(k)) for k in grid], "k-.", lw=1,
                    label="best Adam lr × cosine")
    ax.set_yscale("log")
    sgd = [m for m in drawn if m in SGD_UNITS]
    title = "effective lr (Adam units"
    title += f"; {', '.join(sgd)} in SGD units)" if sgd else ")"
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.legend(fontsize=6)


def _spread_panel(ax: Axes, task: TaskResults) -> None:
    rows = sorted(task.rows.values(), key=lambda r: task.score(r.mean()), reverse=True)
    for i, row in enumerate(rows):
        finals = row.finals()
        ax.scatter([i] * len(finals), finals, s=10, color="C0",
                   label="final value, one seed" if i == 0 else None)
        if finals:
            ax.scatter([i], [float(np.mean(finals))], marker="_", s=200, color="C3",
                       label="mean over seeds" if i == 0 else None)
        if row.diverged():
            ax.annotate(f"{row.diverged()} div", (i, 0), xycoords=("data", "axes fraction"),
                        fontsize=6, ha="center", color="C3", rotation=90)
    ax.set_xticks(range(len(rows)), [r.label for r in rows], rotation=90, fontsize=6)
    values = [v for r in rows for v in r.finals()]
    if not task.higher_is_better and values and min(values) > 0:
        ax.set_yscale("log")
    note = "; n div: n seeds diverged" if any(r.diverged() for r in rows) else ""
    ax.set_title(f"final {task.metric} per seed (best left{note})")
    ax.set_ylabel(f"final {task.metric}")
    ax.legend(fontsize=6)


def task_figure(task: TaskResults) -> Figure:
    """The task's 2x2 figure: train loss, eval metric, effective lr, final values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _readable_subset(task)
    style = styles(task)
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    _curve_panel(axes[0, 0], rows, style, "steps", "train_loss", "train loss", "train loss",
                 log=True)
    _curve_panel(axes[0, 1], rows, style, "eval_steps", "eval_metric", f"eval {task.metric}",
                 task.metric, log=not task.higher_is_better)
    _lr_panel(axes[1, 0], task, style)
    _spread_panel(axes[1, 1], task)
    direction = "higher" if task.higher_is_better else "lower"
    fig.suptitle(f"{task.name}: {task.metric}, {direction} is better")
    fig.tight_layout()
    return fig


def plot_task(task: TaskResults, path: Path) -> Path:
    """Draw the task's figure to `path` and return it."""
    import matplotlib.pyplot as plt

    fig = task_figure(task)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
