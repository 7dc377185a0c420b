#!/usr/bin/env bash
# (issue 17, docs/algorithms.md §4g) SAC at the quick budget is the one task whose mean fell
# with growth_rate = 1.5 (3 seeds); seeds 3 and 4 of the default and of the unbounded rule
# (psdasgd-growthinf), so that the comparison has 5 seeds each. One lane, one thread.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results/sac_quick_seeds}
"$PY" -m lrfree.bench --budget quick --tasks sac-hopper --optimizers psdasgd,psdasgd-growthinf \
    --seeds 0,1,2,3,4 --threads 1 --out "$OUT" --no-plots --no-progress
