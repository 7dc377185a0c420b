"""What a budget costs in machine time, read from the wall times of committed runs.

For every task of a results folder: the median wall time of one run, and the time one seed of
two optimizer lists would take on one core: the CLI's default list (ours, the Adam sweep,
Prodigy and schedule-free AdamW) and the whole field (`all`: ours, both sweeps, every peer).
A configuration that was not run on a task is costed at that task's median run. Wall times
come from one thread per run on a shared 2-core machine, so they are rough (±30%).

    python benchmarks/budget_cost.py benchmarks/results/full
"""
from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from lrfree.bench.optimizers import PRESETS, expand


def main(folder: Path) -> None:
    walls: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(folder.glob("*/*.cosine.seed*.json")):
        record = json.loads(path.read_text())
        walls[record["task"]][record["optimizer"]].append(record["wall_time_s"])
    lists = {"default": expand(PRESETS["default"]), "all": expand(PRESETS["all"])}
    print(f"{folder}: minutes of one core for one seed (median run time for missing rows)")
    print("| task | runs | median run (s) | default list | whole field |\n|---|---|---|---|---|")
    totals = dict.fromkeys(lists, 0.0)
    for task, per_optimizer in sorted(walls.items()):
        every = [t for times in per_optimizer.values() for t in times]
        median = statistics.median(every)
        cells = []
        for key, names in lists.items():
            seconds = sum(statistics.fmean(per_optimizer[n]) if n in per_optimizer else median
                          for n in names)
            totals[key] += seconds
            cells.append(f"{seconds / 60:.0f}")
        print(f"| {task} | {len(every)} | {median:.0f} | {' | '.join(cells)} |")
    print(f"| all tasks | | | {totals['default'] / 60:.0f} | {totals['all'] / 60:.0f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/full"))
