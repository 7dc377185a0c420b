#!/usr/bin/env bash
# The committed full-budget run (benchmarks/results/full/): 2 seeds, one lane, one thread,
# resumable (finished runs are skipped). What was run in the time available: VGG with the
# 4-lr Adam sweep and every main peer; ResNet-20, ViT, SimCLR and segmentation with the Adam
# lrs around the quick-budget optimum (1e-3, 3e-3, 1e-2; segmentation 1e-3..3e-2), Prodigy
# and schedule-free AdamW; logreg with every configuration. SAC and MiniLM have not been run
# at the full budget.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results/full
run() { "$PY" -m lrfree.bench --budget full --tasks "$1" --optimizers "$2" \
            --seeds 0,1 --threads 1 --out "$OUT" --no-plots; }
run vgg pssps,adam@3e-4,adam@1e-3,adam@3e-3,adam@1e-2,prodigy,sf-adamw,dadapt-adam,psdasgd
run resnet20 psdasgd,pssps,adam@3e-3,prodigy,sf-adamw,adam@1e-3,adam@1e-2
run vit psdasgd,pssps,adam@3e-3,prodigy,sf-adamw,adam@1e-3,adam@1e-2
run logreg ours,adam-sweep,adam@3e-2,adam@1e-1,peers,sgd-sweep,sgdm@3e-1,sgdm@1
run simclr psdasgd,pssps,adam@3e-3,prodigy,sf-adamw,adam@1e-3,adam@1e-2
run segmentation psdasgd,pssps,adam@1e-2,prodigy,sf-adamw,adam@3e-3,adam@3e-2,adam@1e-3
# (stop 11) PS-DA-SGD started at the best Adam lr: what the warm-up costs
run resnet20,vit,vgg,simclr psdasgd-start3e-3
"$PY" -m lrfree.bench --report-only --budget full --out "$OUT"
