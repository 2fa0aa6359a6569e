"""The layering docs/architecture.md describes, checked so that it stays true."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from stsync_daemon.store.sql import SQL_FILES, load

PACKAGE = Path(__file__).resolve().parent.parent / "stsync_daemon"
_DB_CALLS = {"fetch", "fetchrow", "fetchval", "execute", "executemany", "copy_records_to_table"}
# Statements as the project writes them: upper-case keywords (prose and help text are not SQL).
_SQL_TEXT = re.compile(
    r"^\s*(SELECT\s|INSERT\s+INTO|UPDATE\s+\S+\s+SET|DELETE\s+FROM|CREATE\s+[A-Z]|ALTER\s|"
    r"ROLLBACK\b|WITH\s+\w+\s+AS)"
)


def _modules(*parts: str) -> list[Path]:
    return sorted(PACKAGE.joinpath(*parts).rglob("*.py"))


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            found.append("." * node.level + node.module)
    return found


@pytest.mark.parametrize(
    "path",
    [p for p in _modules() if "store" not in p.parts and "sandbox" not in p.parts],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_no_sql_outside_the_store(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            assert node.func.attr not in _DB_CALLS, f"line {node.lineno} calls the database"
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert not _SQL_TEXT.match(node.value), f"line {node.lineno} holds SQL"


def test_daemon_imports_control_only_in_the_app() -> None:
    offenders = [p.name for p in _modules("daemon") if any("control" in m for m in _imports(p))]
    assert offenders == ["app.py"]


def test_control_and_store_import_no_daemon_module() -> None:
    for path in _modules("control") + _modules("store"):
        assert not any(m.startswith("..daemon") for m in _imports(path)), path.name


def test_every_sql_block_is_described() -> None:
    for filename in SQL_FILES:
        assert load(filename), filename  # load() refuses a block without its description
