"""Run-scoped logs: every record about a run carries the run's coordinates as attributes.

The engine binds a node attempt's coordinates for as long as the attempt runs::

    with bound(execution_id=run.id, graph="order", node="charge", visit=1, attempt=2):
        ...  # every log record made here, by any logger, knows the run

``RunContext``, a ``logging.Filter`` on the handlers, copies them onto each record as the
attributes ``execution_id``, ``graph``, ``node``, ``visit`` and ``attempt`` (None outside a
binding), so a text format can say ``%(execution_id)s`` and ``JSONFormatter`` prints them as
fields a log pipeline filters on. The binding lives in a ``contextvars.ContextVar``: threads
and asyncio tasks each see their own, and it costs two ContextVar calls per attempt.

``configure(json=...)`` installs both on the root logger's handlers; a worker does it when
Celery has set up its logging (the ``after_setup_logger`` signals), a command line at start,
both when the ``log_format`` setting (``CELERY_DURABLE_LOG_FORMAT=json``) asks for JSON.

Only the standard library: the engine imports this on its hot path.
"""

from __future__ import annotations

import json as _json
import logging
import sys
from collections.abc import Iterable
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final

FIELDS: Final = ("execution_id", "graph", "node", "visit", "attempt")
"""The record attributes RunContext sets, in the order JSONFormatter prints them."""

_Values = tuple[str | None, str | None, str | None, int | None, int | None]
_UNBOUND: Final[_Values] = (None, None, None, None, None)
_current: ContextVar[_Values] = ContextVar("celery_durable_run", default=_UNBOUND)


class bound:
    """Bind a run's coordinates to every log record made until the block exits.

    A field not given is None inside the block, whatever an enclosing binding said: a child
    run started from a node must not inherit its parent's node. A class rather than a
    generator-based context manager because it wraps every node attempt.
    """

    __slots__ = ("_token", "_values")

    def __init__(
        self,
        *,
        execution_id: str | None = None,
        graph: str | None = None,
        node: str | None = None,
        visit: int | None = None,
        attempt: int | None = None,
    ) -> None:
        self._values: _Values = (execution_id, graph, node, visit, attempt)
        self._token: Token[_Values] | None = None

    def __enter__(self) -> None:
        self._token = _current.set(self._values)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None


def current() -> dict[str, Any]:
    """The fields bound here and now (the empty dict outside any binding)."""
    return {k: v for k, v in zip(FIELDS, _current.get(), strict=True) if v is not None}


class RunContext(logging.Filter):
    """Copies the bound run coordinates onto each record it sees; never drops a record.

    Put it on handlers, not loggers: a logger's filters skip records its children propagate.
    A value the caller passed with ``extra=`` wins over the binding.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        attributes = record.__dict__
        for name, value in zip(FIELDS, _current.get(), strict=True):
            attributes.setdefault(name, value)
        return True


# Attributes every LogRecord has; whatever else a record carries came from ``extra=``.
_STANDARD: Final = frozenset(
    {*logging.LogRecord("", 0, "", 0, "", None, None).__dict__, "message", "asctime", *FIELDS}
)


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
    ``message``, the run fields that are set, ``exception`` and ``stack`` when present, then
    every ``extra=`` field (values JSON cannot encode are given as their ``repr``)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            # Cached on the record like logging.Formatter does, for the other handlers.
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in line:
                line[key] = value
        return _json.dumps(line, default=repr, ensure_ascii=False)


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


def configure(*, json: bool, loggers: Iterable[logging.Logger] = ()) -> None:
    """Give every handler of the root logger (and of ``loggers``) the run fields, and with
    ``json`` the JSON formatter. Safe to call again: nothing is installed twice.

    With ``json`` and no handler on the root logger (a command line that set up no logging),
    adds one writing to stderr, so its warnings come out as JSON too.
    """
    root = logging.getLogger()
    if json and not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for logger in (root, *loggers):
        for handler in logger.handlers:
            if not any(isinstance(f, RunContext) for f in handler.filters):
                handler.addFilter(RunContext())
            if json and not isinstance(handler.formatter, JSONFormatter):
                handler.setFormatter(JSONFormatter())
