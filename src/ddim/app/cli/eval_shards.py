"""``ddim eval --from-shards DIR``: digits-FID of a sharded run from its shards' feature statistics.

The run must have been generated with ``--fid-stats``; no sample is loaded, so memory does not grow with N.
Prints the FID of all samples and, for a class-conditional run, of each digit against that digit's training
digits; ``--out-dir`` also gets ``shard_fid.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ddim.app.cli import outputs, usage
from ddim.app.digits.fid_statistics import fid_from_shards

#: Options of ``ddim eval`` that make no sense with --from-shards (they configure sampling).
SAMPLING_OPTIONS = ("quick", "counts", "etas", "ddpm_count", "clip_sample", "use_clipped_model_output", "model")


def run_from_shards(args: argparse.Namespace) -> int:
    """Print (and with --out-dir write) the digits-FID of ``args.from_shards``."""
    for flag in SAMPLING_OPTIONS:
        if getattr(args, flag, None) not in (None, False):
            raise usage.UsageError(f"--{flag.replace('_', '-')} configures sampling; --from-shards samples nothing")
    if args.recipe:
        raise usage.UsageError("--recipe samples the conditional models; it cannot be combined with --from-shards")
    out_dir = outputs.output_folder(args.out_dir, Path("."), "shard_fid.json") if args.out_dir is not None else None
    result = fid_from_shards(args.from_shards)
    print(f"{args.from_shards}: digits-FID {result.fid:.4f} ({result.num_samples} samples, {result.num_shards} shards)")
    if result.per_digit:
        print("digit  samples  digits-FID (against the training digits of that digit)")
        for digit, (count, fid) in sorted(result.per_digit.items()):
            print(f"{digit:>5}  {count:>7}  {fid:.4f}")
    if out_dir is not None:
        text = json.dumps(result.as_dict(), indent=1) + "\n"
        outputs.write_atomically(out_dir / "shard_fid.json", lambda path: path.write_text(text, encoding="utf-8"))
        print(f"wrote {out_dir / 'shard_fid.json'}")
    return 0
