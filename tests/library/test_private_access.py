"""No module of the package reads another module's private attributes: each need has a public, typed seam.

An attribute access ``obj._name`` (not a dunder) whose object is not ``self``, ``cls``, ``super()`` or an
imported module is
allowed only in the module that defines ``_name`` (as a method, a class attribute or a ``self._name``
assignment); diffusers' ``_get_variance`` and ``_batch_get_variance``, which our classes define under
diffusers' names, are looked up the same way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ddim

PACKAGE = Path(ddim.__file__).parent


def defined_private_names(tree: ast.AST) -> set[str]:
    """Private names a module defines: functions, classes, assignment targets and ``self._x = ...`` attributes."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {name for name in names if name.startswith("_")}


def foreign_private_reads(source: str, module: str) -> list[str]:
    """``module:line: .name`` for every private attribute ``source`` reads but does not define."""
    tree = ast.parse(source)
    own = defined_private_names(tree)
    modules = {
        alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or (name.startswith("__") and name.endswith("__")) or name in own:
            continue
        value = node.value
        if isinstance(value, ast.Name) and (value.id in ("self", "cls") or value.id in modules):
            continue  # own attributes, or a module's (argparse._SubParsersAction): not another module's state
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super":
            continue
        found.append(f"{module}:{node.lineno}: .{name}")
    return found


def test_the_scan_finds_a_foreign_private_read() -> None:
    source = "def f(scheduler):\n    return scheduler._plans, scheduler.plan, self._own\n"
    assert foreign_private_reads(source, "probe") == ["probe:2: ._plans"]
    assert foreign_private_reads(source + "class A:\n    _plans = {}\n", "probe") == []


def test_no_module_reads_another_modules_private_attributes() -> None:
    reads = [
        read
        for path in sorted(PACKAGE.rglob("*.py"))
        for read in foreign_private_reads(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))
    ]
    assert reads == []
