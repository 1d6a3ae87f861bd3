"""A Celery task per node and per compensation, and the body that runs their messages.

Every durable task is acks late, requeued if its worker dies, JSON only: the broker holds a
visit's message until the visit committed. A body runs the message's visit, then the visits
it hands on inline, each timed and, when inline, reported as task events of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.app.defaults import DEFAULTS as CELERY_DEFAULTS
from celery.exceptions import Retry
from sqlalchemy.exc import InterfaceError, OperationalError

from celery_durable import logs, tracing
from celery_durable.constants import PRUNE_TASK, RECOVERY_TASK
from celery_durable.engine import quarantine
from celery_durable.engine.attempt import Attempt, Outcome
from celery_durable.engine.compensation_run import CompensationRun
from celery_durable.engine.node_run import NodeRun
from celery_durable.engine.runtime import Runtime
from celery_durable.errors import CheckpointCorrupted, UnsafeSerializer
from celery_durable.faults import SimulatedCrash
from celery_durable.graphs.builder import Node
from celery_durable.model.records import Kind
from celery_durable.tasks.forwarding import Delivery, elsewhere
from celery_durable.tasks.inline_events import InlineEvents
from celery_durable.tasks.message import Message

logger = logging.getLogger(__name__)

JSON_TYPES = {"json", "application/json"}
# Outcomes of an attempt that failed for good: the task reports FAILURE.
FAILURES = frozenset({Outcome.FAILED, Outcome.NEEDS_INTERVENTION})
DB_RETRY_MAX_DELAY = 30.0


class NodeTasks:
    """Registers the tasks of nodes and compensations on one app, for one runtime."""

    def __init__(self, app: Celery, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime
        self.events = InlineEvents(app)
        self._names: set[str] = set()

    def register(self, node: Node[..., Any]) -> None:
        body = self._body(NodeRun, node)
        body.__name__ = body.__qualname__ = node.name
        body.__doc__ = node.fn.__doc__
        self._register(node.task_name, body)

    def register_compensation(self, node: Node[..., Any]) -> None:
        body = self._body(CompensationRun, node)
        body.__name__ = body.__qualname__ = f"{node.name}_compensate"
        self._register(node.compensation_task_name, body)

    def register_maintenance(
        self, recover: Callable[[], dict[str, int]], prune: Callable[[], dict[str, int]]
    ) -> None:
        """durable.recover and durable.prune as tasks, on beat's schedule unless the app has
        entries of those names."""

        # Plain functions, not bound methods or lambdas with arguments: Celery derives a
        # task's call signature from its function, and beat's apply_async() checks it.
        def recover_task() -> dict[str, int]:
            return recover()

        def prune_task() -> dict[str, int]:
            return prune()

        self.app.task(name=RECOVERY_TASK, shared=False, ignore_result=True)(recover_task)
        self.app.task(name=PRUNE_TASK, shared=False, ignore_result=True)(prune_task)
        schedule = self.app.conf.beat_schedule
        schedule.setdefault(RECOVERY_TASK, {"task": RECOVERY_TASK, "schedule": 60.0})
        schedule.setdefault(PRUNE_TASK, {"task": PRUNE_TASK, "schedule": 3600.0})

    def _body(
        self, kind: type[NodeRun] | type[CompensationRun], node: Node[..., Any]
    ) -> Callable[..., str]:
        graph, name, graphs = node.graph.name, node.name, self.runtime.graphs

        def body(task: Any, execution_id: str, visit: int, **kwargs: Any) -> str:
            message = Message.read(execution_id, visit, kwargs, self.runtime.store.sealer)
            definition = graphs.at(graph, message.base.cursor.graph_version)
            if definition is None:
                came = Delivery.of(task.request)
                return elsewhere(self.app, self.runtime, came, graph, name, message)
            delivery = task.request.delivery_info or {}
            first: Attempt = kind(
                self.runtime,
                definition,
                name,
                execution_id,
                visit,
                message.base,
                attempt=message.attempt,
                # A copy the recovery sweep sent gets the checks of a redelivered one: its
                # visit may have committed, be poison, or be leased by a live attempt.
                redelivered=message.recovered or bool(delivery.get("redelivered")),
                passed=message.passed,
            )
            run: Attempt | None = first
            outcome = own = Outcome.DROPPED
            while run is not None:
                try:
                    outcome = self._run_one(run, task.request)
                    own = outcome if run is first else own
                except (OperationalError, InterfaceError) as exc:
                    return self._database_down(task, run, exc)
                except CheckpointCorrupted as damage:
                    quarantine.set_aside(self.runtime, damage)
                    return "set aside"
                except SimulatedCrash as crash:
                    # An armed fault (faults.crash_at): end here, as a dead process would.
                    logger.warning("simulated crash at %s", crash)
                    return "crashed"
                run = run.successor if isinstance(run, NodeRun) else None
            return _reported(first, own)

        return body

    def _database_down(
        self, task: Any, run: Attempt, exc: OperationalError | InterfaceError
    ) -> str:
        """Publish this visit again, later. Nothing committed is lost, and a visit that did
        commit is replayed, not committed twice."""
        delay = min(2.0**task.request.retries, DB_RETRY_MAX_DELAY)
        logger.warning(
            "database unavailable (%s: %s); %s.%s visit %d again in %.0fs",
            type(exc.orig).__name__,
            str(exc.orig).strip(),
            run.graph.name,
            run.name,
            run.visit,
            delay,
        )
        if isinstance(run, NodeRun) and run.depth > 0:
            # Ran inline: the message is the first node's, which did commit.
            run.redispatch(run.attempt, delay, recovered=True)
            return str(Outcome.DEFERRED)
        # The copy gets a redelivered message's checks: the commit may have landed.
        again = {**task.request.kwargs, "recovered": True}
        raise task.retry(exc=exc, countdown=delay, max_retries=None, kwargs=again) from exc

    def _run_one(self, run: Attempt, request: Any) -> Outcome:
        """Execute one attempt and time it; an inline one also reports itself as task events."""
        inline = isinstance(run, NodeRun) and run.depth > 0
        if inline:
            self.events.started(run, request)
        outcome: Outcome | None = None
        error: BaseException | None = None
        started = time.perf_counter()
        attributes = _span_attributes(run)
        with (
            tracing.attempt(run.base.cursor.trace, _span_name(run), attributes) as span,
            logs.bound(
                execution_id=run.execution_id,
                graph=run.graph.name,
                node=run.name,
                visit=run.visit,
                attempt=run.attempt,
            ),
        ):
            try:
                outcome = run.execute()
            except BaseException as exc:
                error = exc
                raise
            finally:
                took = time.perf_counter() - started
                self.runtime.hooks.attempt_finished(run.graph.name, run.name, run.kind, took)
                if inline:
                    self.events.finished(run, request, took, outcome, error)
            span.set(outcome=str(outcome))
            if run.failed is not None:
                span.failed(run.failed)
        return outcome

    def _register(self, name: str, fn: Callable[..., str]) -> None:
        # Versions of one graph share their nodes' tasks: the body finds the run's version.
        if name in self._names:
            return
        self._names.add(name)
        # No Celery time limit: node timeouts are the engine's (engine/deadline.py), per node,
        # so that a timed node can run inline after another.
        self.app.task(
            name=name,
            bind=True,
            shared=False,
            acks_late=True,
            reject_on_worker_lost=True,
            serializer="json",
            ignore_result=True,
            typing=False,
            # A failed attempt's exception is raised for Flower after the engine recorded it:
            # its message is done with, whatever the app's default.
            acks_on_failure_or_timeout=True,
        )(fn)


def _span_name(run: Attempt) -> str:
    what = "compensate" if run.kind == Kind.COMPENSATION else "node"
    return f"durable.{what} {run.graph.name}.{run.name}"


def _span_attributes(run: Attempt) -> dict[str, str | int | None]:
    cursor = run.base.cursor
    return {
        "execution_id": run.execution_id,
        "graph": run.graph.name,
        "node": run.name,
        "visit": run.visit,
        "attempt": run.attempt,
        "version": cursor.graph_version,
    }


def _reported(run: Attempt, outcome: Outcome) -> str:
    """The task's own outcome, as Celery and Flower show it: the message's visit, not the
    nodes it ran inline after it (those send task events of their own). A failed attempt
    raises its exception (FAILURE, with its traceback), a retried one Retry (RETRY): both
    after the engine recorded them, and the message is acknowledged either way."""
    if run.failed is not None and outcome == Outcome.RETRYING:
        raise Retry(f"attempt {run.attempt} failed", exc=run.failed, when=run.retry_in)
    if run.failed is not None and outcome in FAILURES:
        raise run.failed
    return str(outcome)


def require_json(app: Celery) -> None:
    """Refuse an app that would send or accept anything but JSON, then pin JSON."""
    conf = app.conf
    for setting in ("task_serializer", "result_serializer"):
        value = conf.get(setting)
        if value not in (None, *JSON_TYPES):
            raise UnsafeSerializer(setting, value)
    for setting in ("accept_content", "result_accept_content"):
        value = conf.get(setting)
        if value is not None and set(value) - JSON_TYPES:
            raise UnsafeSerializer(setting, list(value))
    conf.task_serializer = "json"
    conf.result_serializer = "json"
    conf.accept_content = ["json"]


def keep_consuming_after_channel_errors(app: Celery) -> None:
    """Keep a worker consuming, and its long nodes running, when RabbitMQ times a delivery out.

    RabbitMQ closes a consumer's channel with PRECONDITION_FAILED when a delivery stays unacked
    past its ``consumer_timeout`` (a node, or the nodes a message runs inline, running longer),
    and requeues the delivery. Celery counts a channel error as recoverable only with
    ``broker_channel_error_retry`` (default False): without it the worker logs "Unrecoverable
    error" and shuts down once its running tasks end, and nothing consumes the run again.
    With it the consumer reconnects; the requeued copy replays what committed or steps aside
    for the attempt still running (its lease), which commits and hands on as usual. That
    attempt must not be killed at the reconnect, which is what
    ``worker_cancel_long_running_tasks_on_connection_loss`` (True by default from Celery 6)
    does: the node would then never outlive the timeout. A value other than Celery's default
    is the app's choice and is kept.
    """
    conf = app.conf
    for setting, ours in (
        ("broker_channel_error_retry", True),
        ("worker_cancel_long_running_tasks_on_connection_loss", False),
    ):
        if conf.get(setting) == CELERY_DEFAULTS[setting]:
            conf[setting] = ours
