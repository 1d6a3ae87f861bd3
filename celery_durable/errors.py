"""Every error celery-durable raises, under one root.

::

    DurableError
    ├── ConfigurationError
    │   └── UnsafeSerializer
    ├── GraphDefinitionError
    │   ├── DuplicateNode
    │   ├── UnknownNode
    │   ├── NoEntry
    │   ├── UnreachableNode
    │   ├── InvalidNodeOption
    │   ├── DuplicateVersion
    │   ├── VersionClash
    │   └── UndeclaredName
    ├── UnknownGraph
    ├── GraphVersionMissing
    ├── CannotUpgrade
    ├── InvalidInput
    ├── StateTooLarge
    ├── PayloadTooLarge
    ├── NotJSONSerializable
    ├── MergeConflict
    ├── ExecutionNotFound
    ├── ExecutionIdInUse
    ├── InvalidExecutionId
    ├── CheckpointNotFound
    │   └── CheckpointCompacted
    ├── StoreError
    │   ├── DuplicateCheckpoint
    │   ├── VersionConflict
    │   ├── LeaseLost
    │   └── CheckpointCorrupted
    ├── InvalidTransition
    ├── NothingToCompensate
    ├── CannotSkip
    ├── ExecutionFailed
    │   ├── Compensated
    │   ├── ExecutionCancelled
    │   └── NeedsIntervention
    ├── WaitTimeout (also a TimeoutError)
    ├── NodeTimeout
    ├── EventTimeout
    ├── ChildFailed
    ├── NotWaiting
    ├── InvalidPriority
    ├── InvalidTags
    ├── UnknownStateFields
    ├── StateSchemaMismatch
    ├── EncryptionKeyMissing
    ├── ChecksumKeyMissing
    ├── StartNotDispatched
    ├── VisitCapReached
    ├── InvalidFlowOption (also a ValueError)
    ├── UnknownBreaker
    ├── CircuitOpen
    ├── DatabaseUnavailable
    ├── SchemaNotMigrated
    ├── NoDatabase
    ├── InvalidSchedule (also a ValueError)
    ├── UnknownSchedule
    ├── RunStillActive
    ├── ExecutionExists
    ├── ImportConflict
    └── ArchiveLineInvalid

Errors that enter from SQLAlchemy, psycopg or Celery are translated where they enter, with
``raise ... from exc``, so callers only need to know this tree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any


def _listed(names: Iterable[str]) -> str:
    return ", ".join(names) or "none"


def _none(what: str, known: Iterable[str], advice: str) -> str:
    """The message of a name looked up and not found: which names there are, what to do."""
    return f"No {what} (known: {_listed(known)}). {advice}"


def _shown(value: object, limit: int) -> str:
    """``value``'s repr, cut short when longer than ``limit``: an id can be any length."""
    shown = repr(value)
    if len(shown) <= limit:
        return shown
    return f"{shown[: limit - 20]}... ({len(str(value))} chars)"


def _cause(error: Mapping[str, Any]) -> str:
    return f"{error.get('type', 'Error')}: {error.get('message', '')}"


class DurableError(Exception):
    """Root of every celery-durable error.

    Each pickles to itself, message and attributes kept: Celery's prefork pool sends a task's
    exception to the worker through pickle, and one that does not come back whole is reported
    as its nearest base class that does (StoreError for CheckpointCorrupted).
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuilt, (type(self), self.args, self.__dict__))


def _rebuilt(cls: type[DurableError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    """An error as it was pickled, without calling its ``__init__`` (which builds the
    message from other arguments than the one it stores)."""
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class ConfigurationError(DurableError):
    """The Celery app or the settings cannot run durable executions as configured."""


class UnsafeSerializer(ConfigurationError):
    """The app insists on a serializer other than JSON for durable tasks."""

    def __init__(self, setting: str, value: object) -> None:
        super().__init__(
            f"Celery setting {setting}={value!r} would let durable tasks travel as something "
            "other than JSON; durable state must be JSON so that any worker can read it and no "
            f"message can execute code. Set {setting} to 'json' (or ['json']) on this app, or "
            "give durable executions an app of their own."
        )


class GraphDefinitionError(DurableError):
    """A graph or saga is defined in a way that cannot run."""


class DuplicateNode(GraphDefinitionError):
    """Two nodes of one graph given one name: task names and checkpoints are keyed by it."""

    def __init__(self, graph: str, node: str) -> None:
        super().__init__(
            f"Graph {graph!r} already has a node named {node!r}; give each node a unique name "
            "(the function name is used unless name= is passed)."
        )


class UnknownNode(GraphDefinitionError):
    """An edge, branch, entry or operation named a node the graph does not define."""

    def __init__(self, graph: str, node: str, known: list[str]) -> None:
        self.graph = graph
        self.node = node
        super().__init__(
            f"Graph {graph!r} has no node named {node!r}; known nodes: {_listed(known)}. "
            "Define the node with @graph.node before referring to it."
        )


class NoEntry(GraphDefinitionError):
    """A graph started or served with no entry node: nothing says where its runs begin."""

    def __init__(self, graph: str) -> None:
        super().__init__(
            f"Graph {graph!r} has no entry node; call graph.entry('<node>') to say where runs "
            "start."
        )


class UnreachableNode(GraphDefinitionError):
    """A node no path from the entry leads to: it would never run, so it is a mistake."""

    def __init__(self, graph: str, nodes: list[str]) -> None:
        super().__init__(
            f"Graph {graph!r}: node(s) {', '.join(nodes)} cannot be reached from the entry; "
            "add an edge or a branch leading to them, or remove them."
        )


class InvalidNodeOption(GraphDefinitionError):
    """A node or step decorator got an option it does not know or a value it cannot use."""


class DuplicateVersion(GraphDefinitionError):
    """One version of a graph defined twice on one Durable."""

    def __init__(self, graph: str, version: str) -> None:
        super().__init__(
            f"Graph {graph!r} already has a version {version!r} on this Durable; give the new "
            "definition its own version= (versions of one graph live side by side, each "
            "finishing the runs pinned to it)."
        )


class VersionClash(GraphDefinitionError):
    """Two definitions claim one version of a graph with different structures."""

    def __init__(self, graph: str, version: str, where: str, difference: str) -> None:
        super().__init__(
            f"Graph {graph!r} version {version!r} here has another structure than on {where} "
            f"({difference}). Runs pinned to that version would take either path; give the "
            "changed graph a new version= and keep the old one defined while its runs drain."
        )


class UndeclaredName(GraphDefinitionError):
    """A node refers to a breaker or a queue that nothing declares: a misspelt name."""

    def __init__(
        self, graph: str, node: str, kind: str, name: str, known: Iterable[str], advice: str
    ) -> None:
        super().__init__(
            f"Node {graph}.{node} uses {kind} {name!r}, which is not declared (declared: "
            f"{_listed(sorted(known))}). {advice}"
        )


class GraphVersionMissing(DurableError):
    """A run's version is not deployed: no live worker (or not this process) defines it."""

    def __init__(
        self,
        execution_id: str,
        graph: str,
        version: str,
        deployed: Iterable[str],
        difference: str | None = None,
        where: str = "on any live worker",
    ) -> None:
        self.execution_id, self.graph, self.version = execution_id, graph, version
        self.deployed = sorted(deployed)
        differs = f"; {difference}" if difference else ""
        super().__init__(
            f"Execution {execution_id!r} is pinned to version {version!r} of graph {graph!r}, "
            f"which is not defined {where} (deployed: {_listed(self.deployed)}){differs}. "
            f"Deploy workers that still define version {version!r}, or move the run with "
            f"`durable upgrade {execution_id} --version V` (Execution.upgrade())."
        )


class CannotUpgrade(DurableError):
    """A run cannot move to the version asked: its current nodes, waits or state do not fit it."""

    def __init__(self, execution_id: str, version: str, detail: str) -> None:
        super().__init__(
            f"Cannot upgrade execution {execution_id!r} to version {version!r}: {detail}. "
            "Nothing was changed."
        )


class UnknownGraph(DurableError):
    """A graph named by a start, a message or a command that this process has not defined."""

    def __init__(self, graph: str, known: list[str]) -> None:
        what = f"durable graph named {graph!r} is registered in this process"
        super().__init__(_none(what, known, "Import the module that defines it before using it."))


class InvalidInput(DurableError):
    """The input or a state update does not validate against the graph's state model."""

    def __init__(self, graph: str, detail: str, node: str | None = None) -> None:
        if node is None:
            super().__init__(
                f"Input for graph {graph!r} does not fit its state model: {detail}. "
                "Nothing was stored or sent; fix the values and try again."
            )
        else:
            super().__init__(
                f"The update node {node!r} of graph {graph!r} returned does not fit the state "
                f"model: {detail}. The node's visit was not committed and no retry can fix its "
                "output; fix the node, then Execution.retry()."
            )


class StateTooLarge(DurableError):
    """A state over max_state_bytes: refused before it is stored or sent."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"The serialized state is {size} bytes, over the limit of {limit} bytes. Keep large "
            "payloads in object storage and put their keys in the state, or raise "
            "max_state_bytes (CELERY_DURABLE_MAX_STATE_BYTES)."
        )


class PayloadTooLarge(DurableError):
    """An input, output or event payload over max_state_bytes: refused before it is stored."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(
            f"{what} is {size} bytes, over the limit of {limit} bytes; nothing was stored. "
            "Keep large payloads in object storage and send their keys, or raise "
            "max_state_bytes (CELERY_DURABLE_MAX_STATE_BYTES)."
        )


class NotJSONSerializable(DurableError):
    """A value that JSON cannot carry: only JSON travels through the broker and the tables."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(
            f"{what} cannot be stored as JSON ({detail}). Return plain dicts, lists, strings, "
            "numbers, booleans and None, or fields the state model can dump to JSON."
        )


class MergeConflict(DurableError):
    """Parallel branches wrote one field with no Reduce saying how to combine them."""

    def __init__(self, node: str, fields: list[str]) -> None:
        super().__init__(
            f"Node {node!r} and a parallel branch both wrote field(s) {', '.join(fields)}. Write "
            "each field from one branch only, or annotate the field with Reduce(fn) in the "
            "state model to say how parallel writes combine."
        )


class ExecutionNotFound(DurableError):
    """No execution has this id in this database."""

    def __init__(self, execution_id: str) -> None:
        self.execution_id = execution_id
        super().__init__(
            f"No execution with id {_shown(execution_id, 80)}; check the id (durable.list() shows "
            "recent ones) and that this process uses the same database."
        )


class ExecutionIdInUse(DurableError):
    """A start reused the id of a run of another graph."""

    def __init__(self, execution_id: str, graph: str, wanted: str) -> None:
        super().__init__(
            f"Execution id {execution_id!r} already belongs to a run of graph {graph!r}, not "
            f"{wanted!r}. Use another id; the same id starts one run of one graph."
        )


class InvalidExecutionId(DurableError):
    """An execution id that cannot name a run (empty, not a string, too long)."""

    def __init__(self, execution_id: object, limit: int) -> None:
        super().__init__(
            f"execution_id={_shown(execution_id, 60)} cannot name a run: give a non-empty "
            f"string of at most {limit} characters, or none for a generated one. Nothing was "
            "stored or sent."
        )


class CheckpointNotFound(DurableError):
    """Time travel or a fork named a checkpoint the run does not have."""

    def __init__(self, execution_id: str, seq: int) -> None:
        super().__init__(
            f"Execution {execution_id!r} has no checkpoint {seq}; Execution.history() lists "
            "the ones it has."
        )


class CheckpointCompacted(CheckpointNotFound):
    """Time travel to a checkpoint that a graph's ``keep_checkpoints`` compacted away."""

    def __init__(self, execution_id: str, seq: int, *, state_from: bool = False) -> None:
        self.execution_id = execution_id
        self.seq = seq
        what = (
            f"The state at checkpoint {seq} of execution {execution_id!r} was recorded by an "
            "earlier checkpoint, which was compacted"
            if state_from
            else f"Checkpoint {seq} of execution {execution_id!r} was compacted"
        )
        DurableError.__init__(
            self,
            f"{what}: the run's graph keeps its newest checkpoints (keep_checkpoints), its "
            "start, its failures, every operation's checkpoint and the visits of nodes that "
            "have a compensation. Time travel reaches those: Execution.history() (durable "
            "history ID) lists them.",
        )


class StoreError(DurableError):
    """The checkpoint store refused a write or found a row it cannot trust."""


class DuplicateCheckpoint(StoreError):
    """This node visit is already committed: the engine replays instead of committing again."""

    def __init__(self, execution_id: str, kind: str, node: str, visit: int) -> None:
        self.execution_id = execution_id
        self.kind = kind
        self.node = node
        self.visit = visit
        super().__init__(
            f"Execution {execution_id!r} already has a {kind} checkpoint for {node!r} visit "
            f"{visit}; a node visit commits once. Read it with store.find() instead."
        )


class VersionConflict(StoreError):
    """The execution moved on since the caller read it; reload and decide again."""

    def __init__(self, execution_id: str, expected: int, current: Any = None) -> None:
        self.execution_id = execution_id
        self.expected = expected
        # The execution as the store found it when it refused (an ExecutionRecord), if read.
        self.current = current
        super().__init__(
            f"Execution {execution_id!r} is no longer at version {expected}: another node, a "
            "worker or an operator changed it. Reload the execution and decide again."
        )


class LeaseLost(StoreError):
    """A newer attempt took over this node visit; this attempt's result must be dropped."""

    def __init__(self, execution_id: str, node: str, visit: int, token: int) -> None:
        super().__init__(
            f"Execution {execution_id!r}: the lease on {node!r} visit {visit} (token {token}) "
            "was taken over by a newer attempt, so this attempt's result is dropped."
        )


class CheckpointCorrupted(StoreError):
    """A stored checkpoint or execution row does not match its checksum, or has none."""

    def __init__(self, execution_id: str, seq: int, *, row: bool = False) -> None:
        self.execution_id = execution_id
        self.seq = seq
        self.row = row
        what = (
            f"The row of execution {execution_id!r} (at checkpoint {seq})"
            if row
            else f"Checkpoint {seq} of execution {execution_id!r}"
        )
        super().__init__(
            f"{what} does not match its checksum: it was changed outside "
            "celery-durable, and nothing was decided or changed from it. Restore it from a "
            "backup, or restart the execution from a checkpoint that verifies (durable verify "
            "lists those that do not; restart_from / durable restart)."
        )


class InvalidTransition(DurableError):
    """An operation that does not fit the execution's status; nothing was changed."""

    def __init__(self, execution_id: str, op: str, status: str, allowed: Iterable[str]) -> None:
        self.execution_id = execution_id
        self.op = op
        self.status = status
        super().__init__(
            f"Cannot {op} execution {execution_id!r}: it is {status}, and {op} applies only to "
            f"{', '.join(sorted(str(s) for s in allowed))} runs. Nothing was changed."
        )


class NothingToCompensate(DurableError):
    """Compensation asked of a run that has no step with a compensation."""

    def __init__(self, execution_id: str, graph: str) -> None:
        super().__init__(
            f"Execution {execution_id!r} of graph {graph!r} has no step with a compensation, so "
            "there is nothing to undo. Attach one with @step.compensation, or cancel the run."
        )


class CannotSkip(DurableError):
    """Skip asked of a node the run is not stopped at."""

    def __init__(self, execution_id: str, node: str, detail: str) -> None:
        super().__init__(
            f"Cannot skip {node!r} in execution {execution_id!r}: {detail}. Skip applies to the "
            "node a failed run stopped at, or to the compensation waiting for intervention."
        )


class ExecutionFailed(DurableError):
    """Raised by Execution.wait() when the run ended failed; carries the node and its error.
    Its subclasses say how else a run can end without succeeding, each in its own words."""

    def __init__(self, execution_id: str, node: str | None, error: Mapping[str, Any]) -> None:
        self.execution_id = execution_id
        self.node = node
        self.error = error
        super().__init__(self._message(execution_id, node, error))

    @staticmethod
    def _message(execution_id: str, node: str | None, error: Mapping[str, Any]) -> str:
        where = f" at node {node!r}" if node else ""
        return (
            f"Execution {execution_id!r} failed{where}: {_cause(error)}. Its history() shows "
            "what was committed; fix the cause, then Execution.retry() (celery durable retry) "
            "runs it again from there."
        )


class Compensated(ExecutionFailed):
    """Raised by wait() when a saga ended compensated: its steps were undone."""

    @staticmethod
    def _message(execution_id: str, node: str | None, error: Mapping[str, Any]) -> str:
        where = f" at step {node!r}" if node else ""
        return (
            f"Saga {execution_id!r} was compensated: its completed steps were undone after "
            f"{_cause(error)}{where}. history() shows each compensation."
        )


class ExecutionCancelled(ExecutionFailed):
    """Raised by wait() when the run was cancelled."""

    @staticmethod
    def _message(execution_id: str, node: str | None, error: Mapping[str, Any]) -> str:
        return f"Execution {execution_id!r} was cancelled: {error.get('message', '')}."


class NeedsIntervention(ExecutionFailed):
    """Raised by wait() when a compensation failed for good and the run waits for an operator."""

    @staticmethod
    def _message(execution_id: str, node: str | None, error: Mapping[str, Any]) -> str:
        return (
            f"Execution {execution_id!r} needs intervention at {node!r}: {_cause(error)}. Fix "
            f"the cause, then Execution.retry(), or Execution.skip({node!r}) to mark it done "
            "by hand."
        )


class WaitTimeout(DurableError, TimeoutError):
    """wait() gave up; the execution itself goes on."""

    def __init__(self, execution_id: str, timeout: float, status: str) -> None:
        super().__init__(
            f"Execution {execution_id!r} was still {status} after {timeout:g} s. It keeps "
            "running; call wait() again or look at progress()."
        )


class NodeTimeout(DurableError):
    """A node ran past its timeout=; its attempt fails and its RetryPolicy decides what next."""

    def __init__(self, node: str, timeout: float) -> None:
        super().__init__(
            f"Node {node!r} ran past its timeout of {timeout:g} s; it is retried per its "
            "RetryPolicy. Raise timeout= on the node if the work needs longer."
        )


class EventTimeout(DurableError):
    """ctx.wait_for_event() waited ``timeout`` seconds and no event came. Not retried unless the
    node's RetryPolicy says so: a retry of the same visit would time out again."""

    def __init__(self, node: str, event: str, timeout: float) -> None:
        self.node, self.event, self.timeout = node, event, timeout
        super().__init__(
            f"Node {node!r} waited {timeout:g} s for event {event!r} and none came. Catch "
            "EventTimeout in the node to go on without it, or send the event sooner."
        )


class NotWaiting(DurableError):
    """An operation meant for a waiting run (resume an interrupt) found it waiting for nothing
    of the kind; nothing was changed."""

    def __init__(self, execution_id: str, what: str, status: str) -> None:
        super().__init__(
            f"Execution {execution_id!r} ({status}) is not waiting for {what}; nothing was "
            "changed. Execution.waiting_on says what it waits for, if anything."
        )


class ChildFailed(DurableError):
    """A child run this node waited for (ctx.wait_child, ctx.map) ended without succeeding."""

    def __init__(self, child_id: str, status: str, error: Mapping[str, Any] | None) -> None:
        self.child_id, self.status, self.error = child_id, status, error
        detail = f": {_cause(error)}" if error else ""
        super().__init__(
            f"Child run {child_id!r} ended {status}{detail}. Its history() shows why; catch "
            "ChildFailed in the node to go on without it, or retry the child and this node."
        )


class InvalidPriority(DurableError):
    """A message priority outside 0 to 9."""

    def __init__(self, priority: object) -> None:
        super().__init__(
            f"priority={priority!r} is not a message priority: give an int from 0 (lowest) to 9 "
            "(highest), or None for the queue's default. Nothing was stored or sent."
        )


class InvalidTags(DurableError):
    """Tags a run cannot be started with, or found by. ``problem`` says which and why,
    ``rule`` what tags may be (model/tags.py keeps the limits)."""

    def __init__(self, problem: str, rule: str) -> None:
        self.problem = problem
        super().__init__(
            f"Invalid tags: {problem}. {rule} Nothing was stored or sent; fix the tags and try "
            "again."
        )


class UnknownBreaker(DurableError):
    """A circuit breaker named that no durable.breaker() declared."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        advice = f"Declare it with durable.breaker({name!r}, ...) where the graphs are defined."
        super().__init__(_none(f"circuit breaker named {name!r}", sorted(known), advice))


class CircuitOpen(DurableError):
    """Raised in a node whose breaker is open and that asked to fail fast (``when_open="fail"``)."""

    def __init__(self, name: str, retry_at: datetime) -> None:
        self.breaker = name
        self.retry_at = retry_at
        super().__init__(
            f"Circuit breaker {name!r} is open until {retry_at.isoformat()}: the call was not "
            f"made. It half-opens then and lets one probe through; `durable breakers` shows it, "
            f"`durable breaker close {name}` closes it by hand."
        )


class InvalidFlowOption(DurableError, ValueError):
    """A breaker or rate limit declared with values that cannot work."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"{what}: {detail}. Fix the declaration; nothing was changed.")


class UnknownStateFields(DurableError):
    """A node returned keys its graph's state model does not have: they would be dropped."""

    def __init__(self, graph: str, node: str, fields: Iterable[str]) -> None:
        self.fields = sorted(fields)
        super().__init__(
            f"Node {graph}.{node} returned {', '.join(map(repr, self.fields))}, which the "
            "graph's state model does not have. Add the fields to the model (and deploy it) "
            "or stop returning them; the node was not committed."
        )


class VisitCapReached(DurableError):
    """A node was made ready more often than its ``max_visits``: a loop that does not end."""

    def __init__(self, graph: str, node: str, cap: int) -> None:
        super().__init__(
            f"Node {graph}.{node} would run a {cap + 1}th time in one run, past its "
            f"max_visits={cap}: a loop that never ends? Fix the branch that loops back, or "
            "raise max_visits on the node, then retry the run."
        )


class StartNotDispatched(DurableError):
    """The run was stored, but its first message could not be sent (the broker is down)."""

    def __init__(self, execution_id: str, cause: BaseException, stale_after: float) -> None:
        self.execution_id = execution_id
        super().__init__(
            f"Run {execution_id!r} is stored, but its first node could not be sent "
            f"({type(cause).__name__}: {cause}). The recovery sweep sends it once the broker "
            f"is back (it looks for runs with no progress for stale_after={stale_after:g}s). "
            "Starting again with the same execution_id is safe: it never makes a second run."
        )


class StateSchemaMismatch(DurableError):
    """A stored state does not validate against the state model deployed now."""

    def __init__(self, graph: str, fields: Iterable[str], detail: str, upgraded: bool) -> None:
        self.graph = graph
        self.fields = sorted(set(fields))
        after = " after the graph's upgrade hook" if upgraded else ""
        hint = (
            "Fix the upgrade hook"
            if upgraded
            else f"Deploy an upgrade hook (@{graph}.upgrade: old dict in, new dict out)"
        )
        super().__init__(
            f"The stored state of graph {graph!r} does not fit the state model deployed now"
            f"{after}: {detail} (field(s) {', '.join(self.fields) or '<root>'}). A deploy "
            f"changed the model under a run in flight; the run stops as needs_intervention. "
            f"{hint}, or patch the state with update_state(), then retry()."
        )


class EncryptionKeyMissing(DurableError):
    """A row was sealed with a key this process does not have."""

    def __init__(self, key_id: str, known: Iterable[str]) -> None:
        self.key_id = key_id
        have = _listed(sorted(known))
        super().__init__(
            f"A stored state was encrypted with key {key_id!r}, which encryption_keys does not "
            f"hold (it has: {have}). Nothing was read or changed. Add the key to "
            "encryption_keys (CELERY_DURABLE_ENCRYPTION_KEYS) on every worker and client; keep "
            "old keys there for as long as rows written with them exist."
        )


class ChecksumKeyMissing(DurableError):
    """A row was signed with a checksum key this process does not have."""

    def __init__(self, key_id: str, known: Iterable[str]) -> None:
        self.key_id = key_id
        have = _listed(sorted(known))
        super().__init__(
            f"A stored row carries a checksum signed with key {key_id!r}, which checksum_keys "
            f"does not hold (it has: {have}). Nothing was read or changed. Add the key to "
            "checksum_keys (CELERY_DURABLE_CHECKSUM_KEYS) on every worker and client; keep old "
            "keys there until durable verify --sign has re-signed what they signed."
        )


class DatabaseUnavailable(DurableError):
    """The database could not be reached: down, refusing connections, or the URL is wrong."""

    def __init__(self, url: str, cause: str, *, server: bool = True) -> None:
        self.url = url
        self.cause = cause
        check = (
            "that the server is up and reachable from this host, and the host, port, database "
            "name and credentials in"
            if server
            else "that the file's directory exists and this process may write there, and"
        )
        super().__init__(
            f"Cannot reach the database {url}: {cause}. Check {check} database_url "
            "(CELERY_DURABLE_DATABASE_URL)."
        )


class SchemaNotMigrated(DurableError):
    """The database has no celery-durable schema, or an older revision than this code's."""

    def __init__(self, url: str, current: str | None, expected: str) -> None:
        self.url = url
        self.current = current
        self.expected = expected
        found = "no celery-durable schema" if current is None else f"schema revision {current}"
        super().__init__(
            f"The database {url} has {found}; this celery-durable needs revision {expected}. "
            "Run `celery -A proj durable migrate` (proj: your Celery app's module) once, then "
            "start again."
        )


class NoDatabase(DurableError):
    """A read found no SQLite file where the URL points, and created none."""

    def __init__(self, path: str, *, default: bool = False) -> None:
        self.path = path
        where = (
            "It is the default, a SQLite file in the working directory: run this where your "
            "workers run, or set CELERY_DURABLE_DATABASE_URL (or --database-url) to the file "
            "they use."
            if default
            else "Check the path in database_url (CELERY_DURABLE_DATABASE_URL)."
        )
        super().__init__(
            f"There is no database at {path}, and reading created none. {where} A first run "
            "started there, a worker, or `celery -A proj durable migrate` creates it."
        )


class InvalidSchedule(DurableError, ValueError):
    """A schedule defined with a cron, an interval, a time zone or a name that cannot work."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"{what}: {detail}. Fix the schedule; nothing was registered.")


class UnknownSchedule(DurableError):
    """A schedule named that is neither defined here nor stored."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        advice = (
            f"Define it with durable.schedule(graph, ..., name={name!r}) in the module the app "
            "is loaded from; `durable schedules` lists the schedules defined there."
        )
        super().__init__(_none(f"schedule named {name!r}", sorted(known), advice))


class RunStillActive(DurableError):
    """A delete named a run (or one of its children) that has not finished."""

    def __init__(self, execution_id: str, active: Mapping[str, str]) -> None:
        self.execution_id = execution_id
        self.active = dict(active)
        shown = ", ".join(f"{run} is {status}" for run, status in list(active.items())[:5])
        more = f" and {len(active) - 5} more" if len(active) > 5 else ""
        super().__init__(
            f"Cannot delete execution {execution_id!r}: {shown}{more}, and deleting would pull "
            "its rows from under work in flight. Nothing was deleted. Cancel it first, or "
            "delete with force=True, which cancels what runs and then deletes."
        )


class ExecutionExists(DurableError):
    """An import met a run whose id this database already holds."""

    def __init__(self, execution_id: str) -> None:
        self.execution_id = execution_id
        super().__init__(
            f"Execution {_shown(execution_id, 80)} already exists in this database; an import "
            "never overwrites a run, so this one was not imported. Delete the stored run first "
            "if the archived copy should replace it."
        )


class ImportConflict(DurableError):
    """An import met a row of another run in the way: an event id this database has given."""

    def __init__(self, execution_id: str, detail: str) -> None:
        self.execution_id = execution_id
        super().__init__(
            f"Execution {_shown(execution_id, 80)} was not imported: one of its rows takes a "
            f"key a row of this database already holds ({detail}). Nothing of it was written. "
            "Its events keep the ids they were given, which its checkpoints name; import it "
            "into the database it was exported from, or into one that holds no other runs' "
            "events."
        )


class ArchiveLineInvalid(DurableError):
    """A line of an export that does not verify: altered, cut short, or of an unknown format."""

    def __init__(self, where: str, detail: str) -> None:
        self.where = where
        self.detail = detail
        super().__init__(
            f"{where} of the export cannot be imported: {detail}. Nothing of that run was "
            "written. Import the line as it was exported (durable export writes it again from "
            "a database that still holds the run)."
        )
