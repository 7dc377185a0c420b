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
# the start of the estimate (d0 in scaled units vs the default d0_lr) and the running
# normaliser where the gap to Adam is largest (ResNet-20 at the quick budget)
"$PY" -m lrfree.bench --budget quick --tasks resnet20 --seeds 0,1 --threads 1 --out "$OUT" \
    --no-plots --optimizers psdasgd-d0,psdasgd-running
# logreg's best Adam and SGD lrs lie above the neural-net grids: widen them there.
"$PY" -m lrfree.bench --budget quick --tasks logreg --seeds 0,1 --threads 1 --out "$OUT" \
    --no-plots --optimizers adam@3e-2,adam@1e-1,sgdm@3e-1,sgdm@1
# the start of the estimate on the other neural tasks
for task in vit simclr segmentation; do
    "$PY" -m lrfree.bench --budget quick --tasks "$task" --optimizers psdasgd-d0 \
        --seeds 0,1 --threads 1 --out "$OUT" --no-plots
done
