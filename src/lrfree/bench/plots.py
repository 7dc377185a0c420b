"""One PNG per task: loss and metric curves, effective learning rates, spread over seeds."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lrfree.bench.optimizers import cosine_multiplier

if TYPE_CHECKING:
    from lrfree.bench.report import Row, TaskResults

# Ours solid, peers dashed, tuned baselines dotted: the family is readable without the legend.
LINESTYLE = {"ours": "-", "peer": "--"}


def _style(row: Row, colors: dict[str, str]) -> dict[str, str]:
    return {"color": colors[row.label], "ls": LINESTYLE.get(row.family, ":")}


def _colors(task: TaskResults) -> dict[str, str]:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    # tab20 comes in light/dark pairs: take the dark ones first so that neighbours differ.
    return {label: cmap((2 * i) % 20 + (2 * i // 20) % 2)
            for i, label in enumerate(sorted(task.rows))}


def _readable_subset(task: TaskResults) -> list[Row]:
    """Ours, the peers, and the best member of each hand-tuned sweep."""
    rows = [r for r in task.rows.values() if r.family in ("ours", "peer")]
    for family in ("adam", "adam-avg", "sgd"):
        best = task.best_of(family)
        if best is not None:
            rows.append(best)
    return sorted(rows, key=lambda r: r.label)


def _curve_panel(ax, rows: list[Row], colors: dict[str, str], x_key: str, y_key: str, title: str,
                 log: bool) -> None:
    """Mean over seeds with a min–max band; log scale when asked and every value is positive."""
    from lrfree.bench.report import mean_curve

    positive = True
    for row in rows:
        x, mean, low, high = mean_curve(row.runs, x_key, y_key)
        if x.size == 0:
            continue
        positive = positive and bool(np.nanmin(low) > 0)
        ax.plot(x, mean, label=row.label, lw=1.2, **_style(row, colors))
        if len(row.runs) > 1:
            ax.fill_between(x, low, high, color=colors[row.label], alpha=0.15, lw=0)
    if log and positive:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("step")


def _lr_panel(ax, task: TaskResults, colors: dict[str, str]) -> None:
    from lrfree.bench.report import mean_curve

    for row in (r for r in task.rows.values() if r.family in ("ours", "peer")):
        x, mean, _, _ = mean_curve(row.runs, "steps", "effective_lr")
        if x.size and np.isfinite(mean).any():
            ax.plot(x, mean, label=row.label, lw=1.2, **_style(row, colors))
    best = task.best_of("adam")
    if best is not None and best.lr is not None:
        steps = max((r["budget_detail"]["steps"] for r in best.runs), default=1)
        ax.axhline(best.lr, color="k", ls=":", lw=1, label=f"best Adam lr {best.lr:g}")
        if best.schedule == "cosine":
            grid = np.linspace(0, steps, 200)
            shape = cosine_multiplier(steps)
            ax.plot(grid, [best.lr * shape(int(k)) for k in grid], "k--", lw=1,
                    label="best Adam lr × cosine")
    ax.set_yscale("log")
    ax.set_title("effective lr (Adam units; sps, dadaptsgd, dog, momsps in SGD units)")
    ax.set_xlabel("step")
    ax.legend(fontsize=6)


def _spread_panel(ax, task: TaskResults) -> None:
    rows = sorted(task.rows.values(), key=lambda r: task.score(r.mean()), reverse=True)
    for i, row in enumerate(rows):
        finals = row.finals()
        ax.scatter([i] * len(finals), finals, s=10, color="C0")
        if finals:
            ax.scatter([i], [float(np.mean(finals))], marker="_", s=200, color="C3")
        if row.diverged():
            ax.annotate(f"{row.diverged()} div", (i, 0), xycoords=("data", "axes fraction"),
                        fontsize=6, ha="center", color="C3", rotation=90)
    ax.set_xticks(range(len(rows)), [r.label for r in rows], rotation=90, fontsize=6)
    values = [v for r in rows for v in r.finals()]
    if not task.higher_is_better and values and min(values) > 0:
        ax.set_yscale("log")
    ax.set_title(f"final {task.metric} per seed (best left)")


def plot_task(task: TaskResults, path: Path) -> Path:
    """Draw the task's 2x2 figure to `path` and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _readable_subset(task)
    colors = _colors(task)
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    _curve_panel(axes[0, 0], rows, colors, "steps", "train_loss", "train loss (mean, min–max over seeds)",
                 log=True)
    _curve_panel(axes[0, 1], rows, colors, "eval_steps", "eval_metric", f"eval {task.metric}",
                 log=not task.higher_is_better)
    axes[0, 1].legend(fontsize=6)
    _lr_panel(axes[1, 0], task, colors)
    _spread_panel(axes[1, 1], task)
    fig.suptitle(task.name)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
