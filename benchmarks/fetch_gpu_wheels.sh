#!/usr/bin/env bash
# Download what benchmarks/gpu_check.sh needs on the GPU machine and it lacks: diffusers 0.42.1 (a pure
# Python wheel; torch, triton, numpy, huggingface-hub, safetensors, pillow and regex are already there).
# Run here, in the repository root, before the device call; .whl/ is git-ignored through .git/info/exclude.
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download --no-deps --only-binary=:all: -d .whl diffusers==0.42.1
ls -la .whl
