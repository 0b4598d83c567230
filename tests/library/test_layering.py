"""The library never loads the application or an optional dependency.

Every library module (all of ``ddim`` except ``ddim.app``, the ``python -m ddim`` entry point, and the
two modules that exist to wrap an optional package: ``ddim.diffusers`` and the Triton kernel) is imported
in a fresh interpreter; afterwards no application module may be loaded, and none of the optional
packages beyond what ``import torch, numpy`` loads by itself (PyTorch 2.13 imports tqdm on its own).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import ddim

PACKAGE = Path(ddim.__file__).parent
#: Modules that wrap an optional package by design (imported only on request).
WRAPPERS = {"ddim.diffusers", "ddim.kernels.triton_update", "ddim.__main__"}
FORBIDDEN = ("tqdm", "safetensors", "PIL", "matplotlib", "sklearn", "scipy", "diffusers", "triton")


def library_modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name.startswith("ddim.app") or name in WRAPPERS:
            continue
        names.append(name)
    return names


def test_library_modules_are_found() -> None:
    names = library_modules()
    assert {"ddim", "ddim.scheduler", "ddim.paper_step", "ddim.sampling", "ddim.kernels"} <= set(names)
    assert not any(name.startswith("ddim.app") for name in names)


@pytest.mark.slow
def test_importing_every_library_module_loads_no_application_module_and_no_optional_package() -> None:
    script = (
        "import importlib, json, sys\n"
        "import numpy, torch\n"
        "before = set(sys.modules)\n"
        f"for name in {library_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    loaded = json.loads(result.stdout)
    assert "ddim.scheduler" in loaded
    application = [name for name in loaded if name == "ddim.app" or name.startswith("ddim.app.")]
    optional = [name for name in loaded if name.split(".")[0] in FORBIDDEN]
    assert application == [], application
    assert optional == [], optional


def test_no_library_source_file_imports_the_application() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "app" in path.relative_to(PACKAGE).parts[:1] or path.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ddim.app"):
                offenders.append(f"{path.name}: from {node.module}")
            elif isinstance(node, ast.Import):
                offenders += [f"{path.name}: import {a.name}" for a in node.names if a.name.startswith("ddim.app")]
    assert offenders == []
