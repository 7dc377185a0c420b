#!/usr/bin/env bash
# (issue 17) Rerun the ranked PS-DA-SGD rows of the standing reports after a change of
# default (growth_rate = 1.5, docs/algorithms.md §4g): `psdasgd` on every task and
# `psdasgd-avg` where the report has it, 3 seeds, one clean commit. The previous rows were
# moved, unchanged, to benchmarks/results/{quick,full}_growth_inf.
#   BUDGET=quick|full   OUT: the main report's folder   OUT_EFFNET: EfficientNet's folder
# Run from a clean checkout with PYTHONPATH=src, OUT and OUT_EFFNET copies outside the tracked
# tree (the runner rewrites their report.md), then copy the records back.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BUDGET=${BUDGET:-quick}
OUT=${OUT:-benchmarks/results/$BUDGET}
OUT_EFFNET=${OUT_EFFNET:-benchmarks/results/effnet_$BUDGET}
run() { "$PY" -m lrfree.bench --budget "$BUDGET" --tasks "$1" --optimizers "$2" \
            --seeds 0,1,2 --threads 1 --out "$3" --no-plots --no-progress; }
if [ "$BUDGET" = quick ]; then
    for task in segmentation resnet20 logreg vgg vit simclr minilm-wordnet sac-hopper; do
        run "$task" psdasgd,psdasgd-avg "$OUT"
    done
else
    run logreg psdasgd,psdasgd-avg "$OUT"
    for task in segmentation resnet20 vit vgg simclr minilm-wordnet sac-hopper; do
        run "$task" psdasgd "$OUT"
    done
fi
run effnet-fashion psdasgd "$OUT_EFFNET"
