"""MkDocs hook: the reference pages' tables, written from the code at build time.

A page holds a marker, an HTML comment such as ``<!-- reference:settings -->``, and the hook
replaces it with what the code says now: the settings from ``Settings``' fields, the metrics
from the instruments and the database collector, the errors from ``celery_durable.errors``,
and the Python API's ``:::`` entries from the groups of ``celery_durable.__all__``. So the
reference cannot drift from the code, and a name added there shows up here by itself.
"""

from __future__ import annotations

import inspect
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"<!-- reference:(?P<name>[a-z-]+) -->")
# Classes whose methods come partly from bases of their own (Durable's operations on the
# database are in Maintenance and Lifecycle): shown with them.
INHERITED = {"Durable"}


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replaces each marker with its generated Markdown."""
    return MARKER.sub(lambda found: GENERATORS[found["name"]](), markdown)


def _cell(text: object) -> str:
    """One table cell (or list entry): one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def python_api() -> str:
    """A section per group of ``__all__`` (its comments), an entry per name."""
    source = (ROOT / "celery_durable" / "__init__.py").read_text()
    body = source.split("__all__ = [", 1)[1].split("\n]", 1)[0]
    lines: list[str] = []
    for raw in body.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            lines += ["", f"## {line.lstrip('# ').split(' (')[0]}", ""]
        elif line:
            name = line.rstrip(",").strip('"')
            lines.append(f"::: celery_durable.{name}")
            if name in INHERITED:
                lines += ["    options:", "      inherited_members: true"]
    return "\n".join(lines) + "\n"


def settings() -> str:
    from celery_durable.constants import DEFAULT_SQLITE_FILE, ENV_PREFIX
    from celery_durable.settings import Settings

    rows = [
        "| setting | environment variable | default | meaning |",
        "|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        if name == "database_url":
            default = f"`{DEFAULT_SQLITE_FILE}` in the working directory"
        elif field.default_factory is not None:
            default = "none"
        else:
            default = f"`{field.default}`" if field.default is not None else "none"
        rows.append(
            f"| `{name}` | `{ENV_PREFIX}{name.upper()}` | {_cell(default)} "
            f"| {_cell(field.description or '')} |"
        )
    return "\n".join(rows) + "\n"


def _families() -> Iterator[tuple[str, Any, tuple[str, ...]]]:
    """(where, family, labels) of every metric the exporter serves."""
    from prometheus_client import CollectorRegistry

    from celery_durable import Durable
    from celery_durable.metrics import DatabaseCollector, PrometheusHooks
    from celery_durable.metrics.instruments import COUNTERS, HISTOGRAMS, PREFIX
    from celery_durable.testing import embedded_app

    labels = {f"{PREFIX}_{spec[0]}": spec[2] for spec in [*COUNTERS.values(), *HISTOGRAMS.values()]}
    registry = CollectorRegistry()
    PrometheusHooks(registry)
    for family in registry.collect():
        yield "worker", family, labels[family.name]
    with tempfile.TemporaryDirectory() as folder:
        durable = Durable(embedded_app("docs-metrics"), f"sqlite:///{folder}/metrics.sqlite3")
        durable.migrate()
        try:
            for family in DatabaseCollector(durable, stuck_after=60).collect():
                yield "database", family, tuple(getattr(family, "_labelnames", ()))
        finally:
            durable.db.dispose()


def metrics() -> str:
    suffix = {"counter": "_total", "histogram": "", "gauge": ""}
    rows = ["| metric | type | labels | from | meaning |", "|---|---|---|---|---|"]
    for where, family, labels in sorted(_families(), key=lambda f: (f[0] != "database", f[1].name)):
        shown = ", ".join(f"`{label}`" for label in labels) or "-"
        origin = "a scrape of the database" if where == "database" else "worker processes"
        rows.append(
            f"| `{family.name}{suffix[family.type]}` | {family.type} | {shown} | {origin} "
            f"| {_cell(family.documentation)} |"
        )
    return "\n".join(rows) + "\n"


def errors() -> str:
    import celery_durable
    from celery_durable import errors as module

    classes = [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__ and issubclass(cls, module.DurableError)
    ]
    line = {cls: inspect.getsourcelines(cls)[1] for cls in classes}
    children: dict[type, list[type]] = {}
    for cls in sorted(classes, key=line.__getitem__):
        if cls is not module.DurableError:
            base = next(b for b in cls.__mro__[1:] if b in line)
            children.setdefault(base, []).append(cls)
    lines: list[str] = []

    def walk(cls: type, depth: int) -> None:
        entry = f"- **`{cls.__name__}`**"
        if cls.__name__ in celery_durable.__all__:
            entry += f" (`from celery_durable import {cls.__name__}`)"
        also = [b.__name__ for b in cls.__bases__ if b not in line and b is not Exception]
        if also:
            entry += f", also a `{also[0]}`"
        if doc := _cell(inspect.cleandoc(cls.__doc__ or "")):
            entry += f": {doc}"
        lines.append("    " * depth + entry)
        for child in children.get(cls, []):
            walk(child, depth + 1)

    walk(module.DurableError, 0)
    return "\n".join(lines) + "\n"


GENERATORS: dict[str, Callable[[], str]] = {
    "python-api": python_api,
    "settings": settings,
    "metrics": metrics,
    "errors": errors,
}
