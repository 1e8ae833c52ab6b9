"""Every package the program imports is one a plain ``pip install`` brings: each third-party module that
`engine/` or `desktop/` imports (at the top or inside a function) comes from a distribution declared in
pyproject.toml's runtime dependencies, not only from the dev extra or whatever the test environment
happens to hold (``keyring`` was used and undeclared)."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def imported_modules() -> dict[str, str]:
    """Top-level module -> a file importing it, for every absolute import in the program's packages."""
    found: dict[str, str] = {}
    for path in sorted([*ROOT.joinpath("engine").rglob("*.py"), *ROOT.joinpath("desktop").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {_name(r) for r in project["dependencies"]}
    providers = packages_distributions()
    missing = {}
    for module, where in imported_modules().items():
        if module in sys.stdlib_module_names or module in ("engine", "desktop"):
            continue
        dists = {_name(d) for d in providers.get(module, [])}
        assert dists, f"{module} (imported by {where}) is not installed at all"
        if not dists & declared:
            missing[module] = f"{where}, from {', '.join(sorted(dists))}"
    assert not missing, f"imported but not declared in pyproject.toml's dependencies: {missing}"
