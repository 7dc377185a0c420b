"""Every benchmark figure quoted in the README and the docs, computed from the committed
results: rewrite them (default) or check them (`--check`, exit 1 on a difference).

    python benchmarks/docs_figures.py            # after the results or the report change
    python benchmarks/docs_figures.py --check    # what tests/bench/test_docs_figures.py runs

A figure in prose is marked where it stands, invisibly in rendered Markdown:

    Prodigy <!--fig:quick:rank:prodigy-->3.06<!--/fig-->

Keys (BUDGET is a folder of benchmarks/results, quick or full; `quick+quick_growth_inf` is
quick with the rows of quick_growth_inf in place of its rows of the same task and name;
`full|full_seeds34` is the records of both folders together, e.g. more seeds of its runs):
  BUDGET:rank:METHOD            mean LR-free rank (report's summary table), 2 decimals
  BUDGET:rank-without@A+B:METHOD  the same rank with methods A and B left out of the field
                                (benchmarks/rank_without.py)
  BUDGET:tasks:METHOD           the number of tasks that rank is over
  BUDGET:ratio:TASK:METHOD      mean / mean of the best Adam on TASK, 2 decimals
  BUDGET:mean:TASK:METHOD       the mean final metric of METHOD on TASK, 3 significant digits
  BUDGET:ratio@REF:TASK:METHOD  as ratio, against the best Adam of the results folder REF
                                (an ablation folder that has no Adam rows of its own)
  BUDGET:compared               how many LR-free methods ran on every task
  BUDGET:ntasks                 how many tasks have LR-free runs
  gpu:ratio:SIZE:LABEL          GPU step time / AdamW (fused)'s (step_speed_cuda.json)
  gpu:ms:SIZE:LABEL             GPU median step time in ms
The standing tables of the optimizer pages (header `task | optimizer | ...`) are copied
cell for cell from the per-task tables of the quick report.
"""
from __future__ import annotations

import argparse
import functools
import math
import re
import sys
from pathlib import Path

from lrfree.bench.report import compared_methods, mean_ranks
from lrfree.bench.results import TaskResults, group, load_records

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGES = [ROOT / "README.md",
         *sorted(p for p in (ROOT / "docs").rglob("*.md") if "assets" not in p.parts),
         *sorted(RESULTS.glob("*/notes.md"))]
MARK = re.compile(r"<!--fig:([^>]+?)-->(.*?)<!--/fig-->")
STANDING_REPORT = RESULTS / "quick" / "report.md"


@functools.lru_cache(maxsize=None)
def _tasks(budget: str) -> dict[str, TaskResults]:
    """The records of `budget`; `A+B` is folder A with B's rows in place of A's rows of the
    same task and name (e.g. a report as it stood before a change of default)."""
    first, *overrides = budget.split("+")
    # `A|B`: the records of both folders together (more seeds of the same runs)
    records = [r for folder in first.split("|") for r in load_records(RESULTS / folder)]
    for folder in overrides:
        tasks = {r["task"] for r in records}
        extra = [r for r in load_records(RESULTS / folder) if r["task"] in tasks]
        replaced = {(r["task"], r["optimizer"], r["schedule"]) for r in extra}
        records = [r for r in records
                   if (r["task"], r["optimizer"], r["schedule"]) not in replaced] + extra
    return group(records)


def value(key: str) -> str:
    """The figure `key` names, formatted as the pages print it."""
    budget, kind, *rest = key.split(":")
    if budget == "gpu":
        return _gpu_value(kind, rest)
    tasks = _tasks(budget)
    if kind == "rank":
        return f"{mean_ranks(tasks)[rest[0]][0]:.2f}"
    if kind.startswith("rank-without@"):
        left_out = frozenset(kind.partition("@")[2].split("+"))
        return f"{mean_ranks(tasks, left_out)[rest[0]][0]:.2f}"
    if kind == "tasks":
        return str(mean_ranks(tasks)[rest[0]][1])
    if kind == "compared":
        return str(len(compared_methods(tasks)))
    if kind == "ntasks":
        return str(sum(1 for t in tasks.values()
                       if any(r.family in ("ours", "peer") for r in t.rows.values())))
    if kind == "mean":
        return f"{tasks[rest[0]].rows[rest[1]].mean():.3g}"
    if kind == "ratio" or kind.startswith("ratio@"):
        task = tasks[rest[0]]
        reference = _tasks(kind.partition("@")[2])[rest[0]] if "@" in kind else task
        best = reference.best_of("adam")
        ratio = task.rows[rest[1]].mean() / best.mean() if best is not None else math.nan
        return f"{ratio:.2f}"
    raise KeyError(f"unknown figure kind {kind!r} in {key!r}")


def _gpu_value(kind: str, rest: list[str]) -> str:
    """gpu:ratio:SIZE:LABEL (median step time / AdamW fused's, 2 decimals) and
    gpu:ms:SIZE:LABEL (median step in ms, 1 decimal), from the committed GPU step-speed run
    (benchmarks/results/gpu/step_speed_cuda.json; LABEL with '_' for spaces)."""
    import json
    saved = json.loads((RESULTS / "gpu" / "step_speed_cuda.json").read_text())
    row = saved["sizes"][rest[0]]["optimizers"][rest[1].replace("_", " ")]
    if kind == "ratio":
        return f"{row['ratio_to_AdamW (fused)']['median']:.2f}"
    if kind == "ms":
        return f"{row['median_ms']:.1f}"
    raise KeyError(f"unknown gpu figure kind {kind!r}")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _report_rows(report: Path) -> dict[tuple[str, str], dict[str, str]]:
    """(task, optimizer) -> {column: cell} from the report's per-task tables."""
    rows, task, header = {}, "", None
    for line in report.read_text(encoding="utf-8").splitlines():
        if line.startswith("### "):
            task, header = line[4:].split(" — ")[0], None
        elif line.startswith("| optimizer |"):
            header = _cells(line)
        elif header and line.startswith("| ") and not line.startswith("|---"):
            cells = _cells(line)
            rows[(task, cells[0])] = dict(zip(header, cells))
    return rows


def _standing_tables(text: str, report: dict[tuple[str, str], dict[str, str]]) -> str:
    """`text` with each `| task | optimizer | ... |` table's cells taken from the report."""
    lines, header = text.splitlines(keepends=True), None
    for i, line in enumerate(lines):
        if line.startswith("| task | optimizer |"):
            header = _cells(line)
            continue
        if header is None or not line.startswith("|"):
            header = None
            continue
        if line.startswith("|---"):
            continue
        cells = _cells(line)
        key = (cells[0].strip("`"), cells[1].strip("`"))
        source = report[key]
        new = cells[:2] + [source[column] for column in header[2:]]
        lines[i] = "| " + " | ".join(new) + " |" + ("\n" if line.endswith("\n") else "")
    return "".join(lines)


def sync(write: bool, pages: list[Path] | None = None) -> list[str]:
    """Rewrite (or only compare) every marked figure and standing table of `pages`
    (default: the README, the docs, the reports' notes); the differences."""
    report = _report_rows(STANDING_REPORT)
    differences = []
    for page in PAGES if pages is None else pages:
        text = page.read_text(encoding="utf-8")
        differences += [f"{_shown(page)}: {key} is {shown}, the results say "
                        f"{value(key)}" for key, shown in MARK.findall(text)
                        if shown != value(key)]
        new = MARK.sub(lambda m: f"<!--fig:{m.group(1)}-->{value(m.group(1))}<!--/fig-->", text)
        if page.parent.name == "optimizers":
            tabled = _standing_tables(new, report)
            if tabled != new:
                differences.append(f"{_shown(page)}: the standing table differs "
                                   f"from {STANDING_REPORT.relative_to(ROOT)}")
            new = tabled
        if write and new != text:
            page.write_text(new, encoding="utf-8")
    return differences


def _shown(page: Path) -> str:
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else str(page)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    args = parser.parse_args()
    differences = sync(write=not args.check)
    for line in differences:
        print(line)
    return 1 if differences and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
