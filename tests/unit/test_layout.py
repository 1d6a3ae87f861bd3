"""The package stays readable in one sitting: no module over 450 lines, no function over 60;
a module's name and folder say what it is: one module per file name, Celery in tasks/ and
not in what a run does. (The direction of imports is checked by lint-imports, configured in
pyproject.toml.)"""

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


def imported(path: Path) -> set[str]:
    """The top-level packages a module imports (TYPE_CHECKING imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def folder(name: str) -> list[Path]:
    """The modules of one folder of the package that hold code (not an empty __init__.py)."""
    return [p for p in sorted((PACKAGE / name).rglob("*.py")) if ast.parse(p.read_text()).body]


CELERY = {"celery", "kombu"}


def test_every_module_of_tasks_is_on_the_celery_side() -> None:
    # tasks/ is "the Celery side only": a module there that needs no Celery belongs lower down.
    free = [str(p.relative_to(PACKAGE)) for p in folder("tasks") if not imported(p) & CELERY]
    assert free == []


def test_no_two_modules_share_a_file_name() -> None:
    # A name says where to look: two modules of one name make a reader open both.
    shared = {"__init__.py", "__main__.py"}
    seen: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if path.name not in shared and relative.parent.parts[-2:] != ("migrations", "versions"):
            seen.setdefault(path.name, []).append(str(relative))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}


def test_what_a_run_does_knows_no_celery() -> None:
    # The engine, the user's graphs, the saga decisions, the policies and the shared types
    # reach Celery only through the Dispatcher protocol (lint-imports checks the same).
    layers = ("engine", "graphs", "saga", "policies", "model")
    knowing = {
        str(p.relative_to(PACKAGE)): sorted(imported(p) & CELERY)
        for layer in layers
        for p in folder(layer)
        if imported(p) & CELERY
    }
    assert knowing == {}
