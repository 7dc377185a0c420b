#!/usr/bin/env bash
# Full budget for the two expensive tasks (benchmarks/results/full/): MiniLM fine-tuning and
# SAC on Hopper, one seed (two for MiniLM's main rows and SAC's best Adam and PS-DA-SGD), one lane, one thread, resumable
# (finished runs are skipped).
# Ordered so that an interrupted lane still leaves best-Adam candidates and our defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results/full
run() { "$PY" -m lrfree.bench --budget full --tasks "$1" --optimizers "$2" \
            --seeds 1 --threads 1 --out "$OUT" --no-plots; }
run minilm-wordnet adam@1e-4,adam@3e-4,psdasgd,pssps,prodigy,sf-adamw,adam@1e-3
run sac-hopper adam@3e-4,psdasgd,adam@1e-3,prodigy,adam@1e-4,sf-adamw,pssps
# a second MiniLM seed for the main rows (what fitted the session)
"$PY" -m lrfree.bench --budget full --tasks minilm-wordnet \
    --optimizers adam@3e-4,psdasgd,prodigy,pssps,adam@1e-3 --seeds 0,1 --threads 1 \
    --out "$OUT" --no-plots
# and for SAC's best Adam and PS-DA-SGD
"$PY" -m lrfree.bench --budget full --tasks sac-hopper --optimizers adam@3e-4,psdasgd \
    --seeds 0,1 --threads 1 --out "$OUT" --no-plots
"$PY" -m lrfree.bench --report-only --budget full --out "$OUT"
