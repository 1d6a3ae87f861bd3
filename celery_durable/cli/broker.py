"""A cancel the broker could not hear of: committed all the same, said in one line.

Cancelling commits first, then asks the broker to revoke the run's tasks in flight. With the
broker down the engine logs a warning and goes on (those tasks stop when they find the run
cancelled); the command keeps that warning from the log and says it in its own words, with
what to check.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from celery_durable.cli.common import Obj
from celery_durable.engine import operations


@contextmanager
def unsent_revokes() -> Iterator[list[logging.LogRecord]]:
    """The revokes a cancel could not send (the broker is down), kept from the engine's
    warning instead of logged: the cancel is committed, and the command says so in a line
    of its own."""
    unsent: list[logging.LogRecord] = []

    def keep(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and "could not be revoked" in str(record.msg):
            unsent.append(record)
            return False
        return True

    log = logging.getLogger(operations.__name__)
    log.addFilter(keep)
    try:
        yield unsent
    finally:
        log.removeFilter(keep)


def not_told(obj: Obj, execution_id: str | None, unsent: list[logging.LogRecord]) -> str:
    """``ID: cancelled, but the broker could not be told ... Check ...``: one line."""
    first = unsent[0]
    args = first.args if isinstance(first.args, tuple) else ()
    cause = args[-1] if args else first.getMessage()
    broker = obj.durable.app.connection_for_write().as_uri()
    if execution_id is not None:
        what = f"{execution_id}: cancelled, but the broker could not be told to revoke its"
    else:
        what = f"{len(unsent)} runs cancelled, but the broker could not be told to revoke their"
    return (
        f"{what} tasks in flight ({cause}). Check that the broker at {broker} is up and "
        "reachable; those tasks stop on their own when they find the run cancelled."
    )
