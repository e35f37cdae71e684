"""Every third-party module our code imports is declared in pyproject.toml.

The packages must import only what `dependencies` declares; `bench/` and `tests/` may also use the
`test` extra. Imports are read with `ast` (imports inside functions count), so nothing is executed.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "models", "schemas")
TEST_DIRS = ("bench", "tests")
# Our own top-level names: the packages, plus the script modules of bench/ and tests/ that import
# each other by file name.
LOCAL = set(PACKAGES) | set(TEST_DIRS) | {f.stem for d in TEST_DIRS for f in (ROOT / d).rglob("*.py")}


def normalise(distribution: str) -> str:
    """PEP 503 name: `PyYAML`, `pyyaml` and `py_yaml` compare equal."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def requirement_names(requirements: list[str]) -> set[str]:
    """Distribution names of PEP 508 requirement strings, e.g. `optuna>=4.9,<6` -> `optuna`."""
    return {normalise(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r.strip()).group()) for r in requirements}


def imported_modules(source: str) -> set[str]:
    """Top-level names of the absolute imports anywhere in `source`."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@cache
def installed_distributions() -> dict[str, list[str]]:
    """Import name -> distributions providing it, of what is installed (slow: read once)."""
    return packages_distributions()


def undeclared_imports(source: str, declared: set[str]) -> set[str]:
    """Third-party modules imported by `source` whose distribution is not in `declared`."""
    distributions = installed_distributions()
    third_party = imported_modules(source) - set(sys.stdlib_module_names) - LOCAL
    return {
        module for module in third_party
        if not {normalise(d) for d in distributions.get(module, [])} & declared
    }


def declared_distributions(*extras: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return requirement_names(requirements)


def undeclared_in(dirs: tuple[str, ...], declared: set[str]) -> dict[str, set[str]]:
    """Each undeclared module with the files (relative to the repository) that import it."""
    found: dict[str, set[str]] = {}
    for d in dirs:
        for path in sorted((ROOT / d).rglob("*.py")):
            for module in undeclared_imports(path.read_text(encoding="utf-8"), declared):
                found.setdefault(module, set()).add(str(path.relative_to(ROOT)))
    return found


def test_the_check_flags_an_undeclared_import_and_passes_a_declared_one():
    source = "import os\nfrom . import sibling\nimport numpy.linalg\n\ndef f():\n    import yaml\n"
    assert imported_modules(source) == {"os", "numpy", "yaml"}
    assert undeclared_imports(source, {"numpy"}) == {"yaml"}
    assert undeclared_imports(source, {"numpy", "pyyaml"}) == set()
    assert undeclared_imports("import not_installed_anywhere_xyz\n", {"numpy"}) == {"not_installed_anywhere_xyz"}
    assert undeclared_imports("from tasks.data import features\nimport _common\n", set()) == set()


def test_requirement_names_reads_pep508_strings():
    assert requirement_names(["optuna>=4.9,<6", "psycopg2-binary>=2.9", "PyYAML", "scikit_learn >= 1.5"]) == {
        "optuna", "psycopg2-binary", "pyyaml", "scikit-learn",
    }


@pytest.mark.parametrize(
    ("dirs", "extras"), [(PACKAGES, ()), (TEST_DIRS, ("test",))], ids=["packages", "bench-and-tests"]
)
def test_every_imported_module_is_declared(dirs, extras):
    missing = undeclared_in(dirs, declared_distributions(*extras))
    assert not missing, "imported but not declared in pyproject.toml: " + "; ".join(
        f"{module} (in {', '.join(sorted(files))})" for module, files in sorted(missing.items())
    )
