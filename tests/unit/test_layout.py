"""The code's shape, checked: imports sit at the top of a module (a function-level import hides a
cycle from import-linter's layers), and no module outgrows one reader's sitting."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ["leasenet", "registry", "consumer_host", "producer_host", "mapping", "wire", "examples"]
GENERATED = REPO / "wire" / "v1"
# optional dependencies: importing them is the test of whether they are installed
OPTIONAL = {"uvloop"}
MAX_LINES = 600


def project_modules() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))
            if GENERATED not in p.parents and "_pb2" not in p.name]  # protoc's output (wire/v1, examples/*)


def imported_names(node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.ImportFrom):
        return {(node.module or "").split(".")[0]}
    return {alias.name.split(".")[0] for alias in node.names}


def test_no_module_imports_inside_a_function() -> None:
    hidden = []
    for path in project_modules():
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and not imported_names(node) <= OPTIONAL:
                        hidden.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    assert not hidden, "imports inside functions:\n" + "\n".join(hidden)


def test_no_module_is_longer_than_600_lines() -> None:
    long = {str(p.relative_to(REPO)): n for p in project_modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
