"""The recipe evaluation's report: Markdown tables, the target checks and the plots, from the part files.

Reads the ``recipe_PART.json`` files that ``ddim eval --recipe`` writes (``ddim.app.recipe_evaluation``)
and writes ``recipe.md``, ``recipe_tradeoff.png`` (class accuracy against per-class digits-FID along the
guidance sweep, with and without rescale; the over-exposed fraction against the scale) and
``recipe_brightness.png`` (per-image brightness of samples against the data's, per model).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ddim.app.digits.data import load_digits_split
from ddim.app.digits.sample_metrics import OVEREXPOSURE_MARGIN, pixel_std
from ddim.app.evaluation_framework import pyplot, save_figure, seed_spread, target, targets_table
from ddim.app.recipe_evaluation import DDPM_STEPS
from ddim.app.recipe_parts import read_part

PART_FILE = "recipe_{}.json"
PART_NAMES: tuple[str, ...] = ("sweep", "ablation", "brightness", "ddpm")
MODEL_NAMES = {
    "zero_snr": "zero-SNR",
    "control": "control (plain schedule)",
    "inverted": "zero-SNR, inverted data",
    "inverted_control": "control, inverted data",
}
Cell = dict[str, Any]
#: How the over-exposure threshold reads in the report ("|x| > 1.125").
OVEREXPOSED = f"|x| > {1 + OVEREXPOSURE_MARGIN:g}"


def read_parts(folder: Path) -> dict[str, dict[str, Any]]:
    """Every ``recipe_PART.json`` in ``folder``, by part name (a damaged file is a ``ValueError`` naming it and
    the key: :func:`ddim.app.recipe_parts.read_part`)."""
    parts = {}
    for name in PART_NAMES:
        path = folder / PART_FILE.format(name)
        if os.path.lexists(path):
            parts[name] = read_part(path, name)  # checked against the schema in full, or PartFileError
    return parts


def stat(cell: Cell, metric: str, scale: float = 1.0, digits: int = 2) -> str:
    """``mean +- std`` over seeds of one metric of a cell."""
    return f"{cell[metric + '_mean'] * scale:.{digits}f} +- {cell[metric + '_std'] * scale:.{digits}f}"


def find(cells: Sequence[Cell], **fields: Any) -> Cell | None:
    for cell in cells:
        if all(cell.get(k) == v for k, v in fields.items()):
            return cell
    return None


def paired(a: Cell, b: Cell, metric: str) -> str:
    """``a - b`` of one metric seed by seed (the same seeds draw the same x_T): mean +- std over seeds."""
    difference = np.asarray(a["per_seed"][metric]) - np.asarray(b["per_seed"][metric])
    return f"{difference.mean():+.2f} +- {seed_spread(difference.tolist()):.2f}"


def floors(part: dict[str, Any]) -> str:
    """One line with the part's per-class and all-digit FID floors and ceilings at its sample count."""
    per_class = part["per_class_floor"]
    overall = part["fid_floor"]

    def mean(rows: list[dict[str, float]], key: str) -> str:
        values = [row[key] for row in rows if key in row]
        return f"{np.mean(values):.2f} +- {seed_spread(values):.2f}" if values else "n/a"

    return (
        f"Floors at N = {part['per_digit']} per digit: per-class digits-FID of resampled training digits "
        f"{mean(per_class, 'resampled')} (noise: {mean(per_class, 'noise')}); digits-FID of all digits: resampled "
        f"{mean(overall, 'resampled')}, held-out {mean(overall, 'held_out')} (noise: {mean(overall, 'noise')})."
    )


def sweep_section(part: dict[str, Any], data_std: float) -> list[str]:
    cells = part["cells"]
    rescales = sorted({c["guidance_rescale"] for c in cells})
    scales = sorted({c["guidance_scale"] for c in cells})
    lines = [
        "### Guidance sweep",
        "",
        f"Zero-SNR model, trailing, S = 50, eta 0; {part['per_digit']} samples of each digit per seed, "
        f"{len(part['seeds'])} seeds. Over-exposed: pixels with {OVEREXPOSED} before clipping. Pixel std: mean "
        f"per-image standard deviation (data: {data_std:.3f}).",
        "",
        "| s | phi | class accuracy (%) | per-class digits-FID | digits-FID | over-exposed (%) | pixel std |",
        "|---|---|---|---|---|---|---|",
    ]
    for scale in scales:
        for rescale in rescales:
            cell = find(cells, guidance_scale=scale, guidance_rescale=rescale)
            if cell is not None:
                lines.append(
                    f"| {scale:g} | {rescale:g} | {stat(cell, 'accuracy', 100, 1)} | {stat(cell, 'per_class_fid')} | "
                    f"{stat(cell, 'fid')} | {stat(cell, 'overexposed', 100, 3)} | {stat(cell, 'pixel_std', 1, 3)} |"
                )
    return [*lines, "", floors(part)]


def ablation_section(part: dict[str, Any]) -> list[str]:
    cells = part["cells"]
    first = cells[0]
    lines = [
        "### Recipe ablation",
        "",
        f"Guidance s = {first['guidance_scale']:g}, phi = {first['guidance_rescale']:g}, eta 0; "
        f"{part['per_digit']} samples of each digit per seed, {len(part['seeds'])} seeds.",
        "",
        "| model | spacing | S | first t | SNR(first t) | digits-FID | per-class digits-FID | class accuracy (%) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        lines.append(
            f"| {MODEL_NAMES.get(cell['model'], cell['model'])} | {cell['spacing']} | {cell['steps']} | "
            f"{cell['first_timestep']} | {cell['first_snr']:.3g} | {stat(cell, 'fid')} | "
            f"{stat(cell, 'per_class_fid')} | {stat(cell, 'accuracy', 100, 1)} |"
        )
    lines += [
        "",
        "Paired differences (same seeds, so the same x_T; mean +- std over seeds; negative: the first is better):",
        "",
        "| comparison | S | digits-FID | per-class digits-FID |",
        "|---|---|---|---|",
    ]
    for steps in sorted({c["steps"] for c in cells}):
        pairs = [
            (f"{MODEL_NAMES.get(m, m)}: trailing - leading", (m, "trailing"), (m, "leading"))
            for m in ("control", "zero_snr")
        ] + [(f"{s}: zero-SNR - control", ("zero_snr", s), ("control", s)) for s in ("leading", "trailing")]
        for name, (model_a, spacing_a), (model_b, spacing_b) in pairs:
            a = find(cells, model=model_a, spacing=spacing_a, steps=steps)
            b = find(cells, model=model_b, spacing=spacing_b, steps=steps)
            if a and b:
                lines.append(f"| {name} | {steps} | {paired(a, b, 'fid')} | {paired(a, b, 'per_class_fid')} |")
    return [*lines, "", floors(part)]


def brightness_section(part: dict[str, Any]) -> list[str]:
    first = part["cells"][0]
    lines = [
        "### Brightness",
        "",
        "Per-image mean pixel (after clipping to [-1, 1]) of the samples against the training data's "
        f"(trailing, S = 50, s = {first['guidance_scale']:g}, phi = {first['guidance_rescale']:g}; "
        f"{part['per_digit']} of each digit per seed, {len(part['seeds'])} seeds pooled). W1: the 1-Wasserstein "
        "distance to the data's distribution (floor: as many training images resampled). Extreme: samples beyond "
        "the data's 5% and 95% quantiles (10% for the data itself).",
        "",
        "| model | data mean, std | samples mean, std | data 1%, 99% | samples 1%, 99% | W1 (floor) | extreme (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for cell in part["cells"]:
        data, seen = part["brightness_data"][cell["model"]], cell["brightness"]
        floor = np.mean(part["brightness_w1_resampled"][cell["model"]])
        lines.append(
            f"| {MODEL_NAMES.get(cell['model'], cell['model'])} | {data['mean']:.3f}, {data['std']:.3f} | "
            f"{seen['mean']:.3f}, {seen['std']:.3f} | "
            f"{data['quantiles']['0.01']:.3f}, {data['quantiles']['0.99']:.3f} | "
            f"{seen['quantiles']['0.01']:.3f}, {seen['quantiles']['0.99']:.3f} | "
            f"{cell['brightness_w1']:.4f} ({floor:.4f}) | {100 * cell['brightness_extreme']:.1f} |"
        )
    return lines


def ddpm_section(part: dict[str, Any]) -> list[str]:
    lines = [
        "### DDIM against DDPM",
        "",
        f"Zero-SNR model, conditional alone (s = 1), {part['per_digit'] * 10} samples per seed (balanced), "
        f"{len(part['seeds'])} seeds; DDPM = eta 1 at S = 1000 (every timestep: the DDPM sampler).",
        "",
        "| sampler | digits-FID | per-class digits-FID | class accuracy (%) | wall per seed (s) |",
        "|---|---|---|---|---|",
    ]
    for cell in part["cells"]:
        ddpm = cell["steps"] == DDPM_STEPS
        name = f"DDPM, {DDPM_STEPS} steps" if ddpm else f"DDIM S={cell['steps']}, eta {cell['eta']:g}"
        lines.append(
            f"| {name} | {stat(cell, 'fid')} | {stat(cell, 'per_class_fid')} | {stat(cell, 'accuracy', 100, 1)} | "
            f"{np.mean(cell['seconds']):.0f} |"
        )
    return [*lines, "", floors(part)]


def check_targets(parts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The recipe's claims as pass/fail checks, for the parts present."""
    checks: list[dict[str, Any]] = []

    def add(name: str, passed: bool, detail: str) -> None:
        checks.append(target(name, passed, detail))

    sweep = parts.get("sweep", {}).get("cells", [])
    at = {(c["guidance_scale"], c["guidance_rescale"]): c for c in sweep}
    for scale, wanted in ((3.0, 0.97), (1.5, 0.90)):
        cell = at.get((scale, 0.7))
        if cell is not None:
            add(
                f"class accuracy >= {wanted:.0%} at s = {scale:g} (phi 0.7)",
                cell["accuracy_mean"] >= wanted,
                f"{100 * cell['accuracy_mean']:.1f}%",
            )
    rising = [at[key] for key in sorted(at) if key[1] == 0.7 and key[0] <= 3.0]
    if len(rising) > 1:
        values = [c["accuracy_mean"] for c in rising]
        add(
            "accuracy rises with the scale up to s = 3 (phi 0.7)",
            all(b >= a - 0.005 for a, b in itertools.pairwise(values)),
            ", ".join(f"{c['guidance_scale']:g}: {100 * c['accuracy_mean']:.1f}%" for c in rising),
        )
    for scale in sorted({s for s, _ in at if s >= 5.0}):
        plain, rescaled = at.get((scale, 0.0)), at.get((scale, 0.7))
        if plain and rescaled:
            add(
                f"s = {scale:g}: rescale 0.7 at least halves the over-exposed fraction",
                rescaled["overexposed_mean"] <= 0.5 * plain["overexposed_mean"],
                f"{100 * plain['overexposed_mean']:.3f}% -> {100 * rescaled['overexposed_mean']:.3f}%",
            )
            add(
                f"s = {scale:g}: rescale 0.7 lowers the per-class FID",
                rescaled["per_class_fid_mean"] < plain["per_class_fid_mean"],
                f"{plain['per_class_fid_mean']:.2f} -> {rescaled['per_class_fid_mean']:.2f}",
            )
    ablation = parts.get("ablation", {}).get("cells", [])
    leading = find(ablation, model="zero_snr", spacing="leading", steps=10)
    trailing = find(ablation, model="zero_snr", spacing="trailing", steps=10)
    if leading and trailing:
        add(
            "zero-SNR model, S = 10: trailing no worse than leading (digits-FID)",
            trailing["fid_mean"] <= leading["fid_mean"],
            f"trailing {stat(trailing, 'fid')}, leading {stat(leading, 'fid')}; "
            f"paired difference {paired(trailing, leading, 'fid')}",
        )
    ddpm_cells = parts.get("ddpm", {}).get("cells", [])
    ddim, ddpm = find(ddpm_cells, steps=50), find(ddpm_cells, steps=DDPM_STEPS)
    if ddim and ddpm:
        add(
            "DDIM S = 50, eta 0 within 1.5x of DDPM (1000 steps)",
            ddim["fid_mean"] <= 1.5 * ddpm["fid_mean"],
            f"DDIM {stat(ddim, 'fid')}, DDPM {stat(ddpm, 'fid')}; ratio {ddim['fid_mean'] / ddpm['fid_mean']:.2f}",
        )
    return checks


def markdown_report(parts: dict[str, dict[str, Any]], data_std: float) -> str:
    """The report: one section per part present, then the targets."""
    sections: dict[str, Callable[[dict[str, Any]], list[str]]] = {
        "sweep": lambda part: sweep_section(part, data_std),
        "ablation": ablation_section,
        "brightness": brightness_section,
        "ddpm": ddpm_section,
    }
    lines = ["## The zero-terminal-SNR recipe on the conditional digits models", ""]
    for name in PART_NAMES:
        if name in parts:
            lines += [*sections[name](parts[name]), ""]
    targets = check_targets(parts)
    if targets:
        lines += ["### Targets", "", *targets_table(targets), ""]
    seconds = sum(part.get("seconds_total", 0.0) for part in parts.values())
    lines.append(f"Sampling and scoring time of these parts: {seconds / 60:.0f} min on one CPU thread each.")
    return "\n".join(lines) + "\n"


def plot_tradeoff(part: dict[str, Any], path: Path) -> None:
    """Accuracy against per-class FID along the sweep (one line per phi), and the over-exposed fraction against s."""
    from matplotlib.ticker import NullFormatter

    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for index, rescale in enumerate(sorted({c["guidance_rescale"] for c in part["cells"]})):
        line = sorted((c for c in part["cells"] if c["guidance_rescale"] == rescale), key=lambda c: c["guidance_scale"])
        label = f"guidance_rescale = {rescale:g}"
        guided = [c for c in line if c["guidance_scale"] > 0]  # s = 0 (the null label) is ~90% wrong: off the chart
        left.errorbar(
            [c["per_class_fid_mean"] for c in guided],
            [100 * (1 - c["accuracy_mean"]) for c in guided],
            xerr=[c["per_class_fid_std"] for c in guided],
            marker="o",
            capsize=2,
            label=label,
        )
        for c in guided:
            where = (c["per_class_fid_mean"], 100 * (1 - c["accuracy_mean"]))
            offset = (4, 6 if index == 0 else -10)
            left.annotate(f"s={c['guidance_scale']:g}", where, xytext=offset, textcoords="offset points", fontsize=7)
        right.plot(
            [c["guidance_scale"] for c in line], [100 * c["overexposed_mean"] for c in line], marker="o", label=label
        )
    left.set_xscale("log")
    left.set_yscale("symlog", linthresh=0.1)
    worst = max(100 * (1 - c["accuracy_mean"]) for c in part["cells"] if c["guidance_scale"] > 0)
    left.set_ylim(-0.02, 2 * worst + 0.1)
    ticks = [10, 20, 30, 50, 100, 200, 500]
    left.set_xticks(ticks, [str(t) for t in ticks])
    left.xaxis.set_minor_formatter(NullFormatter())
    left.set_xlabel("per-class digits-FID (log scale, lower is better)")
    left.set_ylabel("digits misclassified (%, symlog)")
    left.set_title("guidance trade-off (zero-SNR model, S = 50; s = 0 off the chart)", fontsize=9)
    right.set_xlabel("guidance scale s")
    right.set_ylabel(f"over-exposed pixels, {OVEREXPOSED} (%)")
    right.set_title("over-exposure before clipping", fontsize=9)
    for axis in (left, right):
        axis.legend(fontsize=7)
    save_figure(figure, path)


def plot_brightness(part: dict[str, Any], path: Path) -> None:
    """Histograms of per-image mean brightness, samples against data, one panel per model."""
    plt = pyplot()
    cells = part["cells"]
    figure, axes = plt.subplots(1, len(cells), figsize=(3.2 * len(cells), 3.0), dpi=120, squeeze=False)
    for axis, cell in zip(axes[0], cells, strict=True):
        for summary, label in ((part["brightness_data"][cell["model"]], "data"), (cell["brightness"], "samples")):
            counts = np.asarray(summary["histogram"], dtype=float)
            edges = np.linspace(-1, 1, counts.size + 1)
            axis.stairs(counts / max(1.0, counts.sum()), edges, label=label, fill=label == "data", alpha=0.6)
        axis.set_title(MODEL_NAMES.get(cell["model"], cell["model"]), fontsize=8)
        axis.set_xlabel("per-image mean pixel")
        axis.legend(fontsize=7)
    save_figure(figure, path)


def write_report(folder: Path, parts: dict[str, dict[str, Any]]) -> None:
    """Write ``recipe.md`` and the plots of the parts present into ``folder``."""
    data_std = float(pixel_std(load_digits_split().train_images).mean())
    (folder / "recipe.md").write_text(markdown_report(parts, data_std), encoding="utf-8")
    if "sweep" in parts:
        plot_tradeoff(parts["sweep"], folder / "recipe_tradeoff.png")
    if "brightness" in parts:
        plot_brightness(parts["brightness"], folder / "recipe_brightness.png")
