"""The graph builder users write with: nodes, edges, branches, joins, and their checks.

Everything a graph can get wrong is checked as it is written (duplicate names, unknown nodes
in edges, bad options) or, for what needs the whole graph (an entry, reachability), when its
definition is taken: on the first start, and when a worker boots. The engine reads that
definition (``engine/definition.py``, frozen), never this builder: ``Definitions`` is the
runtime's live view of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, Unpack, overload

from pydantic import BaseModel

from celery_durable.constants import TASK_PREFIX
from celery_durable.engine.definition import (
    Catalog,
    GraphDefinition,
    NodeDefinition,
    OnFailure,
)
from celery_durable.engine.execution import Execution
from celery_durable.engine.start import StartKeywords
from celery_durable.engine.state import reducers
from celery_durable.errors import (
    DuplicateNode,
    GraphDefinitionError,
    NoEntry,
    UnknownNode,
    UnreachableNode,
)
from celery_durable.graphs.options import (
    NodeOptions,
    arity,
    check_graph,
    check_options,
    check_undo_loops,
    node_definition,
)
from celery_durable.policies.limits import Limit
from celery_durable.policies.retry import RetryPolicy
from celery_durable.saga.shape import Router

__all__ = ["Definitions", "Graph", "Node", "OnFailure", "Owner", "Saga"]

P = ParamSpec("P")
R = TypeVar("R")


class Owner(Protocol):
    """What a graph asks of the Durable it belongs to: a task for each node as it is
    declared, and starting runs. (Durable has these; nothing here imports it.)"""

    def register(self, node: Node[..., Any]) -> None: ...

    def register_compensation(self, node: Node[..., Any]) -> None: ...

    def start(
        self, graph: Graph, input: dict[str, Any], **options: Unpack[StartKeywords]
    ) -> Execution: ...


class Node(Generic[P, R]):
    """The handle ``@graph.node`` returns: calling it calls the function;
    ``@node.compensation`` says how to undo it. What the node is (its options, its
    compensation) is ``definition``, which the graph keeps."""

    def __init__(self, graph: Graph, fn: Callable[P, R], name: str) -> None:
        self.graph = graph
        self.fn = fn
        self.name = name
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    @property
    def definition(self) -> NodeDefinition:
        """The node as it is defined now: a compensation added later gives a new one."""
        return self.graph.nodes[self.name]

    @property
    def task_name(self) -> str:
        return self.definition.task_name

    @property
    def compensation_task_name(self) -> str:
        return self.definition.compensation_task_name

    def compensation(
        self, fn: Callable[..., Any] | None = None, *, retry: RetryPolicy | None = None
    ) -> Any:
        """Decorator: the function that undoes this node, ``fn(state, ctx)``.

        It receives the state as it was when this node committed. Its default RetryPolicy
        retries for a long time with exponential backoff: an undo should not give up easily.
        """

        def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
            node = self.definition
            if node.compensator is not None:
                raise GraphDefinitionError(
                    f"Node {self.graph.name}.{self.name} already has a compensation."
                )
            self.graph._put(
                replace(
                    node,
                    compensator=func,
                    compensator_wants_context=arity(func, f"{self.name}.compensation") == 2,
                    compensation_retry=retry or node.compensation_retry,
                )
            )
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
        version: str | None = None,
        keep_checkpoints: int | None = None,
    ) -> None:
        check_graph(name, state, on_failure, concurrency, version, keep_checkpoints)
        self.owner = owner
        self.name = name
        self.state = state
        # The version runs started on this definition are pinned to; None: the fingerprint's.
        self.declared_version = version
        self.on_failure: OnFailure = on_failure
        # Runs keep their newest this many checkpoints (engine/compaction.py); None: all.
        self.keep_checkpoints = keep_checkpoints
        # Running executions per key (engine/admission.py): taken at the entry node, held to
        # the end.
        self.concurrency = concurrency
        self.task_prefix = f"{TASK_PREFIX}.{name}"
        self.nodes: dict[str, NodeDefinition] = {}
        self.edges: dict[str, list[str]] = {}
        self.joins: dict[str, frozenset[str]] = {}
        self.branches: dict[str, tuple[Router, tuple[str, ...] | None]] = {}
        self.entry_node: str | None = None
        self.reducers = reducers(state)
        self.upgrader: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        # The definition taken since the last change, if any: every change drops it.
        self._definition: GraphDefinition | None = None

    # -- definition -------------------------------------------------------------------------

    @overload
    def node(self, fn: Callable[P, R], /, **options: Unpack[NodeOptions]) -> Node[P, R]: ...

    @overload
    def node(
        self, fn: None = None, /, **options: Unpack[NodeOptions]
    ) -> Callable[[Callable[P, R]], Node[P, R]]: ...

    def node(self, fn: Callable[P, R] | None = None, /, **options: Unpack[NodeOptions]) -> Any:
        """Decorator: ``@graph.node`` or ``@graph.node(retry=..., timeout=..., queue=...)``;
        the options are ``graphs.options.NodeOptions``."""
        check_options(self.name, options)

        def decorate(func: Callable[P, R]) -> Node[P, R]:
            name = options.get("name") or func.__name__
            if name in self.nodes:
                raise DuplicateNode(self.name, name)
            self._put(node_definition(self.task_prefix, name, func, options))
            node = Node(self, func, name)
            self.owner.register(node)
            if (compensate := options.get("compensate")) is not None:
                node.compensation(compensate, retry=options.get("compensation_retry"))
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
        self._definition = None
        return fn

    def _put(self, node: NodeDefinition) -> None:
        """A node defined, or redefined with its compensation."""
        self.nodes[node.name] = node
        self._definition = None

    def _added(self, node: Node[..., Any]) -> None:
        """A subclass hook: sagas chain their steps here."""

    def entry(self, node: str | Node[..., Any]) -> None:
        self.entry_node = self._known(node)
        self._definition = None

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
        self._definition = None

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
        self._definition = None

    # -- checks -----------------------------------------------------------------------------

    def definition(self) -> GraphDefinition:
        """The whole graph, checked and frozen: what the engine runs. Taken once per change,
        so that a node task's look-up costs a dict get and this attribute test."""
        if (taken := self._definition) is None:
            taken = self._definition = self._take()
        return taken

    def validate(self) -> str:
        """Check the whole graph; returns its fingerprint (recorded on every execution)."""
        return self.definition().fingerprint

    @property
    def version(self) -> str:
        """The version runs started here are pinned to: the declared one, else the
        fingerprint's first digits (so any change of structure is a new version)."""
        return self.definition().version

    def _take(self) -> GraphDefinition:
        if not self.nodes:
            raise GraphDefinitionError(f"Graph {self.name!r} has no nodes.")
        if self.entry_node is None:
            raise NoEntry(self.name)
        unreachable = sorted(set(self.nodes) - self._reachable(self.entry_node))
        if unreachable:
            raise UnreachableNode(self.name, unreachable)
        looping = [n for n, node in self.nodes.items() if node.compensator and self._loops(n)]
        check_undo_loops(self.name, self.keep_checkpoints, looping)
        return GraphDefinition(
            name=self.name,
            state=self.state,
            entry_node=self.entry_node,
            nodes=self.nodes,
            edges={src: tuple(dsts) for src, dsts in self.edges.items()},
            joins=self.joins,
            branches=self.branches,
            on_failure=self.on_failure,
            concurrency=self.concurrency,
            reducers=self.reducers,
            upgrader=self.upgrader,
            declared_version=self.declared_version,
            keep_checkpoints=self.keep_checkpoints,
        )

    def _reachable(self, start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            todo.extend(self._next(name))
        return seen

    def _next(self, name: str) -> list[str]:
        """The nodes that may follow ``name``."""
        paths = self.branches[name][1] if name in self.branches else ()
        return [*self.edges.get(name, ()), *(self.nodes if paths is None else paths)]

    def _loops(self, name: str) -> bool:
        """Whether ``name`` can run again in one run: it lies on a cycle."""
        return any(name in self._reachable(after) for after in self._next(name))

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
        tags: Mapping[str, str] | None = None,
    ) -> Execution:
        """Start a run. The same ``execution_id`` twice gives one execution. ``priority``
        (0-9, higher first) goes with every node message of the run. ``tags``: string pairs
        to find the run by (``durable.list(tags=...)``), like ``{"customer": "c-42"}``."""
        return self.owner.start(
            self,
            kwargs or {},
            execution_id=execution_id,
            countdown=countdown,
            queue=queue,
            priority=priority,
            tags=tags,
        )

    def __repr__(self) -> str:
        version = f" version={self.declared_version}" if self.declared_version else ""
        return f"<Graph {self.name}{version} nodes={list(self.nodes)}>"


class Saga(Graph):
    """A graph whose steps run in declaration order and are undone, newest first, when one
    fails for good or when someone asks. ``@saga.step`` adds a step after the last one;
    ``@step.compensation`` says how to undo it."""

    def __init__(
        self,
        owner: Owner,
        name: str,
        state: type[BaseModel],
        concurrency: Limit | None = None,
        version: str | None = None,
        keep_checkpoints: int | None = None,
    ) -> None:
        super().__init__(
            owner,
            name,
            state,
            on_failure="compensate",
            concurrency=concurrency,
            version=version,
            keep_checkpoints=keep_checkpoints,
        )
        self._last: str | None = None

    # A step is a node; what makes it a step is _added() chaining it after the last one.
    step = Graph.node

    def _added(self, node: Node[..., Any]) -> None:
        if self._last is None:
            self.entry(node)
        else:
            self.edge(self._last, node)
        self._last = node.name


class Definitions(Catalog):
    """The runtime's view of a Durable's graphs: by name the newest version, by name and
    version each one registered side by side.

    Live, so a graph defined or changed after the runtime was built is seen; cheap, since a
    node task looks its run's version up here for every message (a graph keeps its
    definition until it changes, and a name has one or a few versions).
    """

    __slots__ = ("_graphs",)

    def __init__(self, graphs: Mapping[str, Sequence[Graph]]) -> None:
        self._graphs = graphs

    def __getitem__(self, name: str) -> GraphDefinition:
        return self._graphs[name][-1].definition()

    def __contains__(self, name: object) -> bool:
        # Without this, Mapping would take (and check) the definition to answer.
        return name in self._graphs

    def __iter__(self) -> Iterator[str]:
        return iter(self._graphs)

    def __len__(self) -> int:
        return len(self._graphs)

    def at(self, name: str, version: str | None) -> GraphDefinition | None:
        graphs = self._graphs.get(name)
        if not graphs:
            return None
        if version is None:
            return graphs[-1].definition()
        for graph in graphs:
            if (taken := graph.definition()).version == version:
                return taken
        return None

    def versions(self, name: str) -> list[GraphDefinition]:
        return [graph.definition() for graph in self._graphs.get(name, ())]
