"""Mean LR-free rank of a results folder with some methods left out of the field.

The report ranks every LR-free method that ran on all tasks. A variant of one method (e.g.
`psdasgd-avg`, PS-DA-SGD with averaging) then takes places from the others, so the field
without it is the fairer comparison of the product against the peers. Same ranking code
as the report (lrfree.bench.report.lr_free_ranks), only the field differs.

    python benchmarks/rank_without.py quick psdasgd-avg
    python benchmarks/rank_without.py full psdasgd-avg
"""
from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from pathlib import Path

from lrfree.bench.report import compared_methods, lr_free_ranks
from lrfree.bench.results import group, load_records

RESULTS = Path(__file__).parent / "results"


def ranks_without(folder: str, left_out: set[str]) -> dict[str, float]:
    tasks = group(load_records(RESULTS / folder))
    field = [m for m in compared_methods(tasks) if m not in left_out]
    per_method: dict[str, list[float]] = defaultdict(list)
    for task in tasks.values():
        for label, rank in lr_free_ranks(task, field).items():
            if label in field:
                per_method[label].append(rank)
    return {m: statistics.fmean(v) for m, v in per_method.items()}


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: rank_without.py FOLDER [METHOD ...]  (FOLDER under benchmarks/results)")
    folder, left_out = argv[0], set(argv[1:])
    ranks = ranks_without(folder, left_out)
    print(f"{folder}: mean LR-free rank without {sorted(left_out) or 'nothing'}")
    for method, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        print(f"  {method:14s} {rank:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
