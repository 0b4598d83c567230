"""Plant small bugs in the library one at a time and report which ones the test suite catches.

Not part of the test run (pytest collects only ``test_*.py``); run it by hand::

    python tests/mutation_check.py                # every mutation, after a baseline run of each test selection
    python tests/mutation_check.py --list         # the mutations
    python tests/mutation_check.py --only edict-mixing --no-baseline

``src/``, ``tests/`` and ``pyproject.toml`` are copied to a temporary folder (the working tree is never
modified); each mutation replaces exact snippets of one file there, runs the test files mapped to it
(``pytest -x -q -n 0``, with a timeout, the copy's ``src`` first on ``PYTHONPATH``) and restores the file.
A snippet that is not found exactly once makes the mutation "not applicable" (the code moved: update the
snippet). The catch rate is caught / (caught + missed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600

#: The step against diffusers over the config space, and against the paper-form step (hypothesis).
REFERENCE = ("tests/library/test_differential.py", "tests/library/test_properties.py", "-k", "diffusers or paper")
LOGPROB = ("tests/library/test_logprob.py", "tests/library/test_logprob_drawn_gradient.py")
EXACT = ("tests/library/test_edict_update.py", "tests/library/test_exact_inversion.py", "-m", "not slow")
SHARD_FAULTS = ("tests/app/test_shard_faults.py",)


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository root
    edits: tuple[tuple[str, str], ...]  # (exact old snippet, new snippet), applied in order
    tests: tuple[str, ...]  # pytest arguments: the tests that should catch it
    description: str


MUTATIONS = [
    Mutation(
        "update-eps-sign",
        "src/ddim/coefficients.py",
        (("sqrt_alpha_bar_prev * x0_m + direction * eps_m)", "sqrt_alpha_bar_prev * x0_m - direction * eps_m)"),),
        REFERENCE,
        "eq. 12's direction term subtracted from the model output's share",
    ),
    Mutation(
        "sigma-factor",
        "src/ddim/coefficients.py",
        (
            (
                "    return (1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)",
                "    return (1 - alpha_bar_prev) / (1 - alpha_bar_t)",
            ),
        ),
        REFERENCE,
        "sigma^2 without eq. 16's factor (1 - abar_t / abar_prev)",
    ),
    Mutation(
        "sigma-eta-squared",
        "src/ddim/coefficients.py",
        (
            (
                "sigma_t = eta * ddim_variance(alpha_bar_t, alpha_bar_prev).sqrt()",
                "sigma_t = eta**2 * ddim_variance(alpha_bar_t, alpha_bar_prev).sqrt()",
            ),
        ),
        REFERENCE,
        "sigma scaled by eta^2 instead of eta",
    ),
    Mutation(
        "direction-radicand",
        "src/ddim/coefficients.py",
        (("radicand = 1 - alpha_bar_prev - sigma_t**2", "radicand = 1 - alpha_bar_prev - sigma_t"),),
        REFERENCE,
        "the direction's radicand subtracts sigma, not sigma^2",
    ),
    Mutation(
        "clipping-skipped",
        "src/ddim/update.py",
        (
            (
                "    elif clip is not None:\n        x0.clamp_(-clip, clip)",
                "    elif False:\n        x0.clamp_(-clip, clip)",
            ),
        ),
        REFERENCE,
        "clip_sample ignored for epsilon and v predictions",
    ),
    Mutation(
        "thresholding-signed-quantile",
        "src/ddim/thresholding.py",
        (("row_quantile(work.abs(), ratio)", "row_quantile(work, ratio)"),),
        REFERENCE,
        "dynamic thresholding's quantile of x0 instead of |x0|",
    ),
    Mutation(
        "v-prediction-sign",
        "src/ddim/prediction.py",
        (("    return (sa, -sb, sb, sa)\n", "    return (sa, -sb, -sb, sa)\n"),),
        REFERENCE,
        "v prediction's eps = sqrt(1 - a) x + sqrt(a) v with the x term's sign flipped",
    ),
    Mutation(
        "diffusers-landing",
        "src/ddim/plan.py",
        (
            (
                "np.arange(num_train_timesteps, dtype=np.int64) - num_train_timesteps // len(grid)\n",
                "np.arange(num_train_timesteps, dtype=np.int64) - num_train_timesteps // len(grid) - 1\n",
            ),
        ),
        REFERENCE,
        "diffusers' previous timestep t - T // N off by one",
    ),
    Mutation(
        "grid-landing",
        "src/ddim/timesteps.py",
        (
            (
                'np.arange(num_train_timesteps, dtype=np.int64), side="left")',
                'np.arange(num_train_timesteps, dtype=np.int64), side="right")',
            ),
        ),
        ("tests/library/test_grids.py",),
        "prev_timestep_from_grid lands on the grid point itself",
    ),
    Mutation(
        "ddpo-landing",
        "src/ddim/plan.py",
        (("clamped = self.landing.timesteps.clamp(0, ", "clamped = self.landing.timesteps.clamp(-1, "),),
        LOGPROB,
        "DDPO's last step lands on the final alpha instead of alphas_cumprod[0]",
    ),
    Mutation(
        "logprob-detach",
        "src/ddim/logprob.py",
        (("    data = prev_sample.detach()\n", "    data = prev_sample\n"),),
        LOGPROB,
        "the drawn x_prev not detached: the log-prob gradient of a drawn sample is 0",
    ),
    Mutation(
        "edict-mixing",
        "src/ddim/exact_inversion.py",
        (
            (
                "    return x_new, p * y_inter + (1 - p) * x_new\n",
                "    return x_new, p * y_inter + (1 - p) * x_inter\n",
            ),
            ("    y_inter = (y - (1 - p) * x) / p\n", "    y_inter = (p * y - (1 - p) * x) / (2 * p - 1)\n"),
            ("    x_inter = (x - (1 - p) * y_inter) / p\n", "    x_inter = (p * x - (1 - p) * y) / (2 * p - 1)\n"),
        ),
        EXACT,
        "EDICT's second mixing layer mixes x^i instead of x' (its inverse changed to match)",
    ),
    Mutation(
        "edict-coupling",
        "src/ddim/exact_inversion.py",
        (
            (
                "    x_inter = move.a * x + move.noise(denoiser(y, step))\n",
                "    x_inter = move.a * x + move.noise(denoiser(x, step))\n",
            ),
        ),
        EXACT,
        "EDICT's x update reads eps at x instead of y (no longer invertible)",
    ),
    Mutation(
        "bdia-backward",
        "src/ddim/exact_inversion.py",
        (
            (
                "        forward.b - gamma * backward.b,\n",
                "        forward.b + gamma * backward.b,\n",
            ),
        ),
        EXACT,
        "BDIA's backward increment with the wrong sign of its eps term (sampling and inversion alike)",
    ),
    Mutation(
        "shard-shape-check",
        "src/ddim/app/shards/files.py",
        (
            (
                'if samples is None or samples.shape != (span[1] - span[0], *config["sample_shape"]):',
                "if samples is None:",
            ),
        ),
        SHARD_FAULTS,
        "a shard's sample shape is not checked",
    ),
    Mutation(
        "stray-first-index",
        "src/ddim/app/shards/files.py",
        (("            and parsed[0] < count\n", "            and parsed[0] <= count\n"),),
        SHARD_FAULTS,
        "the first shard index past the layout counts as part of it",
    ),
    Mutation(
        "shard-seed-rule",
        "src/ddim/app/seeding.py",
        (("np.random.SeedSequence([int(seed), int(i)])", "np.random.SeedSequence([int(i), int(seed)])"),),
        ("tests/app/test_shards.py", "-k", "seed"),
        "the per-sample seed rule with seed and index swapped",
    ),
    Mutation(
        "fid-naive-product",
        "src/ddim/app/digits/fid.py",
        (("    middle = root_a @ b.covariance @ root_a\n", "    middle = a.covariance @ b.covariance\n"),),
        ("tests/app/test_fid.py", "-k", "frechet"),
        "FID's cross term from the symmetrised product S_a S_b instead of S_a^1/2 S_b S_a^1/2",
    ),
    Mutation(
        "reload-drops-spacing",
        "src/ddim/config.py",
        (("            elif key in source:\n", '            elif key in source and key != "timestep_spacing":\n'),),
        ("tests/library/test_reload_values.py",),
        "from_config / from_pretrained ignore the file's timestep_spacing",
    ),
    Mutation(
        "cli-writable-check",
        "src/ddim/app/cli/outputs.py",
        (("    if not os.access(folder, os.W_OK | os.X_OK):\n", "    if False:\n"),),
        ("tests/app/test_cli_outputs.py", "-k", "read_only"),
        "the CLI's early check of a read-only output folder dropped (the work runs, then the write fails)",
    ),
    Mutation(
        "shard-dir-error",
        "src/ddim/app/shards/manifest.py",
        (
            (
                '    except OSError as error:\n        raise ShardError(f"{str(out_dir)!r} cannot be written',
                '    except FileNotFoundError as error:\n        raise ShardError(f"{str(out_dir)!r} cannot be written',
            ),
        ),
        ("tests/app/test_shards.py", "tests/app/test_shard_write_errors.py", "-k", "read_only or unwritable or below"),
        "an unwritable output folder raises a traceback instead of a one-line error",
    ),
    Mutation(
        "inverse-direction",
        "src/ddim/inverse_scheduler.py",
        (('ascending, "offset", device, climb=True)', 'ascending, "offset", device, climb=False)'),),
        ("tests/library/test_reload_values.py", "-k", "Inverse"),
        "the inverse scheduler steps forward (its alpha pairs not swapped)",
    ),
    Mutation(
        "variance-off-the-landing",
        "src/ddim/plan.py",
        (
            (
                "            prev_timestep = landing.timesteps.to(t.device)[t]\n",
                "            prev_timestep = t - 1000 // len(self.timesteps)\n",
            ),
        ),
        ("tests/library/test_step_plan.py",),
        "_get_variance(t) by diffusers' t - T // N whatever the step's landing",
    ),
    Mutation(
        "cfg-pp-renoise-ignored",
        "src/ddim/update.py",
        (("    m_direction = m if renoise is None else renoise\n", "    m_direction = m\n"),),
        ("tests/library/test_cfg_pp.py",),
        "CFG++ renoises with the guided output (plain CFG at scale lambda)",
    ),
    Mutation(
        "k-diffusion-sigma-up",
        "src/ddim/k_diffusion.py",
        (("sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)", "sigma_down = sigma_next"),),
        ("tests/library/test_k_diffusion.py",),
        "the k-diffusion form's deterministic part ignores the noise share (eta > 0 off DDIM's eq. 12)",
    ),
    Mutation(
        "chunks-skip-the-ragged-last",
        "src/ddim/cpu_chunks.py",
        (
            ("    xs = x.split(chunk)\n", "    xs = x.split(chunk)[:-1]\n"),
            ("x0_out.split(chunk), strict=True):", "x0_out.split(chunk), strict=False):"),
        ),
        ("tests/library/test_cpu_chunks.py",),
        "the chunked CPU update leaves the last (ragged) chunk of the outputs unwritten",
    ),
    Mutation(
        "buffers-shared-with-forked-children",
        "src/ddim/cpu_buffers.py",
        (("flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS", "flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS"),),
        ("tests/library/test_cpu_buffers.py",),
        "reused output buffers are shared mappings: a forked child's writes reach the parent",
    ),
    Mutation(
        "buffers-kept-beyond-the-limit",
        "src/ddim/cpu_buffers.py",
        (
            (
                "            if self.count < MAX_FREE and self.nbytes + size <= MAX_FREE_BYTES:\n",
                "            if True:\n",
            ),
        ),
        ("tests/library/test_cpu_buffers.py",),
        "the free list keeps every freed output buffer (unbounded memory)",
    ),
    Mutation(
        "kernel-noise-lanes-swapped",
        "src/ddim/kernels/triton_update.py",
        (
            (
                "tl.where(lane == 0, n0, n1), tl.where(lane == 2, n2, n3)",
                "tl.where(lane == 0, n0, n2), tl.where(lane == 2, n1, n3)",
            ),
        ),
        ("tests/library/test_kernel_noise.py",),
        "the kernel's four normals per counter land on the wrong elements (not the documented stream)",
    ),
]


def copy_tree(destination: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", ".pytest_cache")
    for name in ("src", "tests"):
        shutil.copytree(ROOT / name, destination / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", destination / "pyproject.toml")


def environment(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree / "src"), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}


def run_tests(tree: Path, arguments: tuple[str, ...]) -> tuple[int | None, float, str]:
    """pytest's exit code (None on a timeout), the seconds it took and the end of its output."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-n", "0", "-p", "no:cacheprovider", *arguments]
    start = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=tree, env=environment(tree), capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - start, ""
    return done.returncode, time.monotonic() - start, (done.stdout + done.stderr)[-3000:]


def status_of(code: int | None) -> str:
    if code is None:
        return "timeout"
    return {0: "MISSED", 1: "caught", 5: "no tests selected"}.get(code, f"caught (pytest exit {code})")


def check(tree: Path, mutation: Mutation) -> tuple[str, float]:
    """Apply ``mutation`` to ``tree``, run its tests, restore the file; (status, seconds)."""
    path = tree / mutation.path
    if not path.is_file():
        return "not applicable (file gone)", 0.0
    original = path.read_text()
    text = original
    for old, new in mutation.edits:
        count = text.count(old)
        if count != 1:
            return f"not applicable (snippet found {count} times)", 0.0
        text = text.replace(old, new)
    path.write_text(text)
    try:
        code, seconds, _ = run_tests(tree, mutation.tests)
    finally:
        path.write_text(original)
    return status_of(code), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutations only")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of each test selection")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.only is None or m.name in args.only]
    if args.list or not chosen:
        for mutation in MUTATIONS:
            print(f"{mutation.name:30} {mutation.path:36} {mutation.description}")
        return 0 if args.list else 2
    with tempfile.TemporaryDirectory(prefix="ddim-mutation-") as folder:
        tree = Path(folder)
        copy_tree(tree)
        where = subprocess.run(
            [sys.executable, "-c", "import ddim; print(ddim.__file__)"],
            cwd=tree,
            env=environment(tree),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not where.startswith(str(tree)):
            print(f"the copy's package is not the one imported ({where}); aborting", file=sys.stderr)
            return 2
        broken = set()
        if not args.no_baseline:
            for selection in dict.fromkeys(m.tests for m in chosen):
                code, seconds, output = run_tests(tree, selection)
                print(f"baseline {' '.join(selection)}: exit {code} ({seconds:.0f} s)", flush=True)
                if code != 0:
                    broken.add(selection)
                    print(output, flush=True)
        rows = []
        for mutation in chosen:
            if mutation.tests in broken:
                status, seconds = "baseline fails", 0.0
            else:
                status, seconds = check(tree, mutation)
            rows.append((mutation, status, seconds))
            print(f"{mutation.name:30} {status:28} {seconds:5.0f} s  {mutation.description}", flush=True)
    caught = sum(status.startswith("caught") for _, status, _ in rows)
    missed = sum(status == "MISSED" for _, status, _ in rows)
    other = len(rows) - caught - missed
    rate = f"{100 * caught / (caught + missed):.0f}%" if caught + missed else "n/a"
    print(f"\ncaught {caught}, missed {missed}, other {other} (not applicable, timeout, ...); catch rate {rate}")
    print("\n| mutation | file | status | description |\n|---|---|---|---|")
    for mutation, status, _ in rows:
        print(f"| {mutation.name} | {mutation.path} | {status} | {mutation.description} |")
    return 0 if missed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
