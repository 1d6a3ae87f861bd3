"""The one way a commit survives a concurrent change: when the run moved on under it (a sibling
branch committed, an operator patched or rewound it), build it again on the row as it is now.

Every writer of the execution row (a node visit, a sub-step or wait, a wake, an operator's
change) goes through ``until_committed``; what "build again" means is the caller's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from celery_durable.errors import VersionConflict
from celery_durable.model.records import ExecutionRecord

T = TypeVar("T")
# Past this many conflicts in a row something is wrong: the run changes faster than it commits.
MAX_COMMIT_TRIES = 50


def until_committed(execution_id: str, attempt: Callable[[VersionConflict | None], T]) -> T:
    """``attempt(conflict)`` until it does not raise VersionConflict. ``conflict`` is None the
    first time (build on what you have), then the conflict that refused the last try: rebase
    on ``conflict.current``, the row as the store found it (None: read it)."""
    conflict: VersionConflict | None = None
    for _ in range(MAX_COMMIT_TRIES):
        try:
            return attempt(conflict)
        except VersionConflict as refused:
            conflict = refused
    raise VersionConflict(execution_id, -1)


def current_row(
    conflict: VersionConflict | None, read: Callable[[], ExecutionRecord]
) -> ExecutionRecord:
    """The row to build on: the one a conflict found, else read now."""
    if conflict is not None and isinstance(conflict.current, ExecutionRecord):
        return conflict.current
    return read()
