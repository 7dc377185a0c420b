#!/usr/bin/env bash
# (issue 17) PS-DA-SGD's estimate driving a schedule-free iteration in scaled space
# (benchmarks/schedule_free_prototype.py), every task of the suite, 3 seeds, never scheduled.
# One lane, one thread; resumable. A record names the commit of the tree lrfree is imported
# from: run from a clean checkout with PYTHONPATH=src and OUT outside the tracked tree, then
# copy the records into benchmarks/results/schedule_free_$BUDGET and rebuild the report there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BUDGET=${BUDGET:-quick}
OUT=${OUT:-benchmarks/results/schedule_free_$BUDGET}
VARIANTS=${VARIANTS:-psdasgd-sf}
TASKS=${TASKS:-segmentation logreg resnet20 vgg vit simclr sac-hopper minilm-wordnet effnet-fashion}
for task in $TASKS; do
    "$PY" benchmarks/schedule_free_prototype.py --budget "$BUDGET" --tasks "$task" \
        --optimizers "$VARIANTS" --seeds 0,1,2 --threads 1 --out "$OUT" --no-plots --no-progress
done
