#!/usr/bin/env bash
# (issue 17) The quick budget to 3 seeds for the ranked field: every LR-free method and the
# Adam sweep that gives "best Adam" (PS-DA-SGD and its averaging already have 3). Seed 2 on
# the six 2-seed tasks, seeds 1 and 2 on SAC and MiniLM. One lane, one thread; resumable
# (finished runs are skipped). A record names the commit of the tree lrfree is imported
# from (+dirty if it has uncommitted changes): run from a clean checkout with its own
# install, and point OUT at a copy of benchmarks/results/quick outside the tracked tree so
# that the report the runner rewrites after each task does not dirty it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results/quick}
FIELD=pssps,sps,dadaptsgd,prodigy,sf-adamw,dadapt-adam,dog,momsps,adam-sweep
run() { "$PY" -m lrfree.bench --budget quick --tasks "$1" --optimizers "$FIELD" \
            --seeds 0,1,2 --threads 1 --out "$OUT" --no-plots --no-progress; }
for task in logreg vgg vit simclr resnet20 segmentation minilm-wordnet sac-hopper; do
    run "$task"
done
