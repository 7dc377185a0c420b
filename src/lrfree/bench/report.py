"""Markdown tables and PNG plots, regenerated from the run records alone.

Nothing here reruns anything: `build_report(out)` reads every `*.json` under `out`, so a
report can be rebuilt (or merged from several machines' files) at any time.
"""
from __future__ import annotations

import json
import math
import statistics
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LR_FREE = ("ours", "peer")
SWEEPS = (("adam", "Adam"), ("adam-avg", "Adam + average"), ("sgd", "SGD momentum"))
TABLE_HEADER = ("| optimizer | family | seeds | mean ± std | ratio to best Adam | LR-free rank | "
                "diverged | time/run (s) |")


@dataclass
class Row:
    """All seeds of one optimizer configuration on one task."""

    label: str
    family: str
    lr: float | None
    schedule: str
    runs: list[dict[str, Any]] = field(default_factory=list)

    def finals(self) -> list[float]:
        return [r["final_metric"] for r in self.runs if not r["diverged"]]

    def diverged(self) -> int:
        return sum(r["diverged"] for r in self.runs)

    def mean(self) -> float:
        finals = self.finals()
        return statistics.fmean(finals) if finals else math.nan

    def std(self) -> float:
        finals = self.finals()
        return statistics.stdev(finals) if len(finals) > 1 else 0.0


@dataclass
class TaskResults:
    name: str
    metric: str
    higher_is_better: bool
    rows: dict[str, Row] = field(default_factory=dict)

    def score(self, value: float) -> float:
        """Larger is better, diverged (nan) is worst."""
        if not math.isfinite(value):
            return -math.inf
        return value if self.higher_is_better else -value

    def standing(self, row: Row) -> tuple[bool, float]:
        """Sort key of a row, larger is better: a configuration that diverged on any seed
        comes after every one that never did, whatever the mean of its surviving seeds (a
        hand-tuner would not pick an lr that blew up on one seed)."""
        return row.diverged() == 0, self.score(row.mean())

    def best_of(self, family: str) -> Row | None:
        """The sweep member of `family` (scheduled runs only) that stands highest."""
        members = [r for r in self.rows.values() if r.family == family and r.schedule != "none"]
        return max(members, key=self.standing, default=None)


@dataclass
class Report:
    markdown: str
    path: Path
    plots: list[Path]


def load_records(out: Path) -> list[dict[str, Any]]:
    """Every run record under `out` (temporary files of unfinished writes are ignored)."""
    return [json.loads(p.read_text()) for p in sorted(out.rglob("*.json"))
            if not p.name.startswith(".tmp-")]


def _label(record: dict[str, Any]) -> str:
    return record["optimizer"] + (" (no sched)" if record["schedule"] == "none" else "")


def group(records: list[dict[str, Any]]) -> dict[str, TaskResults]:
    """Records by task, then by row label."""
    tasks: dict[str, TaskResults] = {}
    for rec in records:
        task = tasks.setdefault(rec["task"], TaskResults(rec["task"], rec["metric"],
                                                         rec["higher_is_better"]))
        label = _label(rec)
        row = task.rows.setdefault(label, Row(label, rec["optimizer_family"], rec["lr"],
                                              rec["schedule"]))
        row.runs.append(rec)
    return tasks


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "—"
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


def lr_free_ranks(task: TaskResults) -> dict[str, float]:
    """Mean over shared seeds of each LR-free method's rank (1 = best, diverged = last)."""
    # the no-schedule ablation rows are shown, not ranked: the rank compares the defaults
    rows = [r for r in task.rows.values() if r.family in LR_FREE and r.schedule != "none"]
    if not rows:
        return {}
    seeds = set.intersection(*({run["seed"] for run in r.runs} for r in rows))
    ranks: dict[str, list[int]] = defaultdict(list)
    for seed in sorted(seeds):
        scores = {}
        for r in rows:
            run = next(x for x in r.runs if x["seed"] == seed)
            value = math.nan if run["diverged"] else run["final_metric"]
            scores[r.label] = task.score(value)
        for place, label in enumerate(sorted(scores, key=scores.__getitem__, reverse=True), 1):
            ranks[label].append(place)
    return {label: statistics.fmean(v) for label, v in ranks.items()}


def _sweep_lines(task: TaskResults) -> list[str]:
    lines = []
    for family, title in SWEEPS:
        members = [r for r in task.rows.values() if r.family == family and r.schedule != "none"]
        if len(members) < 2:
            continue
        ordered = sorted(members, key=task.standing, reverse=True)
        best, median, worst = ordered[0], ordered[len(ordered) // 2], ordered[-1]
        lrs = sorted(r.lr for r in members if r.lr is not None)
        edge = " **best lr is at the edge of the grid: widen the sweep**" if best.lr in (
            lrs[0], lrs[-1]) else ""
        lines.append(f"- {title} sweep ({len(members)} lrs): best {_sweep_cell(best)}, "
                     f"median {_sweep_cell(median)}, worst {_sweep_cell(worst)}{edge}")
    return lines


def _sweep_cell(row: Row) -> str:
    """`0.61 (lr 0.003)`, with the divergences when a seed diverged (its mean is then over
    the seeds that did not)."""
    diverged = f", {row.diverged()}/{len(row.runs)} diverged" if row.diverged() else ""
    return f"{_fmt(row.mean())} (lr {row.lr:g}{diverged})"


def task_table(task: TaskResults) -> str:
    """One task's markdown section: a row per configuration plus the sweep summaries."""
    best_adam = task.best_of("adam")
    ranks = lr_free_ranks(task)
    direction = "higher" if task.higher_is_better else "lower"
    lines = [f"### {task.name} — {task.metric} ({direction} is better)", ""]
    if best_adam is not None:
        lines += [f"Ratio = mean / mean of best-tuned Adam (lr {best_adam.lr:g}).", ""]
    lines += [TABLE_HEADER, "|" + "---|" * (TABLE_HEADER.count("|") - 1)]
    ordered = sorted(task.rows.values(), key=lambda r: (*task.standing(r), r.label),
                     reverse=True)
    for row in ordered:
        reference = best_adam.mean() if best_adam is not None else math.nan
        ratio = row.mean() / reference if math.isfinite(reference) and reference else math.nan
        rank = f"{ranks[row.label]:.2f}" if row.label in ranks else ""
        wall = statistics.fmean(r["wall_time_s"] for r in row.runs)
        value = f"{_fmt(row.mean())} ± {_fmt(row.std())}" if row.finals() else "diverged"
        lines.append(f"| {row.label} | {row.family} | {len(row.runs)} | "
                     f"{value} | {_fmt(ratio)} | {rank} | "
                     f"{row.diverged()}/{len(row.runs)} | {wall:.1f} |")
    sweeps = _sweep_lines(task)
    return "\n".join(lines + ([""] + sweeps if sweeps else []))


def summary_table(tasks: dict[str, TaskResults]) -> str:
    """Mean LR-free rank across tasks and total divergences per LR-free method."""
    per_method: dict[str, list[float]] = defaultdict(list)
    diverged: dict[str, int] = defaultdict(int)
    for task in tasks.values():
        for label, rank in lr_free_ranks(task).items():
            per_method[label].append(rank)
            diverged[label] += task.rows[label].diverged()
    if not per_method:
        return ""
    lines = ["| LR-free method | tasks | mean rank | diverged runs |", "|---|---|---|---|"]
    for label in sorted(per_method, key=lambda m: statistics.fmean(per_method[m])):
        lines.append(f"| {label} | {len(per_method[label])} | "
                     f"{statistics.fmean(per_method[label]):.2f} | {diverged[label]} |")
    return "\n".join(lines)


def build_report(out: Path, plots: bool = True) -> Report:
    """Read every record under `out`, write `out/report.md` and `out/plots/*.png`.

    A hand-written `out/notes.md` (the findings) is included after the header.
    """
    out = Path(out)
    records = load_records(out)
    tasks = group(records)
    plot_paths: list[Path] = []
    if plots:
        from lrfree.bench.plots import plot_task

        plot_paths = [plot_task(task, out / "plots" / f"{name}.png")
                      for name, task in sorted(tasks.items())]
    header = ["# lrfree benchmark report", ""]
    if records:
        first = records[0]
        commands = sorted({r["command"] for r in records})
        versions, host = first["versions"], first["machine"]
        budgets = ", ".join(sorted({r["budget"] for r in records}))
        header += [(f"Budget: {budgets}; {len(records)} runs; torch {versions.get('torch')}, "
                    f"lrfree {versions.get('lrfree')}, git {first.get('git')}; machine: "
                    f"{host['platform']}, {host['cpu_count']} CPUs, "
                    f"{host['torch_threads']} torch threads."), "",
                   "Commands: " + "; ".join(f"`{c}`" for c in commands), ""]
    # Findings are written by people, from the tables below; kept beside the data so the
    # regenerated report carries them.
    notes = out / "notes.md"
    if notes.exists():
        header += [notes.read_text().strip(), ""]
    summary = summary_table(tasks)
    if summary:
        header += ["## Mean rank among LR-free methods", "", summary, ""]
    body = []
    for name, task in sorted(tasks.items()):
        body += [task_table(task), ""]
        plot = out / "plots" / f"{name}.png"
        if plot in plot_paths:
            body += [f"![{name}](plots/{name}.png)", ""]
    markdown = "\n".join(header + ["## Per task", ""] + body) if tasks else "No runs found.\n"
    path = out / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown)
    return Report(markdown, path, plot_paths)


def mean_curve(runs: list[dict[str, Any]], x_key: str, y_key: str
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x, mean, min, max over seeds on the steps every run reached (diverged runs end early)."""
    curves = [(r["curves"][x_key], r["curves"][y_key]) for r in runs if r["curves"][x_key]]
    if not curves:
        empty = np.array([])
        return empty, empty, empty, empty
    length = min(len(x) for x, _ in curves)
    ys = np.array([[math.nan if v is None else v for v in y[:length]] for _, y in curves])
    with warnings.catch_warnings():
        # Methods that expose no effective lr log NaN everywhere; that is not an error here.
        warnings.simplefilter("ignore", RuntimeWarning)
        return (np.array(curves[0][0][:length]), np.nanmean(ys, axis=0),
                np.nanmin(ys, axis=0), np.nanmax(ys, axis=0))
