"""Graph definition: nodes, edges, branches, joins, and their checks.

Everything a definition can get wrong is checked as it is written (duplicate names, unknown
nodes in edges, bad options) or, for what needs the whole graph (an entry, reachability), by
validate(), which runs on the first start and when a worker boots.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, Literal, ParamSpec, Protocol, TypeVar, overload

from pydantic import BaseModel

from celery_durable.constants import TASK_PREFIX
from celery_durable.engine.execution import Execution
from celery_durable.engine.state import reducers
from celery_durable.errors import (
    DuplicateNode,
    GraphDefinitionError,
    InvalidNodeOption,
    NoEntry,
    UnknownNode,
    UnreachableNode,
)
from celery_durable.graphs.options import arity, check_options
from celery_durable.policies.limits import Limit, RateLimit
from celery_durable.policies.retry import RetryPolicy
from celery_durable.saga.shape import Router

P = ParamSpec("P")
R = TypeVar("R")
OnFailure = Literal["fail", "compensate", "intervene"]
DEFAULT_MAX_VISITS = 1000
# While a node's breaker is open: wait in the database, or fail the attempt with CircuitOpen.
WhenOpen = Literal["wait", "fail"]
DEFAULT_COMPENSATION_RETRY = RetryPolicy(
    max_attempts=10, initial_delay=1.0, backoff=2.0, max_delay=60.0, jitter=True
)


class Owner(Protocol):
    """What a graph asks of the Durable it belongs to: a task for each node as it is
    declared, and starting runs. (Durable has these; nothing here imports it.)"""

    def register(self, node: Node[..., Any]) -> None: ...

    def register_compensation(self, node: Node[..., Any]) -> None: ...

    def start(
        self,
        graph: Graph,
        input: dict[str, Any],
        *,
        execution_id: str | None = None,
        countdown: float | None = None,
        queue: str | None = None,
        priority: int | None = None,
    ) -> Execution: ...


class Node(Generic[P, R]):
    """A node: the user's function plus how it runs. Calling it calls the function."""

    def __init__(
        self,
        graph: Graph,
        fn: Callable[P, R],
        name: str,
        retry: RetryPolicy,
        timeout: float | None,
        queue: str | None,
        *,
        interrupt_before: bool = False,
        interrupt_after: bool = False,
    ) -> None:
        self.graph = graph
        self.fn = fn
        self.name = name
        self.retry = retry
        self.timeout = timeout
        self.queue = queue
        # Human approval: the run waits before this node runs, or before what follows it.
        self.interrupt_before = interrupt_before
        self.interrupt_after = interrupt_after
        self.task_name = f"{graph.task_prefix}.{name}"
        self.wants_context = arity(fn, name) == 2
        self.compensator: Callable[..., Any] | None = None
        self.compensator_wants_context = False
        self.compensation_retry = DEFAULT_COMPENSATION_RETRY
        # Flow control (engine/flow.py): a shared circuit breaker, a fleet-wide rate limit.
        self.breaker: str | None = None
        self.when_open: WhenOpen = "wait"
        self.rate: RateLimit | None = None
        self.concurrency: Limit | None = None
        # Visits of this node in one run before the run fails: a runaway loop's end.
        self.max_visits = DEFAULT_MAX_VISITS
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    @property
    def compensation_task_name(self) -> str:
        return f"{self.task_name}.compensate"

    def compensation(
        self, fn: Callable[..., Any] | None = None, *, retry: RetryPolicy | None = None
    ) -> Any:
        """Decorator: the function that undoes this node, ``fn(state, ctx)``.

        It receives the state as it was when this node committed. Its default RetryPolicy
        retries for a long time with exponential backoff: an undo should not give up easily.
        """

        def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
            if self.compensator is not None:
                raise GraphDefinitionError(
                    f"Node {self.graph.name}.{self.name} already has a compensation."
                )
            self.compensator_wants_context = arity(func, f"{self.name}.compensation") == 2
            if retry is not None:
                self.compensation_retry = retry
            self.compensator = func
            self.graph.owner.register_compensation(self)
            return func

        return decorate(fn) if fn is not None else decorate

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Node {self.graph.name}.{self.name}>"


class Graph:
    """A durable workflow: nodes are Celery tasks, each commit a checkpoint."""

    def __init__(
        self,
        owner: Owner,
        name: str,
        state: type[BaseModel],
        on_failure: OnFailure = "fail",
        concurrency: Limit | None = None,
    ) -> None:
        if not (isinstance(state, type) and issubclass(state, BaseModel)):
            raise GraphDefinitionError(
                f"Graph {name!r}: state= must be a pydantic BaseModel subclass, got {state!r}."
            )
        if on_failure not in ("fail", "compensate", "intervene"):
            raise GraphDefinitionError(
                f"Graph {name!r}: on_failure must be 'fail', 'compensate' or 'intervene', got "
                f"{on_failure!r}."
            )
        self.owner = owner
        self.name = name
        self.state = state
        self.on_failure: OnFailure = on_failure
        if concurrency is not None and not isinstance(concurrency, Limit):
            raise GraphDefinitionError(
                f"Graph {name!r}: concurrency= takes a Limit(key=..., max=...)."
            )
        # Running executions per key (engine/slots.py): taken at the entry node, held to the end.
        self.concurrency = concurrency
        self.task_prefix = f"{TASK_PREFIX}.{name}"
        self.nodes: dict[str, Node[..., Any]] = {}
        self.edges: dict[str, list[str]] = {}
        self.joins: dict[str, frozenset[str]] = {}
        self.branches: dict[str, tuple[Router, tuple[str, ...] | None]] = {}
        self.entry_node: str | None = None
        self.reducers = reducers(state)
        self.upgrader: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self._fingerprint: str | None = None

    # -- definition -------------------------------------------------------------------------

    @overload
    def node(self, fn: Callable[P, R], /) -> Node[P, R]: ...

    @overload
    def node(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        queue: str | None = None,
        compensate: Callable[..., Any] | None = None,
        compensation_retry: RetryPolicy | None = None,
        interrupt_before: bool = False,
        interrupt_after: bool = False,
        breaker: str | None = None,
        when_open: WhenOpen = "wait",
        rate: RateLimit | None = None,
        concurrency: Limit | None = None,
        max_visits: int = DEFAULT_MAX_VISITS,
        **unknown: Any,
    ) -> Callable[[Callable[P, R]], Node[P, R]]: ...

    def node(
        self,
        fn: Callable[P, R] | None = None,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        queue: str | None = None,
        compensate: Callable[..., Any] | None = None,
        compensation_retry: RetryPolicy | None = None,
        interrupt_before: bool = False,
        interrupt_after: bool = False,
        breaker: str | None = None,
        when_open: WhenOpen = "wait",
        rate: RateLimit | None = None,
        concurrency: Limit | None = None,
        max_visits: int = DEFAULT_MAX_VISITS,
        **unknown: Any,
    ) -> Any:
        """Decorator: ``@graph.node`` or ``@graph.node(retry=..., timeout=..., queue=...)``."""
        if unknown:
            raise InvalidNodeOption(
                f"Graph {self.name!r}: unknown node option(s) {', '.join(sorted(unknown))}; "
                "use retry=, timeout=, queue=, compensate=, compensation_retry=, "
                "interrupt_before=, interrupt_after=, breaker=, when_open=, rate=, concurrency=, "
                "max_visits= or name=."
            )
        for option, value in (("retry", retry), ("compensation_retry", compensation_retry)):
            if value is not None and not isinstance(value, RetryPolicy):
                raise InvalidNodeOption(f"Graph {self.name!r}: {option}= takes a RetryPolicy.")
        if timeout is not None and not timeout > 0:
            raise InvalidNodeOption(f"Graph {self.name!r}: timeout= must be a positive number.")
        check_options(self.name, breaker, when_open, rate, concurrency, max_visits)

        def decorate(func: Callable[P, R]) -> Node[P, R]:
            node_name = name or func.__name__
            if node_name in self.nodes:
                raise DuplicateNode(self.name, node_name)
            node = Node(
                self,
                func,
                node_name,
                retry or RetryPolicy(),
                timeout,
                queue,
                interrupt_before=bool(interrupt_before),
                interrupt_after=bool(interrupt_after),
            )
            node.breaker, node.when_open, node.rate = breaker, when_open, rate
            node.concurrency, node.max_visits = concurrency, max_visits
            self.nodes[node_name] = node
            self._fingerprint = None
            self.owner.register(node)
            if compensate is not None:
                node.compensation(compensate, retry=compensation_retry)
            self._added(node)
            return node

        return decorate(fn) if fn is not None else decorate

    def upgrade(self, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[..., Any]:
        """Decorator: ``fn(old_state_dict) -> new_state_dict``, applied to a stored state that
        no longer fits the state model (engine.state.fit), so runs in flight survive a deploy
        that changed it."""
        if self.upgrader is not None:
            raise GraphDefinitionError(f"Graph {self.name!r} already has an upgrade hook.")
        if not callable(fn):
            raise GraphDefinitionError(f"Graph {self.name!r}: upgrade takes a function.")
        self.upgrader = fn
        return fn

    def _added(self, node: Node[..., Any]) -> None:
        """A subclass hook: sagas chain their steps here."""

    def entry(self, node: str | Node[..., Any]) -> None:
        self.entry_node = self._known(node)
        self._fingerprint = None

    def edge(
        self,
        source: str | Node[..., Any] | Sequence[str | Node[..., Any]],
        target: str | Node[..., Any] | Sequence[str | Node[..., Any]],
    ) -> None:
        """``edge(a, b)``; fan-out ``edge(a, [b, c])``; join ``edge([b, c], d)``."""
        sources = self._many(source)
        targets = self._many(target)
        if len(sources) > 1:
            if len(targets) != 1:
                raise GraphDefinitionError(
                    f"Graph {self.name!r}: a join goes from several nodes into exactly one."
                )
            join = targets[0]
            self.joins[join] = self.joins.get(join, frozenset()) | frozenset(sources)
        for src in sources:
            for dst in targets:
                if dst not in self.edges.setdefault(src, []):
                    self.edges[src].append(dst)
        self._fingerprint = None

    def branch(
        self,
        source: str | Node[..., Any],
        router: Router,
        paths: Iterable[str | Node[..., Any]] | None = None,
    ) -> None:
        """After ``source`` commits, ``router(state)`` names the next node(s), or None to end.

        ``paths`` lists the nodes it may return; without it any node counts as reachable.
        """
        src = self._known(source)
        if src in self.branches:
            raise GraphDefinitionError(f"Graph {self.name!r}: node {src!r} already has a branch.")
        if not callable(router):
            raise GraphDefinitionError(f"Graph {self.name!r}: branch router must be callable.")
        known = tuple(self._known(p) for p in paths) if paths is not None else None
        self.branches[src] = (router, known)
        self._fingerprint = None

    # -- checks -----------------------------------------------------------------------------

    def validate(self) -> str:
        """Check the whole graph; returns its fingerprint (recorded on every execution)."""
        if self._fingerprint is not None:
            return self._fingerprint
        if not self.nodes:
            raise GraphDefinitionError(f"Graph {self.name!r} has no nodes.")
        if self.entry_node is None:
            raise NoEntry(self.name)
        unreachable = sorted(set(self.nodes) - self._reachable(self.entry_node))
        if unreachable:
            raise UnreachableNode(self.name, unreachable)
        self._fingerprint = self._compute_fingerprint()
        return self._fingerprint

    def _reachable(self, start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            todo.extend(self.edges.get(name, ()))
            if name in self.branches:
                paths = self.branches[name][1]
                todo.extend(self.nodes if paths is None else paths)
        return seen

    def _compute_fingerprint(self) -> str:
        shape = {
            "entry": self.entry_node,
            "nodes": sorted(self.nodes),
            "edges": {k: sorted(v) for k, v in sorted(self.edges.items())},
            "joins": {k: sorted(v) for k, v in sorted(self.joins.items())},
            "branches": {k: sorted(v[1] or ["*"]) for k, v in sorted(self.branches.items())},
            "on_failure": self.on_failure,
        }
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()

    def _known(self, node: str | Node[..., Any]) -> str:
        name = node.name if isinstance(node, Node) else node
        if name not in self.nodes:
            raise UnknownNode(self.name, str(name), sorted(self.nodes))
        return name

    def _many(self, nodes: str | Node[..., Any] | Sequence[str | Node[..., Any]]) -> list[str]:
        if isinstance(nodes, str | Node):
            return [self._known(nodes)]
        return [self._known(n) for n in nodes]

    # -- starting runs ----------------------------------------------------------------------

    def delay(self, **input: Any) -> Execution:
        """Start a run with ``input`` as the initial state; returns its Execution."""
        return self.apply_async(kwargs=input)

    def apply_async(
        self,
        kwargs: dict[str, Any] | None = None,
        *,
        execution_id: str | None = None,
        countdown: float | None = None,
        queue: str | None = None,
        priority: int | None = None,
    ) -> Execution:
        """Start a run. The same ``execution_id`` twice gives one execution. ``priority``
        (0-9, higher first) goes with every node message of the run."""
        return self.owner.start(
            self,
            kwargs or {},
            execution_id=execution_id,
            countdown=countdown,
            queue=queue,
            priority=priority,
        )

    def __repr__(self) -> str:
        return f"<Graph {self.name} nodes={list(self.nodes)}>"


class Saga(Graph):
    """A graph whose steps run in declaration order and are undone, newest first, when one
    fails for good or when someone asks. ``@saga.step`` adds a step after the last one;
    ``@step.compensation`` says how to undo it."""

    def __init__(
        self, owner: Owner, name: str, state: type[BaseModel], concurrency: Limit | None = None
    ) -> None:
        super().__init__(owner, name, state, on_failure="compensate", concurrency=concurrency)
        self._last: str | None = None

    # A step is a node; what makes it a step is _added() chaining it after the last one.
    step = Graph.node

    def _added(self, node: Node[..., Any]) -> None:
        if self._last is None:
            self.entry(node)
        else:
            self.edge(self._last, node)
        self._last = node.name
