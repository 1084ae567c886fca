"""Imports point down: core ← artifacts ← runtime ← tasks ← zoo ← methods ← service ← loadtests ← blockserve.

Every import counts, the ones inside functions too (a lazy import is still a dependency). Besides the
order: the service and the load tests never import a pruning method (the service must not know how a
plan was found), and the two methods do not import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Lowest first; a module may import its own part and the parts before it.
LAYERS = (
    "pruning.core",
    "pruning.artifacts",
    "pruning.runtime",
    "pruning.tasks",
    "pruning.zoo",
    "pruning.methods",
    "service",
    "loadtests",
    "blockserve",
)
# `pruning/__init__.py` is the Python API's front door: it re-exports core and artifacts only.
FACADES = {"pruning": "pruning.artifacts"}
FORBIDDEN = (
    ("service", "pruning.methods"),
    ("loadtests", "pruning.methods"),
    ("pruning.methods.movement", "pruning.methods.posttrain"),
    ("pruning.methods.posttrain", "pruning.methods.movement"),
)
OURS = ("pruning", "service", "loadtests", "blockserve")


def part_of(module: str) -> str | None:
    """The layer a dotted module name belongs to (None for third-party modules)."""
    if module in FACADES:
        return FACADES[module]
    for layer in sorted(LAYERS, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """(line, dotted name) of every import of our packages in `source`, relative ones resolved."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # `from pruning import methods` imports pruning.methods
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names if f"{name}.{alias.name}" != name]
    return [(line, name) for line, name in found if name.split(".")[0] in OURS]


def violations(source: str, module: str) -> list[str]:
    """Why each upward or forbidden import of `module` breaks the layering (empty: none does)."""
    own = part_of(module)
    if own is None:
        return []
    problems = []
    for line, name in imported_modules(source, module):
        target = part_of(name)
        if target is None:  # e.g. `from pruning import X` resolved to pruning.X where X is a name
            target = part_of(name.rsplit(".", 1)[0])
        if target is None:
            continue
        if LAYERS.index(target) > LAYERS.index(own):
            problems.append(f"{module}:{line} imports {name} ({target} is above {own})")
        for importer, imported in FORBIDDEN:
            if (module == importer or module.startswith(importer + ".")) and (
                name == imported or name.startswith(imported + ".")
            ):
                problems.append(f"{module}:{line} imports {name} ({importer} must not import {imported})")
    return problems


def our_modules() -> list[tuple[str, Path]]:
    modules = []
    for package in OURS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules.append((".".join(parts), path))
    return modules


def test_every_module_belongs_to_a_part():
    orphans = [name for name, _ in our_modules() if part_of(name) is None]
    assert not orphans, f"modules outside the layers {LAYERS}: {orphans}"


def test_imports_only_point_down():
    problems = [problem for name, path in our_modules() for problem in violations(path.read_text(), name)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("pruning.core.plan", "from service.config import AppConfig", "above"),
        ("pruning.artifacts.checkpoint", "def f():\n    from pruning.runtime.bench import benchmark", "above"),
        ("pruning.core.plan", "import loadtests.client", "above"),
        ("pruning.tasks.qa", "from pruning import methods", "above"),
        ("service.deployments", "from pruning.methods.posttrain.pipeline import x", "must not import"),
        ("pruning.methods.movement.pruner", "from pruning.methods.posttrain import search", "must not import"),
        ("pruning.methods.posttrain.search", "from ..movement import masks", "must not import"),
        ("pruning.core.units", "from . import structure", None),
        ("blockserve.cli", "from loadtests import cli\nfrom pruning.methods import finetune", None),
    ],
)
def test_the_checker_catches_upward_imports(module, source, expected):
    found = violations(source, module)
    if expected is None:
        assert found == []
    else:
        assert found and all(expected in problem for problem in found), found


def test_no_module_of_ours_is_ignored_by_git():
    """An ignored module works here and is missing from every clone (it happened: `artifacts/` in .gitignore)."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = [str(path.relative_to(ROOT)) for _, path in our_modules()]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    assert not ignored, f"git ignores: {ignored}"
