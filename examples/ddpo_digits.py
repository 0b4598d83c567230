"""DDPO-style policy-gradient fine-tuning of the embedded digits model so that it draws one digit.

Reward: the shipped classifier's probability of the target digit on the final sample. Sampling: DDIM
with eta = 1 (each step a Gaussian policy); trajectories are drawn without gradient and every
transition re-scored with ``ddim.ddim_step_with_logprob(..., prev_sample=recorded)`` with gradient
(``ddim.app.digits.policy_gradient``). Then digits-FID, reward and the target fraction of the original
and the fine-tuned model, from the same seeds and counts, against all training digits and against the
training images of the target digit. Writes ``ddpo.json``, ``reward_curve.png`` and ``samples.png``
into ``--out-dir``.

Run (about 3 minutes on one CPU core)::

    OMP_NUM_THREADS=1 python examples/ddpo_digits.py --out-dir docs/eval/ddpo

``--kl-weight 0 --min-sigma 0`` is plain DDPO (no KL penalty, every stochastic step trained).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddim.app.atomic import write_atomically
from ddim.app.digits import load_digits_split, load_pretrained
from ddim.app.digits.classifier import NUM_CLASSES, DigitsClassifier, load_classifier
from ddim.app.digits.data import DigitsSplit
from ddim.app.digits.fid import DigitsFID
from ddim.app.digits.policy_gradient import (
    OBJECTIVES,
    PolicyGradientConfig,
    draw_samples,
    fine_tune,
    target_reward,
)
from ddim.app.evaluation import floor_and_ceiling, seed_spread
from ddim.app.images import image_grid, to_images
from ddim.scheduler import DDIMScheduler
from ddim.validation import ARGUMENT_ERRORS

DEFAULTS = PolicyGradientConfig()
#: Samples per seed and seeds of the before/after evaluation (digits-FID is compared at equal N only).
EVAL_COUNT = 1000
EVAL_SEEDS = (100, 101, 102)
#: Samples shown per model in ``samples.png``.
GRID_COUNT = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--target", type=int, default=DEFAULTS.target, help="the digit to reward (0-9)")
    add("--iterations", type=int, default=DEFAULTS.iterations)
    add("--batch-size", type=int, default=DEFAULTS.batch_size, help="trajectories per iteration")
    add("--steps", type=int, default=DEFAULTS.num_inference_steps, help="DDIM steps S")
    add("--eta", type=float, default=DEFAULTS.eta)
    add("--learning-rate", type=float, default=DEFAULTS.learning_rate)
    add("--objective", choices=OBJECTIVES, default=DEFAULTS.objective, help="sf: REINFORCE; is: PPO clip")
    add("--clip-range", type=float, default=DEFAULTS.clip_range, help="importance-ratio clip (is)")
    add("--inner-epochs", type=int, default=DEFAULTS.inner_epochs)
    add("--minibatches", type=int, default=DEFAULTS.minibatches)
    add("--kl-weight", type=float, default=DEFAULTS.kl_weight, help="KL penalty to the original model (0: DDPO)")
    add("--min-sigma", type=float, default=DEFAULTS.min_sigma, help="train steps with sigma >= this (0: DDPO)")
    add("--seed", type=int, default=DEFAULTS.seed, help="seed of the fine-tuning")
    add("--eval-count", type=int, default=EVAL_COUNT, help="samples per seed for digits-FID")
    add("--eval-seeds", type=int, nargs="+", default=list(EVAL_SEEDS))
    add("--threads", type=int, default=1, help="torch.set_num_threads (1: deterministic, as documented)")
    add("--out-dir", type=Path, default=Path("docs/eval/ddpo"))
    args = parser.parse_args(argv)
    try:
        args.config = PolicyGradientConfig(
            target=args.target,
            iterations=args.iterations,
            batch_size=args.batch_size,
            num_inference_steps=args.steps,
            eta=args.eta,
            learning_rate=args.learning_rate,
            objective=args.objective,
            clip_range=args.clip_range,
            inner_epochs=args.inner_epochs,
            minibatches=args.minibatches,
            kl_weight=args.kl_weight,
            min_sigma=args.min_sigma,
            seed=args.seed,
        )
    except ARGUMENT_ERRORS as error:
        parser.error(str(error))
    if args.eval_count < 2 or args.threads < 1 or min(args.eval_seeds) < 0:
        parser.error("--eval-count must be >= 2, --threads >= 1 and every --eval-seeds value >= 0")
    return args


def digit_split(data: DigitsSplit, digit: int) -> DigitsSplit:
    """The digits of one class only (training and held-out)."""
    train, test = data.train_labels == digit, data.test_labels == digit
    return DigitsSplit(
        data.train_images[train], data.train_labels[train], data.test_images[test], data.test_labels[test]
    )


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": seed_spread(values)}


def evaluate(
    unet: torch.nn.Module,
    scheduler: DDIMScheduler,
    classifier: DigitsClassifier,
    fids: dict[str, DigitsFID],
    config: PolicyGradientConfig,
    count: int,
    seeds: list[int],
) -> tuple[dict[str, Any], torch.Tensor]:
    """digits-FID against each reference, mean reward and target fraction per seed; the first seed's samples."""
    reward = target_reward(classifier, config.target)
    per_seed: dict[str, list[float]] = {**{f"fid_{name}": [] for name in fids}, "reward": [], "target_fraction": []}
    histogram = np.zeros(NUM_CLASSES, dtype=np.int64)
    first = torch.empty(0)
    for seed in seeds:
        samples = draw_samples(unet, scheduler, count, config.num_inference_steps, config.eta, seed)
        first = samples if first.numel() == 0 else first
        for name, fid in fids.items():
            per_seed[f"fid_{name}"].append(fid(samples))
        with torch.no_grad():
            labels = classifier(samples.clamp(-1, 1)).argmax(1)
        per_seed["reward"].append(float(reward(samples).mean()))
        per_seed["target_fraction"].append(float((labels == config.target).float().mean()))
        histogram += np.bincount(labels.numpy(), minlength=NUM_CLASSES)
    result: dict[str, Any] = {key: {"per_seed": values, **mean_std(values)} for key, values in per_seed.items()}
    result["class_histogram"] = histogram.tolist()
    return result, first


def write_json(path: Path, payload: dict[str, Any]) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2) + "\n"))


def plot_reward_curve(history: list[dict[str, Any]], report: dict[str, Any], path: Path) -> None:
    """Mean reward per iteration (band: batch std), with the before/after evaluation rewards dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = report["config"]
    x = np.array([h["iteration"] for h in history])
    mean = np.array([h["reward_mean"] for h in history])
    std = np.array([h["reward_std"] for h in history])
    figure, axis = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    axis.fill_between(x, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), alpha=0.2, label="batch std")
    axis.plot(x, mean, marker=".", label=f"mean reward of the batch (B={config['batch_size']})")
    for key, style in (("before", ":"), ("after", "--")):
        level = report[key]["reward"]["mean"]
        axis.axhline(level, linestyle=style, color="grey", label=f"evaluation {key}: {level:.3f}")
    axis.set_ylim(0, 1)
    axis.set_xlabel("iteration")
    axis.set_ylabel(f"p(digit {config['target']}) (classifier)")
    axis.set_title(
        f"DDPO-{config['objective'].upper()} on the digits model: target {config['target']}, "
        f"S={config['num_inference_steps']}, eta={config['eta']:g}, lr={config['learning_rate']:g}, "
        f"kl_weight={config['kl_weight']:g}, min_sigma={config['min_sigma']:g}",
        fontsize=7,
    )
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    write_atomically(path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)


def plot_samples(before: torch.Tensor, after: torch.Tensor, seed: int, path: Path) -> None:
    """The first samples of one seed, original (left) and fine-tuned (right): the same x_T and noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(6.4, 3.5), dpi=120)
    for axis, samples, title in zip(axes, (before, after), ("original", "fine-tuned"), strict=True):
        axis.imshow(image_grid(to_images(samples[:GRID_COUNT]), columns=8, scale=4), cmap="gray", vmin=0, vmax=255)
        axis.set_title(f"{title} (seed {seed})", fontsize=9)
        axis.axis("off")
    figure.tight_layout()
    write_atomically(path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    config: PolicyGradientConfig = args.config
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    original, scheduler = load_pretrained()
    original.requires_grad_(False)
    classifier = load_classifier()
    data = load_digits_split()
    fids = {"all": DigitsFID(classifier, data), "target": DigitsFID(classifier, digit_split(data, config.target))}
    eval_args = (classifier, fids, config, args.eval_count, args.eval_seeds)
    before, before_samples = evaluate(original, scheduler, *eval_args)
    print(f"before: {json.dumps({k: v['mean'] for k, v in before.items() if 'mean' in v})}", flush=True)

    tuned = copy.deepcopy(original).requires_grad_(True)
    tune_start = time.perf_counter()

    def progress(record: dict[str, Any]) -> None:
        kl = "" if record["kl"] is None else f" kl {record['kl']:.4f}"
        line = f"reward {record['reward_mean']:.3f} loss {record['loss']:+.4f}{kl} {record['seconds']:.1f} s"
        print(f"iteration {record['iteration']:3d} {line}", flush=True)

    history = fine_tune(tuned, scheduler, target_reward(classifier, config.target), config, progress, original)
    tune_seconds = time.perf_counter() - tune_start
    tuned.requires_grad_(False)
    after, after_samples = evaluate(tuned, scheduler, *eval_args)
    print(f"after: {json.dumps({k: v['mean'] for k, v in after.items() if 'mean' in v})}", flush=True)

    floors = {name: floor_and_ceiling(fid, [args.eval_count], args.eval_seeds) for name, fid in fids.items()}
    report: dict[str, Any] = {
        "command": "python examples/ddpo_digits.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": asdict(config),
        "evaluation": {
            "count": args.eval_count,
            "seeds": args.eval_seeds,
            "sampler": f"DDIM S={config.num_inference_steps}, eta={config.eta:g} (the policy's sampler)",
            "references": {
                "all": f"the {data.train_images.shape[0]} training digits",
                "target": f"the {int((data.train_labels == config.target).sum())} training images of "
                f"digit {config.target}",
            },
        },
        "before": before,
        "after": after,
        "floor": {name: table[str(args.eval_count)] for name, table in floors.items()},
        "history": history,
        "seconds": {"fine_tuning": tune_seconds, "total": time.perf_counter() - started},
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    write_json(args.out_dir / "ddpo.json", report)
    plot_reward_curve(history, report, args.out_dir / "reward_curve.png")
    plot_samples(before_samples, after_samples, args.eval_seeds[0], args.out_dir / "samples.png")
    print(f"wrote {args.out_dir}/ddpo.json, reward_curve.png, samples.png in {report['seconds']['total']:.0f} s")
    return report


if __name__ == "__main__":
    main()
