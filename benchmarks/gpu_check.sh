#!/usr/bin/env bash
# One prepared GPU check of the CUDA paths (about 4 minutes on an H100; 3.5 with GPU_CHECK_QUICK=1, which runs the
# step benchmark at 1x4x64x64 and the memory-bound size in fp32 only). Writes everything under $OUT.
#
#   1. the CUDA tests: Triton kernel vs the torch path, one launch and no sync per step, graph capture
#      (eta = 0 and eta > 0 with a generator), the eager loop under set_sync_debug_mode("error");
#   2. the step benchmark on CUDA (ours vs diffusers, floor from the measured copy bandwidth, and our
#      step replayed 50 times from one CUDA graph);
#   3. the loop benchmark on CUDA (DDPM-CIFAR10-size UNet, batch 64, fp16; tiny UNet), with the graphed loop;
#   4. the host-overhead breakdown of a small step (benchmarks/step_overhead.py).
#
# Needs diffusers on the GPU machine: run benchmarks/fetch_gpu_wheels.sh here first, then the device
# tool with   command="bash benchmarks/gpu_check.sh"   carry=[".whl"]   timeout_s=420.
# On a machine without CUDA it runs the CPU parts only (a smoke test of this script).
set -uo pipefail
OUT=${OUT:-./out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ddim-site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/ddim-site"
fi
status=0
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>/dev/null || echo "no nvidia-smi"
    $PY -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
    $PY -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -1
    $PY -c "import diffusers; print('diffusers', diffusers.__version__)" 2>&1 | tail -1
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"
if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    DEVICE=cuda
    STEP_ARGS=(--device cuda --reps 5 --budget 0.02)
    # GPU_CHECK_QUICK=1: the step benchmark at 1x4x64x64 and the memory-bound size in fp32 only (a re-check).
    [ "${GPU_CHECK_QUICK:-0}" = 1 ] && STEP_ARGS+=(--quick)
    LOOP_ARGS=(--device cuda --reps 3)
else
    echo "no CUDA device: running the CPU smoke versions"
    DEVICE=cpu
    STEP_ARGS=(--device cpu --quick --reps 3 --budget 0.01)
    LOOP_ARGS=(--device cpu --smoke --reps 1)
fi

echo "== 1. CUDA tests"
timeout 150 $PY -m pytest -q -p no:cacheprovider tests/library/test_fused_update.py tests/library/test_graphs.py tests/library/test_logprob.py tests/library/test_gradients.py tests/library/test_precision.py \
    tests/library/test_no_sync.py tests/library/test_update_helpers.py -rfE --tb=short -k "cuda or graph or sync or host" 2>&1 | tee "$OUT/tests.log" | tail -40
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== 2. step benchmark ($DEVICE)"
timeout 150 $PY benchmarks/step_bench.py "${STEP_ARGS[@]}" --out "$OUT/step.json" 2>&1 | tee "$OUT/step.log" | tail -130
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== 3. loop benchmark ($DEVICE)"
timeout 120 $PY benchmarks/loop_bench.py "${LOOP_ARGS[@]}" --out "$OUT/loop.json" 2>&1 | tee "$OUT/loop.log" | tail -14
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== 4. where a small step's time goes ($DEVICE)"
timeout 60 $PY benchmarks/step_overhead.py --device "$DEVICE" --reps 5 --out "$OUT/overhead.json" 2>&1 | tee "$OUT/overhead.log" | sed -n 1,6p
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "gpu_check finished with status $status; results in $OUT"
exit $status
