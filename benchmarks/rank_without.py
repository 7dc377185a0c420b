"""Mean LR-free rank of a results folder with some methods left out of the field.

The report ranks every LR-free method that ran on all tasks. A variant of one method (e.g.
`psdasgd-avg`, PS-DA-SGD with averaging) then takes places from the others, so the field
without it is the fairer comparison of the product against the peers. Same ranking as the
report (lrfree.bench.report.mean_ranks), only the field differs; the docs quote it as the
figure key `BUDGET:rank-without@METHOD:RANKED` (benchmarks/docs_figures.py).

    python benchmarks/rank_without.py quick psdasgd-avg
    python benchmarks/rank_without.py full psdasgd-avg
"""
from __future__ import annotations

import sys
from pathlib import Path

from lrfree.bench.report import mean_ranks
from lrfree.bench.results import group, load_records

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: rank_without.py FOLDER [METHOD ...]  (FOLDER under benchmarks/results)")
    folder, left_out = argv[0], frozenset(argv[1:])
    ranks = mean_ranks(group(load_records(RESULTS / folder)), left_out)
    print(f"{folder}: mean LR-free rank without {sorted(left_out) or 'nothing'}")
    for method, (rank, ntasks, diverged) in sorted(ranks.items(), key=lambda kv: kv[1][0]):
        print(f"  {method:14s} {rank:.2f}  ({ntasks} tasks, {diverged} diverged runs)")


if __name__ == "__main__":
    main(sys.argv[1:])
