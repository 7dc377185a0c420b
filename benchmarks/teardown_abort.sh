#!/bin/bash
# The teardown abort of docs/distributed.md ("Teardown"): run examples/ddp_fsdp_cpu.py under
# torchrun (FSDP2, 2 ranks, gloo) N times, alternating the example as it was before the
# teardown change (git revision BEFORE, default 1bff662) and as it is now; prints one line per
# run ("i before|now rc=..."). An abort shows as rc=1 with "terminate called without an
# active exception" in the log (kept as teardown-<i>-<which>.log in OUT).
#   bash benchmarks/teardown_abort.sh [N=40] [BEFORE=1bff662] [OUT=/tmp/teardown]
set -u
cd "$(dirname "$0")/.."
N=${1:-40}; BEFORE=${2:-1bff662}; OUT=${3:-/tmp/teardown}
PY=${PYTHON:-python}
mkdir -p "$OUT"
git show "$BEFORE:examples/ddp_fsdp_cpu.py" > "$OUT/example_before.py"
for i in $(seq 1 "$N"); do
  for which in before now; do
    if [ "$which" = before ]; then ex="$OUT/example_before.py"; else ex=examples/ddp_fsdp_cpu.py; fi
    port=$((30000 + RANDOM % 20000))
    OMP_NUM_THREADS=1 PYTHONFAULTHANDLER=1 "$PY" -m torch.distributed.run --nproc_per_node 2 \
      --master_addr 127.0.0.1 --master_port "$port" "$ex" --mode fsdp --steps 10 \
      --save "$OUT/params.pt" > "$OUT/run.log" 2>&1
    rc=$?
    echo "$i $which rc=$rc"
    [ "$rc" != 0 ] && cp "$OUT/run.log" "$OUT/teardown-$i-$which.log"
  done
done
