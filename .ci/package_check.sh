#!/usr/bin/env bash
# The release check, as a user or a packager meets the project: build the sdist and the wheel; install the
# wheel alone in a fresh virtual environment (torch pinned to the CPU build) and check that `import ddim`
# needs torch and numpy only, that the wheel holds every weight file, that `ddim --version` is the package
# version and that a 2-step `ddim sample` runs; run the fast library tests from the unpacked sdist; run the
# drop-in and pipeline tests on the oldest diffusers the `diffusers` extra admits (the same fresh environment,
# extended step by step: one torch install).
# Run with the project's test environment active (`python` has the `test` extra; BUILD_PYTHON, default
# `python`, is the one that runs `build`).
set -euo pipefail
cd "$(dirname "$0")/.."
unset PYTHONPATH  # every environment below imports the package it installed, never this checkout's src/
export PIP_NO_COMPILE=1  # no byte-compiling of torch's sources at install: minutes on a 2-core machine
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }

step "build the sdist and the wheel"
"${BUILD_PYTHON:-python}" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
if grep -i "deprecat" "$work/build.log"; then echo "python -m build printed a deprecation warning" >&2; exit 1; fi
wheel=$(ls "$work"/dist/*.whl)
sdist=$(ls "$work"/dist/*.tar.gz)
echo "$(basename "$wheel") $(basename "$sdist")"

step "the wheel holds every weight file"
python - "$wheel" src/ddim/app/digits/weights <<'PY'
import sys, zipfile
from pathlib import Path
wheel, folder = sys.argv[1], Path(sys.argv[2])
expected = {f"ddim/app/digits/weights/{p.name}" for p in folder.iterdir() if p.is_file()}
missing = sorted(expected - set(zipfile.ZipFile(wheel).namelist()))
if not expected or missing:
    sys.exit(f"the wheel misses weight files: {missing or 'none found in ' + str(folder)}")
print(f"{len(expected)} weight files in the wheel")
PY

step "a fresh environment with the wheel alone: import ddim needs torch and numpy only"
python -m venv "$work/user"
"$work/user/bin/pip" install -q torch==2.13.0 "$wheel"
(cd "$work" && "$work/user/bin/python" - <<'PY'
import sys
import ddim
import importlib.metadata as metadata
optional = ("diffusers", "transformers", "PIL", "tqdm", "safetensors", "matplotlib", "sklearn", "scipy", "ddim.app")
loaded = sorted(name for name in optional if name in sys.modules)
if loaded:
    sys.exit(f"import ddim loaded optional modules: {loaded}")
requires = [r.split(";")[0] for r in metadata.requires("ddim") or [] if "extra ==" not in r]
print(f"import ddim: ok from {ddim.__file__}; requires {requires}")
PY
)

step "the CLI from the wheel: ddim --version and a 2-step ddim sample"
"$work/user/bin/pip" install -q "$wheel[cli]"
version=$("$work/user/bin/python" -c "import importlib.metadata as m; print(m.version('ddim'))")
reported=$(cd "$work" && "$work/user/bin/ddim" --version)
if [ "$reported" != "ddim $version" ]; then echo "ddim --version says '$reported', the package is $version" >&2; exit 1; fi
echo "$reported"
(cd "$work" && "$work/user/bin/ddim" sample --steps 2 -n 4 --no-progress -o "$work/two_steps.png")
test -s "$work/two_steps.png"

step "the fast library tests from the unpacked sdist"
tar xzf "$sdist" -C "$work"
unpacked=$(ls -d "$work"/ddim-*/)
(cd "$unpacked" && PYTHONPATH="$unpacked/src" python -m pytest -q -n 2 -p no:cacheprovider -m "not slow" tests/library)

step "the drop-in and pipeline tests on the oldest diffusers of the range"
oldest=$(python - <<'PY'
import re, tomllib
extra = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["diffusers"]
print(re.search(r">=\s*([0-9.]+)", extra[0]).group(1))
PY
)
# transformers and huggingface_hub of that diffusers' time (the releases the range was measured with)
"$work/user/bin/pip" install -q "$wheel[diffusers]" "diffusers==$oldest" "transformers<5" "huggingface_hub<1" \
    pytest pytest-xdist hypothesis
(cd "$work" && "$work/user/bin/python" -c "import diffusers, ddim.diffusers; print('diffusers', diffusers.__version__)")
"$work/user/bin/python" -m pytest -q -n 2 -p no:cacheprovider --rootdir "$root" \
    tests/library/test_drop_in.py tests/library/test_config_conversions.py tests/library/test_diffusers_integration.py \
    tests/library/test_pipelines.py tests/library/test_parallel.py tests/library/test_inverse.py
step "package check done"
