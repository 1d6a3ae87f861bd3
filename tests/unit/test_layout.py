"""The package stays readable in one sitting: no module over 450 lines, no function over 60.
(The direction of imports is checked by lint-imports, configured in pyproject.toml.)"""

from __future__ import annotations

import ast
from pathlib import Path

import celery_durable

PACKAGE = Path(celery_durable.__file__).parent
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


# The catalogue of errors, one short class per thing that can go wrong, is read by lookup.
CATALOGUES = {"errors.py"}


def test_no_module_is_over_450_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
        and str(p.relative_to(PACKAGE)) not in CATALOGUES
    }
    assert long == {}


def test_no_function_is_over_60_lines() -> None:
    long = {}
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(PACKAGE)}:{node.name}"] = lines
    assert long == {}
