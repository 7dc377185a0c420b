#!/usr/bin/env bash
# The GPU checks of issue 16 as one script, for one short session on a CUDA machine:
#   1. the CUDA tests (tests/test_cuda.py, tests/test_triton_step.py),
#   2. the fused Triton step against the foreach path, and its speed (gpu_kernel_check.py),
#   3. the step-speed benchmark against AdamW and the peers (step_speed.py --device cuda),
#   4. a short run of the benchmark suite on the GPU (python -m lrfree.bench --device cuda).
# Results go under $OUT (default benchmarks/results/gpu); what they said when they were run
# for the docs is committed there.
#
#     bash benchmarks/gpu_check.sh                       # everything, ~6 min on an H200
#     OUT=/tmp/gpu bash benchmarks/gpu_check.sh tests    # only the tests
#
# Needs torch with CUDA, triton, pytest and hypothesis; the peers (dadaptation, prodigyopt,
# schedulefree) from wheels in .whl/ when the machine has no network, Fashion-MNIST in
# $LRFREE_DATA_DIR for the bench part.
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}
PARTS=${*:-tests kernel speed bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
status=0
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
for part in $PARTS; do
    echo "=== $part ($(date -u +%T))"
    case $part in
    tests)
        tests=tests/test_cuda.py
        [ -f tests/test_triton_step.py ] && tests="$tests tests/test_triton_step.py"
        timeout 220 python3 -m pytest -q -rfEs -p no:cacheprovider $tests \
            --junitxml="$OUT/cuda_tests.xml" > "$OUT/cuda_tests.log" 2>&1 || status=1
        tail -40 "$OUT/cuda_tests.log" ;;
    kernel)
        [ -f benchmarks/gpu_kernel_check.py ] && \
            { timeout 150 python3 benchmarks/gpu_kernel_check.py "$OUT/kernel_check.json" || status=1; } ;;
    speed)
        timeout 200 python3 benchmarks/step_speed.py --device cuda --rounds 4,3,3 --steps 5 \
            --out "$OUT" > "$OUT/step_speed_cuda.log" 2>&1 || status=1
        tail -45 "$OUT/step_speed_cuda.log" ;;
    bench)
        export LRFREE_DATA_DIR=${LRFREE_DATA_DIR:-$PWD/.gpudata}
        rm -rf /tmp/gpu-bench
        timeout 100 python3 -m lrfree.bench --device cuda --out /tmp/gpu-bench \
            > /tmp/gpu-bench.log 2>&1 || status=1
        tail -30 /tmp/gpu-bench.log
        cp /tmp/gpu-bench.log /tmp/gpu-bench/ 2>/dev/null
        tar -czf "$OUT/bench_cuda.tar.gz" -C /tmp gpu-bench ;;
    esac
done
echo "=== done ($(date -u +%T)), status $status"
exit $status
