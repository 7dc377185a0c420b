#!/usr/bin/env bash
# (issue 17, docs/algorithms.md §4g) PS-DA-SGD with d growing at most x1.5 per step,
# every task of the suite at the full budget, 3 seeds. One lane, one thread; resumable.
# A record names the commit of the tree lrfree is imported from: run from a clean checkout
# with PYTHONPATH=src (or its own install) and OUT outside the tracked tree, then copy the
# records into benchmarks/results/growth_full and rebuild the report there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results/growth_full}
VARIANTS=${VARIANTS:-psdasgd-growth1.5}
for task in segmentation resnet20 vit vgg simclr logreg minilm-wordnet effnet-fashion sac-hopper; do
    "$PY" -m lrfree.bench --budget full --tasks "$task" --optimizers "$VARIANTS" \
        --seeds 0,1,2 --threads 1 --out "$OUT" --no-plots --no-progress
done
