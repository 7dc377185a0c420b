"""Markdown tables and PNG plots, regenerated from the run records alone.

Nothing here reruns anything: `build_report(out)` reads every `*.json` under `out`, so a
report can be rebuilt (or merged from several machines' files) at any time.

The LR-free ranks compare like with like: the *compared* methods are the LR-free methods
that ran on every task of the report, each task ranks them among themselves, and the mean
is over every task. A method that ran on fewer tasks is listed apart, ranked among the
compared methods plus itself on the tasks it ran, with its task count.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrfree.bench import grid
from lrfree.bench.results import (LR_FREE, SWEEPS, Row, TaskResults, group, load_records,
                                  mean_curve)

__all__ = ["Report", "build_report", "render_report", "compared_methods", "group", "load_records",
           "lr_free_ranks", "mean_curve", "summary_table", "task_table"]

TABLE_HEADER = ("| optimizer | family | seeds | mean ± std | ratio to best Adam | LR-free rank | "
                "diverged | time/run (s) | commit |")


@dataclass
class Report:
    markdown: str
    path: Path
    plots: list[Path]


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "—"
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


def _lr_free_rows(task: TaskResults) -> list[Row]:
    # the no-schedule ablation rows are shown, not ranked: the rank compares the defaults
    return [r for r in task.rows.values() if r.family in LR_FREE and r.schedule != "none"]


def compared_methods(tasks: dict[str, TaskResults]) -> list[str]:
    """The LR-free methods that ran on every task that has any LR-free run."""
    sets = [{r.label for r in _lr_free_rows(t)} for t in tasks.values()]
    sets = [s for s in sets if s]
    return sorted(set.intersection(*sets)) if sets else []


def lr_free_ranks(task: TaskResults, compared: list[str] | None = None) -> dict[str, float]:
    """Mean over shared seeds of each LR-free method's rank (1 = best, diverged = last).

    With `compared`, the methods in it are ranked among themselves, and every other
    LR-free method of the task among them plus itself (so that one extra method never
    moves the others' ranks). Without it, all the task's LR-free methods are ranked
    together.
    """
    rows = {r.label: r for r in _lr_free_rows(task)}
    if compared is None:
        return _ranks(task, list(rows.values())) if rows else {}
    core = [rows[m] for m in compared if m in rows]
    ranks = _ranks(task, core) if core else {}
    for label, row in rows.items():
        if label not in ranks:
            ranks[label] = _ranks(task, [*core, row])[label]
    return ranks


def _ranks(task: TaskResults, rows: list[Row]) -> dict[str, float]:
    seeds = set.intersection(*({run["seed"] for run in r.runs} for r in rows))
    ranks: dict[str, list[int]] = defaultdict(list)
    for seed in sorted(seeds):
        scores = {}
        for r in rows:
            run = next(x for x in r.runs if x["seed"] == seed)
            value = math.nan if run["diverged"] else run["final_metric"]
            scores[r.label] = task.score(value)
        for label, place in _tied_places(scores).items():
            ranks[label].append(place)
    return {label: statistics.fmean(v) for label, v in ranks.items()}


def _tied_places(scores: dict[str, float]) -> dict[str, float]:
    """1 = the largest score; equal scores share the mean of the places they span (two
    methods tied for first both get 1.5, so a tie neither helps nor hurts either)."""
    order = sorted(scores.values(), reverse=True)
    first = {v: order.index(v) + 1 for v in set(order)}
    last = {v: len(order) - order[::-1].index(v) for v in set(order)}
    return {label: (first[v] + last[v]) / 2 for label, v in scores.items()}


def _sweep_lines(task: TaskResults) -> list[str]:
    lines = []
    for family, title in SWEEPS:
        members = task.sweep(family)
        if len(members) < 2:
            continue
        ordered = sorted(members, key=task.standing, reverse=True)
        best, median, worst = ordered[0], ordered[len(ordered) // 2], ordered[-1]
        added = sorted(r.lr for r in members if r.extended() and r.lr is not None)
        note = ""
        if added:
            note += (" — **extended by the grid-edge rule** (the best lr was at the edge) with "
                     f"lr {', '.join(f'{lr:g}' for lr in added)}")
        if grid.edge(task, family):
            note += " **best lr is still at the edge of the grid: widen the sweep**"
        lines.append(f"- {title} sweep ({len(members)} lrs): best {_sweep_cell(best)}, "
                     f"median {_sweep_cell(median)}, worst {_sweep_cell(worst)}{note}")
    return lines


def _sweep_cell(row: Row) -> str:
    """`0.61 (lr 0.003)`, with the divergences when a seed diverged (its mean is then over
    the seeds that did not)."""
    diverged = f", {row.diverged()}/{len(row.runs)} diverged" if row.diverged() else ""
    return f"{_fmt(row.mean())} (lr {row.lr:g}{diverged})"


def _commits(runs: list[dict[str, Any]]) -> str:
    """The short commit of each run (`+dirty`: uncommitted changes in the tree)."""
    revs = sorted({(r.get("git") or "unknown") for r in runs})
    return ", ".join(rev[:7] + ("+dirty" if rev.endswith("+dirty") else "") for rev in revs)


def task_table(task: TaskResults, compared: list[str] | None = None) -> str:
    """One task's markdown section: a row per configuration plus the sweep summaries."""
    best_adam = task.best_of("adam")
    ranks = lr_free_ranks(task, compared)
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
                     f"{row.diverged()}/{len(row.runs)} | {wall:.1f} | {_commits(row.runs)} |")
    sweeps = _sweep_lines(task)
    return "\n".join(lines + ([""] + sweeps if sweeps else []))


def mean_ranks(tasks: dict[str, TaskResults],
               left_out: frozenset[str] = frozenset()) -> dict[str, tuple[float, int, int]]:
    """LR-free method -> (mean rank, tasks ranked on, diverged runs), over the tasks it ran.

    `left_out`: methods taken out of the field (neither ranked nor ranked against), e.g. a
    variant of one method that would take places from the others.
    """
    compared = [m for m in compared_methods(tasks) if m not in left_out]
    per_method: dict[str, list[float]] = defaultdict(list)
    diverged: dict[str, int] = defaultdict(int)
    for task in tasks.values():
        task = TaskResults(task.name, task.metric, task.higher_is_better,
                           {k: r for k, r in task.rows.items() if k not in left_out})
        for label, rank in lr_free_ranks(task, compared).items():
            per_method[label].append(rank)
            diverged[label] += task.rows[label].diverged()
    return {m: (statistics.fmean(v), len(v), diverged[m]) for m, v in per_method.items()}


def summary_table(tasks: dict[str, TaskResults]) -> str:
    """Mean LR-free rank, its task count and total divergences per LR-free method."""
    ranks = mean_ranks(tasks)
    if not ranks:
        return ""
    compared = compared_methods(tasks)
    n_tasks = sum(1 for t in tasks.values() if _lr_free_rows(t))
    lines = [f"Ranked among the {len(compared)} LR-free methods that ran on all {n_tasks} "
             "tasks (1 = best; a diverged run ranks last).", "",
             "| LR-free method | mean rank | tasks | diverged runs |", "|---|---|---|---|"]
    lines += [f"| {m} | {ranks[m][0]:.2f} | {ranks[m][1]} | {ranks[m][2]} |"
              for m in sorted(compared, key=lambda m: ranks[m][0])]
    others = sorted(set(ranks) - set(compared), key=lambda m: (-ranks[m][1], ranks[m][0], m))
    if others:
        lines += ["", f"Methods that ran on fewer tasks, each ranked among those "
                  f"{len(compared)} plus itself on the tasks it ran:", "",
                  "| LR-free method | mean rank | tasks | diverged runs |", "|---|---|---|---|"]
        lines += [f"| {m} | {ranks[m][0]:.2f} | {ranks[m][1]} of {n_tasks} | {ranks[m][2]} |"
                  for m in others]
    return "\n".join(lines)


def _header(records: list[dict[str, Any]]) -> list[str]:
    first = records[0]
    commands = sorted({r["command"] for r in records})
    versions, host = first["versions"], first["machine"]
    budgets = ", ".join(sorted({r["budget"] for r in records}))
    threads = ", ".join(str(t) for t in sorted({r["machine"]["torch_threads"] for r in records}))
    devices = ", ".join(sorted({r.get("device", "cpu") for r in records}))
    revs: dict[str, int] = defaultdict(int)
    for r in records:
        revs[r.get("git") or "unknown"] += 1
    dirty = sum(n for rev, n in revs.items() if rev.endswith("+dirty"))
    commits = ", ".join(f"{rev} ({n} runs)" for rev, n in sorted(revs.items()))
    lines = [(f"Budget: {budgets}; {len(records)} runs; torch {versions.get('torch')}, "
              f"lrfree {versions.get('lrfree')}; device: {devices}; machine: "
              f"{host['platform']}, {host['cpu_count']} CPUs, {threads} torch threads."), "",
             f"Commits (each table row names its own): {commits}."
             + (f" {dirty} runs came from a tree with uncommitted changes (+dirty)."
                if dirty else " Every run came from a clean commit."), "",
             "Commands: " + "; ".join(f"`{c}`" for c in commands), ""]
    return lines


def build_report(out: Path, plots: bool = True) -> Report:
    """Read every record under `out`, write `out/report.md` and `out/plots/*.png`.

    A hand-written `out/notes.md` (the findings) is included after the header. Without
    `plots` the figures are not redrawn; those already in `out/plots` stay linked.
    """
    out = Path(out)
    records = load_records(out)
    plot_paths: list[Path] = []
    if plots:
        from lrfree.bench.plots import plot_task

        plot_paths = [plot_task(task, out / "plots" / f"{_file_name(name)}.png")
                      for name, task in sorted(group(records).items())]
    markdown = render_report(out, records)
    path = out / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown)
    return Report(markdown, path, plot_paths)


def render_report(out: Path, records: list[dict[str, Any]] | None = None) -> str:
    """The report's Markdown for the records under `out` (read them when not given),
    linking the figures found in `out/plots`; writes nothing."""
    out = Path(out)
    records = load_records(out) if records is None else records
    tasks = group(records)
    header = ["# lrfree benchmark report", ""]
    if records:
        header += _header(records)
    # Findings are written by people, from the tables below; kept beside the data so the
    # regenerated report carries them.
    notes = out / "notes.md"
    if notes.exists():
        header += [notes.read_text().strip(), ""]
    summary = summary_table(tasks)
    if summary:
        header += ["## Mean rank among LR-free methods", "", summary, ""]
    compared = compared_methods(tasks)
    body = []
    for name, task in sorted(tasks.items()):
        body += [task_table(task, compared), ""]
        plot = out / "plots" / f"{_file_name(name)}.png"
        if plot.is_file():
            body += [f"![{name}](plots/{plot.name})", ""]
    return "\n".join(header + ["## Per task", ""] + body) if tasks else "No runs found.\n"


def _file_name(task: str) -> str:
    """A task name as a file name (a user task is named `module:function`)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in task)
