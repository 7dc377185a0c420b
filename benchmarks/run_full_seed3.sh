#!/usr/bin/env bash
# (issue 17) The full budget's SAC and MiniLM rows to 3 seeds for the ranked field: every
# LR-free method and the Adam sweep that gives "best Adam" (PS-DA-SGD already has 3; the
# six other tasks have 3 for the whole field). MiniLM first (2 min a run), then SAC
# (3.5 min). One lane, one thread; resumable (finished runs are skipped). A record names
# the commit of the tree lrfree is imported from (+dirty if it has uncommitted changes):
# run from a clean checkout with its own install, and point OUT at a copy of
# benchmarks/results/full outside the tracked tree. --no-extend keeps the one-seed SGD
# sweep as it is; the Adam sweep's grid edge is checked afterwards: at 3 seeds SAC's best
# Adam moved to 1e-2, the edge, and `--tasks sac-hopper --optimizers adam-sweep --seeds
# 0,1,2` (with the rule on) added adam@3e-2.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results/full}
FIELD=prodigy,sf-adamw,pssps,adam-sweep,dadapt-adam,dog,momsps,sps,dadaptsgd
for task in minilm-wordnet sac-hopper; do
    "$PY" -m lrfree.bench --budget full --tasks "$task" --optimizers "$FIELD" \
        --seeds 0,1,2 --threads 1 --out "$OUT" --no-plots --no-progress --no-extend
done
