"""Static cost of the fused step kernel, compiled ahead of time for a GPU without one: PTX instructions per thread.

A proxy, not a timing: it compiles :func:`ddim.kernels.triton_update.kernel` for a CUDA target (Triton's
bundled ``ptxas``; no GPU or driver needed) with the specialisation a real launch gets (16-byte aligned
pointers, sizes divisible by 16), scalar coefficients and clipping, and counts per thread (a block of
``BLOCK`` elements over ``NUM_WARPS`` warps) the PTX instructions, the Philox multiplies (``mul.hi``), the
vector loads and the shared memory, for eta = 0 (no noise) and for noise drawn in the kernel, fp32 and bf16.
``--before DIR`` (another revision's ``src``) prints the same for it. Times on a GPU come from
``benchmarks/step_bench.py --device cuda`` (``benchmarks/gpu_check.sh``).

    python benchmarks/kernel_static.py [--before /tmp/before/src] [--arch 90]
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

DTYPES = ("fp32", "bf16")
FLOAT_ARGUMENTS = ("c0", "c1", "c2", "c3", "c4", "c5", "clip")
INTEGER_POINTERS = ("index_ptr", "seed_ptr")
#: Integer arguments a real launch specialises as divisible by 16 (the benchmark shapes' sizes are).
DIVISIBLE = ("row_numel", "counter_row_stride")


def compiled(module: Any, dtype: str, noise: int, arch: int) -> Any:
    """The kernel of ``module`` compiled for sm_``arch``: ``dtype`` tensors, scalar coefficients, clipping."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    jitted = module.kernel()
    names = list(jitted.arg_names)
    signature = {}
    for name in names:
        if name in module.CONSTEXPRS:
            signature[name] = "constexpr"
        elif name in INTEGER_POINTERS:
            signature[name] = "*i64"
        elif name in ("coef_ptr", "scale_ptr"):
            signature[name] = "*fp32"
        elif name.endswith("_ptr"):
            signature[name] = "*" + dtype
        else:
            signature[name] = "fp32" if name in FLOAT_ARGUMENTS else "i32"
    aligned = [n for n in names if n.endswith("_ptr")] + [n for n in DIVISIBLE if n in names]
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    constants = {"COEF_SOURCE": module.FROM_ARGS, "X0_MODE": module.X0_CLIP, "NOISE": noise, "BLOCK": module.BLOCK}
    constexprs = {(names.index(k),): v for k, v in constants.items()}
    source = ASTSource(fn=jitted, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": module.NUM_WARPS})


def counts(kernel: Any) -> dict[str, int]:
    """Instructions (predicated ones included), Philox multiplies, vector loads and shared bytes of a kernel."""
    lines = [line.strip() for line in kernel.asm["ptx"].splitlines()]
    body = [line for line in lines if line and (line[0].isalpha() or line[0] == "@")]
    return {
        "instructions": len(body),
        "mul.hi": sum("mul.hi" in line for line in body),
        "vector loads": sum("ld.global.v" in line for line in body),
        "shared bytes": int(kernel.metadata.shared),
    }


def load(src: Path | None) -> Any:
    """``ddim.kernels.triton_update`` from ``src`` (another revision's ``src`` folder) or from this checkout."""
    if src is not None:
        for name in [m for m in sys.modules if m == "ddim" or m.startswith("ddim.")]:
            del sys.modules[name]
        sys.path.insert(0, str(src))
    return importlib.import_module("ddim.kernels.triton_update")


def report(label: str, module: Any, arch: int) -> None:
    print(f"\n{label}: BLOCK {module.BLOCK}, {module.NUM_WARPS} warps, sm_{arch}, per thread")
    print("| dtype | noise | instructions | mul.hi | vector loads | shared bytes |\n|---|---|---|---|---|---|")
    for dtype in DTYPES:
        for noise, name in ((module.NOISE_NONE, "none (eta 0)"), (module.NOISE_KERNEL, "in the kernel")):
            c = counts(compiled(module, dtype, noise, arch))
            print(f"| {dtype} | {name} | " + " | ".join(str(v) for v in c.values()) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="another revision's src folder, reported first")
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability as an int (default 90)")
    args = parser.parse_args(argv)
    try:
        import triton  # noqa: F401
    except ImportError:
        print("triton is not installed: nothing to compile")
        return 0
    if args.before is not None:
        report(f"before ({args.before})", load(args.before), args.arch)
    report("this checkout", load(Path(__file__).resolve().parents[1] / "src"), args.arch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
