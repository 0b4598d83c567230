"""``docs/`` holds documents and results only, and every repository path the documents name exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: What ``docs/`` may hold: prose, recorded results and pictures, run logs.
DOCUMENT_SUFFIXES = {".md", ".json", ".png", ".txt", ".log"}
#: A path of this repository written in a document (``docs/...`` or ``examples/...``).
REPOSITORY_PATH = re.compile(r"(?<![\w/.])((?:docs|examples)/[\w./-]+)")


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_docs_holds_no_code_and_no_weights() -> None:
    others = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "docs").rglob("*")
        if path.is_file() and path.suffix not in DOCUMENT_SUFFIXES
    )
    assert others == []


@pytest.mark.parametrize("document", documents(), ids=lambda path: path.name)
def test_every_repository_path_a_document_names_exists(document: Path) -> None:
    named = {match.group(1).rstrip(".") for match in REPOSITORY_PATH.finditer(document.read_text(encoding="utf-8"))}
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert missing == []


def test_the_models_and_scripts_of_the_evaluations_sit_next_to_the_examples() -> None:
    folder = ROOT / "examples" / "evaluation"
    assert {"combine_seeds.py", "recipe_follow_ups.py"} <= {path.name for path in folder.glob("*.py")}
    for stem in ("digits_unet_control", "digits_unet_inverted", "digits_unet_inverted_control"):
        assert (folder / "models" / f"{stem}.safetensors").is_file()
        assert (folder / "models" / f"{stem}.json").is_file()
