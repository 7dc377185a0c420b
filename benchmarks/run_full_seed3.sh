#!/usr/bin/env bash
# (issue 17) The full budget's SAC and MiniLM rows to 3 seeds for the ranked field: every
# LR-free method and the Adam sweep that gives "best Adam" (PS-DA-SGD already has 3; the
# six other tasks have 3 for the whole field). MiniLM first (2 min a run), then SAC
# (3.5 min). One lane, one thread; resumable (finished runs are skipped). OUT may point at a
# copy of benchmarks/results/full outside the tracked tree, so that the report the runner
# rewrites does not mark later runs +dirty. --no-extend: both tasks' best Adam lr (3e-4) is inside
# the grid, and the SGD sweep (one seed) is not part of the comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results/full}
FIELD=prodigy,sf-adamw,pssps,adam-sweep,dadapt-adam,dog,momsps,sps,dadaptsgd
for task in minilm-wordnet sac-hopper; do
    "$PY" -m lrfree.bench --budget full --tasks "$task" --optimizers "$FIELD" \
        --seeds 0,1,2 --threads 1 --out "$OUT" --no-plots --no-progress --no-extend
done
