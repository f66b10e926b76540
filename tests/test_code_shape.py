"""The library's shape: no function longer than 80 lines (ruff's C90 keeps each one's cyclomatic complexity at
most 12), and lm-eval imported only in ``lm_eval_swift/harness/``."""

from __future__ import annotations

import ast
from pathlib import Path


LIBRARY = Path(__file__).resolve().parents[1] / "lm_eval_swift"
MAX_LINES = 80


def long_functions() -> list[str]:
    out = []
    for path in sorted(LIBRARY.rglob("*.py")):
        where = path.relative_to(LIBRARY).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    out.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
    return out


def test_no_function_over_80_lines():
    assert long_functions() == []


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_lm_eval_is_imported_only_in_harness():
    outside = [
        path.relative_to(LIBRARY).as_posix()
        for path in sorted(LIBRARY.rglob("*.py"))
        if "harness" not in path.relative_to(LIBRARY).parts
        and any(
            m == "lm_eval" or m.startswith("lm_eval.") for m in imported_modules(path)
        )
    ]
    assert outside == []
