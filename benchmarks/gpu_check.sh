#!/usr/bin/env bash
# One prepared GPU check of the CUDA paths, at most about 6 minutes on an H200 (each section has its own time
# limit; the limits sum to 340 s). Writes three files under $OUT, kept up to date after every section:
#   gpu_check.log   everything printed;   summary.txt   the test result and every target line (met / MISSED);
#   results.tar.gz  the JSON results of the benchmarks.
#
#   1. the CUDA tests: Triton kernel vs the torch path, the direct launch binding on this Triton, noise drawn in the
#      kernel, one launch and no sync per step, graph capture (conditioned, guided, eta > 0), the policy example;
#   2. the step benchmark (1x4x64x64 and 8x16x32x128x128, fp32 and bf16; graphed eta 1 with kernel noise against
#      the eta-0 floor);
#   3. the launch alone and the whole small step (benchmarks/step_overhead.py: <= 20 us and >= 6x diffusers);
#   4. the policy latency (Diffusion-Policy-sized 1-D UNet; 10 steps graphed <= 1/4 of diffusers' eager);
#   5. the loop benchmark (DDPM-CIFAR10-size UNet and a tiny one; interleaved, paired shares).
#
# Needs diffusers on the GPU machine: run benchmarks/fetch_gpu_wheels.sh here first, then the device
# tool with   command="bash benchmarks/gpu_check.sh"   carry=[".whl"]   timeout_s=420.
# On a machine without CUDA it runs small CPU versions of every section (a smoke test of this script).
set -uo pipefail
OUT=${OUT:-./out}
mkdir -p "$OUT"
WORK=$(mktemp -d)
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.txt"
: > "$LOG"
: > "$SUMMARY"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ddim-site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/ddim-site"
fi
status=0
started=$(date +%s)

bundle() {  # the JSON results so far, as one file
    tar -czf "$OUT/results.tar.gz.tmp" -C "$WORK" . && mv "$OUT/results.tar.gz.tmp" "$OUT/results.tar.gz"
}

# section NAME LIMIT_SECONDS COMMAND...: run with a time limit, log everything, collect target lines.
section() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s, $(($(date +%s) - started))s elapsed)" | tee -a "$LOG"
    timeout "$limit" "$@" > "$WORK/section.log" 2>&1
    local rc=$?
    cat "$WORK/section.log" >> "$LOG"
    tail -25 "$WORK/section.log"
    grep -E "target|passed|failed|error|direct-launch bindings|skipped .*past" "$WORK/section.log" | sed "s/^/[$name] /" >> "$SUMMARY"
    if [ "$rc" -ne 0 ]; then
        status=1
        echo "[$name] exit status $rc$([ "$rc" -eq 124 ] && echo ' (time limit)')" | tee -a "$SUMMARY"
    fi
    bundle
}

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>/dev/null || echo "no nvidia-smi"
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
    $PY -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -1
    $PY -c "import diffusers; print('diffusers', diffusers.__version__)" 2>&1 | tail -1
} 2>&1 | tee -a "$LOG" "$SUMMARY"

TESTS=(tests/library/test_fused_update.py tests/library/test_graphs.py tests/library/test_logprob.py
       tests/library/test_gradients.py tests/library/test_precision.py tests/library/test_no_sync.py
       tests/library/test_update_helpers.py tests/library/test_direct_launch.py tests/library/test_kernel_noise.py
       tests/library/test_policy_example.py)
if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    DEVICE=cuda
    STEP_ARGS=(--device cuda --shapes 1x4x64x64 8x16x32x128x128 --dtypes fp32 bf16 --reps 5 --budget 0.02)
    OVERHEAD_ARGS=(--device cuda --reps 5)
    POLICY_ARGS=(--device cuda --batches 1 64 --steps 10 100 --reps 5 --budget 0.02 --max-seconds 50)
    LOOP_ARGS=(--device cuda --reps 3 --max-seconds 30)
    LOOP_LIMIT=40
else
    echo "no CUDA device: running the CPU smoke versions" | tee -a "$LOG"
    DEVICE=cpu
    STEP_ARGS=(--device cpu --shapes 1x4x64x64 --dtypes fp32 --reps 1 --budget 0.005)
    OVERHEAD_ARGS=(--device cpu --reps 1 --budget 0.005)
    POLICY_ARGS=(--device cpu --quick --etas 0 --reps 1 --budget 0.001)
    LOOP_ARGS=(--device cpu --smoke --reps 1 --threads 1)
    LOOP_LIMIT=120  # a busy shared CPU: importing diffusers and building the UNet alone can take half a minute
fi

section "1. CUDA tests" 130 $PY -m pytest -q -p no:cacheprovider "${TESTS[@]}" -rfE --tb=short \
    -k "cuda or graph or sync or host or direct_launch"
section "2. step benchmark ($DEVICE)" 60 $PY benchmarks/step_bench.py "${STEP_ARGS[@]}" --out "$WORK/step.json"
section "3. launch and small step ($DEVICE)" 30 $PY benchmarks/step_overhead.py "${OVERHEAD_ARGS[@]}" --out "$WORK/overhead.json"
section "4. policy latency ($DEVICE)" 80 $PY benchmarks/policy_latency.py "${POLICY_ARGS[@]}" --out "$WORK/policy.json"
section "5. loop benchmark ($DEVICE)" "$LOOP_LIMIT" $PY benchmarks/loop_bench.py "${LOOP_ARGS[@]}" --out "$WORK/loop.json"

echo "gpu_check finished with status $status after $(($(date +%s) - started))s; results in $OUT" | tee -a "$LOG" "$SUMMARY"
rm -rf "$WORK"
exit $status
