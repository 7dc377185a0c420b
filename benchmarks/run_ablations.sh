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
# (stop 11) what collapses quick segmentation: Adam at PS-DA-SGD's estimated lr, and d_coef
"$PY" -m lrfree.bench --budget quick --tasks segmentation --optimizers adam@3e-2,psdasgd-dcoef0.5 \
    --seeds 0,1 --threads 1 --out "$OUT" --no-plots
# the no-schedule ablation (rows "(no sched)": shown, not ranked)
"$PY" -m lrfree.bench --budget quick --tasks vgg,logreg,segmentation --schedule none \
    --optimizers psdasgd,pssps,adam@1e-3,adam@3e-3,adam@1e-2,prodigy,dadapt-adam \
    --seeds 0,1 --threads 1 --out "$OUT" --no-plots
# the SGD+momentum sweep and the base methods on every vision task; 3e-1 where 1e-1 won
for task in vgg resnet20 segmentation simclr vit; do
    "$PY" -m lrfree.bench --budget quick --tasks "$task" --optimizers sgd-sweep,sps,dadaptsgd \
        --seeds 0,1 --threads 1 --out "$OUT" --no-plots
done
for task in resnet20 segmentation; do
    "$PY" -m lrfree.bench --budget quick --tasks "$task" --optimizers sgdm@3e-1 \
        --seeds 0,1 --threads 1 --out "$OUT" --no-plots
done
# SAC and MiniLM (one seed): the rest of the Adam and SGD sweeps, the base methods, the peers
for task in minilm-wordnet sac-hopper; do
    "$PY" -m lrfree.bench --budget quick --tasks "$task" --seeds 1 --threads 1 --out "$OUT" \
        --no-plots --optimizers adam@1e-4,dadapt-adam,adam@3e-3,dog,momsps,sgd-sweep,sps,dadaptsgd,adam@1e-2
done
# PS-SPS's cap growth (1.02 default) on short runs
"$PY" -m lrfree.bench --budget quick --tasks minilm-wordnet --optimizers pssps-cap1.1 --seeds 1 \
    --threads 1 --out "$OUT" --no-plots
for task in vgg resnet20 vit segmentation simclr; do
    "$PY" -m lrfree.bench --budget quick --tasks "$task" --optimizers pssps-cap1.1 \
        --seeds 0,1 --threads 1 --out "$OUT" --no-plots
done
