#!/usr/bin/env bash
# Ablations of the design choices the spec leaves open (alpha normalisation, AMSGrad,
# d_coef, PS-SPS's c) and PS-DoG on the convex task and VGG, quick budget, 2 seeds, written into the
# same results folder as the main run so the report shows them beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results/quick
for task in logreg vgg; do
    "$PY" -m lrfree.bench --budget quick --tasks "$task" --optimizers ablations,psdog \
        --seeds 0,1 --threads 1 --out "$OUT" --no-plots
done
# the warm-up variant where the gap to Adam is largest (ResNet-20 at the quick budget)
"$PY" -m lrfree.bench --budget quick --tasks resnet20 --seeds 0,1 --threads 1 --out "$OUT" \
    --no-plots --optimizers psdasgd-d0lr,psdasgd-running
# logreg's best Adam and SGD lrs lie above the neural-net grids: widen them there.
"$PY" -m lrfree.bench --budget quick --tasks logreg --seeds 0,1 --threads 1 --out "$OUT" \
    --no-plots --optimizers adam@3e-2,adam@1e-1,sgdm@3e-1,sgdm@1
