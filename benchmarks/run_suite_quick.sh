#!/usr/bin/env bash
# The committed benchmark run (benchmarks/results/quick/): the quick budget, 2 seeds.
# logreg: every configuration (ours, Adam and SGD sweeps, peers). Vision tasks: ours, the
# Adam sweep, Adam with the same iterate averaging as ours, and every LR-free peer.
# Two lanes of tasks run side by side, one thread each; each lane runs its tasks one after
# the other so that what finishes is whole; resumable (finished runs are skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results/quick
VISION=psdasgd,psdasgd-avg,pssps,adam-sweep,adam-avg@1e-3,peers
run() { "$PY" -m lrfree.bench --budget quick --tasks "$1" --optimizers "$2" \
            --seeds 0,1 --threads 1 --out "$OUT" --no-plots; }
run logreg all
( run vgg "$VISION"; run vit "$VISION"; run simclr "$VISION" ) &
( run resnet20 "$VISION"; run segmentation "$VISION" ) &
wait
"$PY" -m lrfree.bench --report-only --budget quick --out "$OUT"
