"""Hooks for cross-cutting concerns (metrics, alerts, audit): no-ops unless overridden.

Subclass Hooks and pass an instance as ``Durable(app, hooks=...)``; the engine calls them
after the fact they describe is committed, never inside a transaction.

Hooks are guests: every hook method is isolated, so one that raises is logged and neither the
run nor the other hooks notice. Hooks chain: set ``inner`` and every event reaches this
object's method, then the same method of ``inner``, without the subclass forwarding anything
by hand (``metrics.instrument()`` chains the hooks a Durable already had this way).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from celery_durable.model.records import Commit
from celery_durable.status import Status

logger = logging.getLogger(__name__)


class Hooks:
    """Callbacks for metrics, alerts and audit; every method is a no-op until overridden."""

    inner: Hooks | None = None
    """Hooks called after these ones, with the same event."""

    def node_committed(self, graph: str, node: str, commit: Commit) -> None:
        """A node visit committed."""

    def checkpoint_written(self, graph: str, node: str, kind: str, seconds: float) -> None:
        """A checkpoint commit (kind: node, compensation, failure, ...) took ``seconds``."""

    def attempt_finished(self, graph: str, node: str, kind: str, seconds: float) -> None:
        """One attempt of a node or compensation (``kind``) ran for ``seconds``: the function,
        its commit and what it handed on, whether in a task of its own or inline."""

    def node_retrying(self, graph: str, node: str, error: BaseException, delay: float) -> None:
        """A node attempt failed and will run again after ``delay`` seconds."""

    def execution_finished(self, execution_id: str, graph: str, status: Status) -> None:
        """An execution reached a final status."""

    def intervention_required(self, execution_id: str, graph: str, step: str) -> None:
        """A compensation failed for good; the run waits for an operator."""

    def recovered(self, execution_id: str, node: str, reason: str) -> None:
        """The recovery sweep dispatched a node again (``reason``: 'due' or 'stale')."""

    def woke(self, graph: str, node: str, kind: str, lag: float) -> None:
        """A node runs again after a timer (``kind``: sleep, or event for a timeout) that came
        due ``lag`` seconds ago: the wake-up lag."""

    def node_held(self, graph: str, node: str, by: str) -> None:
        """Flow control held a node visit back (``by``: "breaker payments", "rate stripe")."""

    def execution_started(self, execution_id: str, graph: str, version: str | None) -> None:
        """A run was stored and its entry node sent (once per run id: a start repeated with
        the same id is not a new run)."""

    def node_failed(self, execution_id: str, graph: str, node: str, error: dict[str, Any]) -> None:
        """A node failed for good (its retries ran out, or its error is not retried), before
        what follows: the run fails, compensates or waits for an operator. ``error``: type,
        message, node and traceback."""

    def node_slow(self, execution_id: str, graph: str, node: str, seconds: float) -> None:
        """A node's function ran longer than ``slow_node_after``."""

    def execution_stuck(self, execution_id: str, graph: str, idle: float) -> None:
        """A run has made no commit for ``idle`` seconds, past ``stuck_after``; told once per
        run and version by each process that sweeps."""

    def recovery_lag(self, graph: str, node: str, seconds: float) -> None:
        """A visit whose attempt died (its worker lost) runs again, ``seconds`` after the run's
        last commit: how long the crash held the run up, at most."""

    def execution_deleted(self, execution_id: str, graph: str, status: Status) -> None:
        """An operator deleted a run (``status``: as it was just before), or it went with
        the run it is a child of; its rows are gone."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in EVENTS & cls.__dict__.keys():
            setattr(cls, name, _isolated(name, cls.__dict__[name]))


def _isolated(name: str, method: Callable[..., None]) -> Callable[..., None]:
    """The hook method, its exceptions logged, then the same event passed to ``inner``."""

    @functools.wraps(method)
    def call(self: Hooks, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception:
            logger.exception("hook %s.%s failed; the run goes on", type(self).__name__, name)
        if self.inner is not None:
            getattr(self.inner, name)(*args, **kwargs)

    return call


EVENTS = frozenset(name for name in vars(Hooks) if not name.startswith("_") and name != "inner")
for _name in EVENTS:
    setattr(Hooks, _name, _isolated(_name, vars(Hooks)[_name]))
