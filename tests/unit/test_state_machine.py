"""Random interleavings of everything that can happen to runs, checked after every step.

A Hypothesis rule-based state machine drives the engine in this thread, on SQLite (a database
of its own per example) and kombu's in-memory broker with no worker: the machine is the
worker. It takes node and compensation messages off the queue in any order and runs them as
the worker's task body does, crashing an attempt at any named fault point (``faults``); a
crashed message stays unacked and comes again flagged redelivered, and a message already
acked may come again too (a lost ack). An attempt that failed is acked: its task reports it
(Celery's Retry, or the node's exception) after the engine recorded it; any other exception
out of a task body fails the test. In between it starts runs of two graphs (``trip``: a
fan-out into a join, a loop, a durable sleep and a wait for an event; ``order``: a saga whose
doomed runs compensate, with a sub-step), lets time pass and fires the timers or the whole
recovery sweep (crashing it after a wake or not), and operates on runs: pause, resume,
cancel, retry, compensate, restart_from any checkpoint, send_event (crashing after its
wake or not).

The engine's clock is the machine's (``state_machine_clock``): it stands still until the
machine lets time pass, so the same draws make the same steps, however long each takes, and
Hypothesis can replay and shrink what it finds.

Invariants, checked after every step for every run:

1. No (kind, node, visit) is committed twice in a run's history.
2. A committed checkpoint is never lost or changed: every checkpoint seen once is still
   there with the same kind, node, visit and checksum (restart_from appends, it keeps
   history), and the history's seqs are 0..n with n the row's version.
3. The row is its history's last word: its cursor is the last checkpoint's cursor, and its
   state is the history folded: each node commit is the state before it with the node's
   output merged (reducers add), a restart takes the state in effect at the checkpoint it
   names, every other checkpoint that records a state records the state before it.
4. The run's status is the one its history explains, replayed checkpoint by checkpoint:
   start, node, wait and wake settle from their cursor (running while a visit is in flight,
   waiting while only waits are open, succeeded when nothing is left), except that a pause
   holds until resumed and a saga compensating stays compensating while a step is in flight
   or left to undo (a step that commits then joins the undo list if it has a compensation);
   a failure fails a graph and sends a saga compensating (compensated once nothing is left
   to undo); a cancel cancels; a resume, retry or restart settles; a compensate or
   compensation commit is compensating or compensated; a sub-step changes nothing. Hence
   succeeded only when the last checkpoint leaves nothing to do, cancelled only right after
   a cancel, failed only right after a failure.
5. What committed ran: every node commit's function ran for that visit, every compensation
   commit's compensation ran, and a compensation only ever ran for a step that committed.
   Only a step that committed and has a compensation is ever on the list of steps to undo.
6. An operation that is refused (``DurableError``) changes nothing: no checkpoint, same row
   version.
7. ``durable.verify()`` finds no checkpoint or row that fails its checksum.
8. Every message the engine publishes names a task the worker has.

And once the machine stops, if nothing failed: deliver every message, without crashes, and
let time pass with full sweeps until two in a row leave nothing to deliver; then no run is
running, compensating or pending, and a run that waits, waits for an event (every crash was
healed, every timer fired).

``make test`` runs the bounded profile, the same examples every time;
``CELERY_DURABLE_HYPOTHESIS=long`` runs ten times as many, new ones on each run, by hand. The
test prints how many examples and steps ran and how long they took (``-s`` shows it).
"""

from __future__ import annotations

import operator
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import pytest
from celery.exceptions import Retry
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from pydantic import BaseModel

from celery_durable import (
    Context,
    Durable,
    DurableError,
    Execution,
    NonRetryable,
    Reduce,
    RetryPolicy,
    Status,
)
from celery_durable.engine.recovery import fire_timers, sweep
from celery_durable.faults import (
    AFTER_COMMIT,
    AFTER_WAKE,
    BEFORE_COMMIT,
    COMPENSATION,
    SimulatedCrash,
    crash_at,
)
from celery_durable.model.cursor import Undo
from celery_durable.model.records import Checkpoint, Kind
from celery_durable.testing import embedded_app
from tests.unit.state_machine_clock import Clock, engine_time
from tests.unit.state_machine_history import folded, listing, replayed

PROFILE_ENV = "CELERY_DURABLE_HYPOTHESIS"
BOUNDED, LONG = "state-machine", "state-machine-long"
EXAMPLES, STEPS = 40, 40
# The bounded profile runs the same examples every time (make test's time and verdict do not
# vary); the long one draws new ones on each run, and prints the blob that replays a failure.
settings.register_profile(
    BOUNDED,
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    database=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    LONG, settings.get_profile(BOUNDED), max_examples=10 * EXAMPLES, derandomize=False
)
PROFILE = LONG if os.environ.get(PROFILE_ENV) == "long" else BOUNDED

MAX_RUNS = 4
# The engine's clock moves only by these (state_machine_clock): a run is stale (60 s without
# a commit) exactly when the machine let 60 s pass since.
TICKS = (0, 30, 60)
# Rounds of deliveries and sweeps after the last step, at most, for every run to come to rest.
SETTLE_ROUNDS = 12
CRASHES = (None, BEFORE_COMMIT, AFTER_COMMIT, AFTER_WAKE, COMPENSATION)
# One rule for them all: Hypothesis picks among the rules evenly, and with a rule each most
# steps were operations, most of them refused, and most runs ended cancelled early.
OPERATIONS = ("pause", "resume", "cancel", "retry", "compensate", "restart_from", "send_event")
SAGA = "order"
# The fields each graph's state merges with a reducer (here: list concatenation).
REDUCED = {"trip": {"items"}, SAGA: set()}
# The saga's steps that have a compensation.
UNDOABLE = {"reserve", "charge"}
# What the machine's nodes raise: the task raises it again once the engine recorded the
# failed attempt (Flower's FAILURE), and its message is acked.
ATTEMPT_FAILURES = (ConnectionError, NonRetryable)
S = Status


class Trip(BaseModel):
    target: int = 0
    flaky: int = 0
    laps: int = 0
    left: int = 0
    right: int = 0
    items: Annotated[list[str], Reduce(operator.add)] = []
    heard: Any = None


class Order(BaseModel):
    doomed: bool = False
    reserved: bool = False
    charged: bool = False
    receipt: str = ""


@dataclass(frozen=True)
class Message:
    """A node or compensation message as the broker holds it."""

    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    redelivered: bool = False


@dataclass
class World:
    """What the examples share: a migrated database each copies (migrating costs more than
    a whole example), the engine's clock, which each starts again at its epoch, and the
    tally of examples and steps."""

    template: Path
    clock: Clock = field(default_factory=Clock)
    examples: int = 0
    steps: int = 0


class Interleavings(RuleBasedStateMachine):
    """The worker, the clock and the operator, interleaved as Hypothesis chooses."""

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        self.clock = world.clock
        self.clock.reset()
        self.folder = tempfile.mkdtemp(prefix="durable-state-machine-")
        self.durable: Durable | None = None
        self.runs: list[str] = []
        self.pending: list[Message] = []
        self.acked: list[Message] = []
        # (execution, seq) -> (kind, node, visit, checksum) of every checkpoint seen so far.
        self.seen: dict[tuple[str, int], tuple[str, str, int, str]] = {}
        # (execution, "node" or "compensation", node, visit) -> times the function ran.
        self.calls: Counter[tuple[str, str, str, int]] = Counter()
        self.failures: Counter[str] = Counter()

    # -- the world ----------------------------------------------------------------------------

    @initialize(inline=st.sampled_from([16, 0]))
    def open_store(self, inline: int) -> None:
        database = Path(self.folder) / "durable.sqlite3"
        shutil.copyfile(self.world.template, database)
        app = embedded_app(f"machine-{os.getpid()}-{self.world.examples}")
        url = f"sqlite:///{database}"
        self.durable = Durable(app, database_url=url, eta_threshold=2.0, inline_nodes=inline)
        self._define_trip(self.durable)
        self._define_order(self.durable)

    def _define_trip(self, durable: Durable) -> None:
        g = durable.graph("trip", state=Trip)

        @g.node
        def fan(s: Trip, ctx: Context) -> dict[str, object]:
            self._ran(ctx)
            return {"items": ["fan"]}

        @g.node
        def left(s: Trip, ctx: Context) -> dict[str, object]:
            self._ran(ctx)
            return {"left": s.left + 1, "items": ["left"]}

        # A failed attempt waits 10 s in the database for the timers.
        @g.node(retry=RetryPolicy(max_attempts=2, initial_delay=10, jitter=False))
        def right(s: Trip, ctx: Context) -> dict[str, object]:
            self._ran(ctx)
            if self.failures[ctx.execution_id] < s.flaky:
                self.failures[ctx.execution_id] += 1
                raise ConnectionError("the right-hand service is down")
            return {"right": s.right + 1, "items": ["right"]}

        @g.node
        def merge(s: Trip, ctx: Context) -> dict[str, object]:
            self._ran(ctx)
            return {"items": ["merge"]}

        @g.node
        def loop(s: Trip, ctx: Context) -> dict[str, object]:
            self._ran(ctx)
            return {"laps": s.laps + 1}

        @g.node
        def nap(s: Trip, ctx: Context) -> dict[str, object]:
            self._ran(ctx)
            ctx.sleep(20)
            return {"heard": ctx.wait_for_event("go")}

        g.entry(fan)
        g.edge(fan, [left, right])
        g.edge([left, right], merge)
        g.edge(merge, loop)
        g.branch(loop, lambda s: "loop" if s.laps <= s.target else "nap", [loop, nap])

    def _define_order(self, durable: Durable) -> None:
        saga = durable.saga(SAGA, state=Order)
        once = RetryPolicy.never()

        def undo(s: Order, ctx: Context) -> None:
            self._ran(ctx, "compensation")

        @saga.step(retry=once, compensate=undo)
        def reserve(s: Order, ctx: Context) -> dict[str, object]:
            self._ran(ctx)
            return {"reserved": True}

        @saga.step(retry=once, compensate=undo)
        def charge(s: Order, ctx: Context) -> dict[str, object]:
            self._ran(ctx)
            receipt = ctx.step("pay", lambda: f"paid-{ctx.visit}")
            if s.doomed:
                raise NonRetryable("the card was declined")
            return {"charged": True, "receipt": receipt}

        @saga.step(retry=once)
        def ship(s: Order, ctx: Context) -> None:
            self._ran(ctx)

    def _ran(self, ctx: Context, kind: str = "node") -> None:
        self.calls[(ctx.execution_id, kind, ctx.node, ctx.visit)] += 1

    @property
    def engine(self) -> Durable:
        assert self.durable is not None
        return self.durable

    def _drain(self) -> None:
        """Take every message the engine published off the queue, into ``pending``."""
        app = self.engine.app
        with app.connection_for_read() as conn:
            channel = conn.default_channel
            while (got := channel.basic_get(app.conf.task_default_queue, no_ack=True)) is not None:
                args, kwargs, _ = got.decode()
                task = got.headers["task"]
                assert task in app.tasks, f"published {task} {args}, a task no worker has"
                self.pending.append(Message(task, args, kwargs))

    def _run(self, message: Message, crash: str | None) -> bool:
        """Run ``message`` as the worker's task body would; whether its attempt crashed."""
        task = self.engine.app.tasks[message.task]
        task.push_request(delivery_info={"redelivered": message.redelivered})
        armed = crash_at(crash) if crash is not None else nullcontext(None)
        try:
            with armed as fault:
                task.run(*message.args, **message.kwargs)
        except SimulatedCrash:
            return True
        except (Retry, *ATTEMPT_FAILURES):
            pass  # reported after the engine recorded the attempt: the message is acked
        finally:
            task.pop_request()
            self._drain()
        return fault is not None and fault.crashes > 0

    def _deliver(self, message: Message, crash: str | None) -> None:
        if self._run(message, crash):
            # Unacked when its worker died: the broker delivers it again, flagged.
            self.pending.append(replace(message, redelivered=True))
        else:
            self.acked.append(message)

    def _tick(self, seconds: float, full: bool, crash: bool) -> None:
        self.clock.advance(seconds)
        fire = sweep if full else fire_timers
        try:
            with crash_at(AFTER_WAKE) if crash else nullcontext():
                fire(self.engine.runtime, self.clock.utcnow())
        except SimulatedCrash:
            pass  # the sweeping process died where it was
        self._drain()

    @contextmanager
    def _operating(self, run: Execution) -> Iterator[None]:
        """An operation that is refused changes nothing (invariant 6)."""
        before = run.refresh().version, len(run.history())
        try:
            yield
        except DurableError:
            assert (run.refresh().version, len(run.history())) == before, (
                f"{run.id}: a refused operation changed the run"
            )
        finally:
            self._drain()

    # -- rules --------------------------------------------------------------------------------

    @precondition(lambda self: len(self.runs) < MAX_RUNS)
    @rule(laps=st.integers(0, 2), flaky=st.integers(0, 3))
    def start_trip(self, laps: int, flaky: int) -> None:
        self.world.steps += 1
        execution_id = f"trip-{len(self.runs)}"
        self.engine.graphs["trip"].apply_async(
            {"target": laps, "flaky": flaky}, execution_id=execution_id
        )
        self.runs.append(execution_id)
        self._drain()

    @precondition(lambda self: len(self.runs) < MAX_RUNS)
    @rule(doomed=st.booleans())
    def start_order(self, doomed: bool) -> None:
        self.world.steps += 1
        execution_id = f"{SAGA}-{len(self.runs)}"
        self.engine.graphs[SAGA].apply_async({"doomed": doomed}, execution_id=execution_id)
        self.runs.append(execution_id)
        self._drain()

    @precondition(lambda self: bool(self.pending))
    @rule(pick=st.integers(0, 63), crash=st.sampled_from(CRASHES))
    def deliver(self, pick: int, crash: str | None) -> None:
        """A queued message, first delivery or after a crash, its attempt maybe crashing."""
        self.world.steps += 1
        self._deliver(self.pending.pop(pick % len(self.pending)), crash)

    @precondition(lambda self: bool(self.acked))
    @rule(pick=st.integers(0, 63), crash=st.sampled_from(CRASHES))
    def deliver_again(self, pick: int, crash: str | None) -> None:
        """A message already acked, delivered again (its ack was lost on the way)."""
        self.world.steps += 1
        message = self.acked[pick % len(self.acked)]
        self._deliver(replace(message, redelivered=True), crash)

    @rule(seconds=st.sampled_from(TICKS), full=st.booleans(), crash=st.booleans())
    def pass_time(self, seconds: float, full: bool, crash: bool) -> None:
        """Time passes; the timers fire, or the whole recovery sweep runs."""
        self.world.steps += 1
        self._tick(seconds, full, crash)

    @precondition(lambda self: bool(self.runs))
    @rule(
        operation=st.sampled_from(OPERATIONS),
        pick=st.integers(0, MAX_RUNS - 1),
        at=st.integers(0, 63),
        crash=st.booleans(),
    )
    def operate(self, operation: str, pick: int, at: int, crash: bool) -> None:
        """An operator's call on a run: refused (changing nothing) where its status says no.
        ``at`` picks the checkpoint a restart starts from; ``crash`` kills an event's sender
        after its wake committed, before its dispatch."""
        self.world.steps += 1
        run = self.engine.get(self.runs[pick % len(self.runs)])
        with self._operating(run):
            if operation == "restart_from":
                history = run.history()
                run.restart_from(history[at % len(history)], by="machine")
            elif operation == "send_event":
                self._send_event(run, crash)
            else:
                getattr(run, operation)(by="machine")

    def _send_event(self, run: Execution, crash: bool) -> None:
        try:
            with crash_at(AFTER_WAKE) if crash else nullcontext():
                run.send_event("go", {"from": "machine"}, by="machine")
        except SimulatedCrash:
            pass  # the sender died after the wake committed, before its dispatch

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def every_run_is_explained_by_its_history(self) -> None:
        for execution_id in self.runs:
            self._check(execution_id)
        assert self.engine.verify() == []

    def _check(self, execution_id: str) -> None:
        store = self.engine.store
        record = store.get_execution(execution_id)
        history = store.list(execution_id)
        where = f"{execution_id} ({record.status}): {listing(history)}"
        keys = Counter((cp.kind, cp.node, cp.visit) for cp in history)
        twice = [key for key, n in keys.items() if n > 1]
        assert not twice, f"committed twice {twice} in {where}"
        assert [cp.seq for cp in history] == list(range(record.version + 1)), where
        now = {cp.seq: (str(cp.kind), cp.node, cp.visit, cp.checksum) for cp in history}
        for (run, seq), was in self.seen.items():
            if run == execution_id:
                assert now.get(seq) == was, f"checkpoint {seq} {was} lost or changed: {where}"
        self.seen.update({(execution_id, seq): fact for seq, fact in now.items()})
        last = history[-1]
        assert record.cursor.to_json() == last.cursor.to_json(), f"cursor is not the last: {where}"
        assert record.state == folded(history, REDUCED[record.graph], where), where
        explained = replayed(history, saga=record.graph == SAGA)
        assert record.status == explained, f"status should be {explained}: {where}"
        self._check_effects(execution_id, record.cursor.undo, history, where)

    def _check_effects(
        self, execution_id: str, undo: list[Undo], history: list[Checkpoint], where: str
    ) -> None:
        committed = {(str(cp.kind), cp.node, cp.visit) for cp in history}
        for node, visit, _ in undo:
            assert ("node", node, visit) in committed and node in UNDOABLE, (
                f"{node}:{visit} is to be undone, a step without a commit or compensation: {where}"
            )
        for cp in history:
            if cp.kind in (Kind.NODE, Kind.COMPENSATION):
                ran = self.calls[(execution_id, str(cp.kind), cp.node, cp.visit)]
                assert ran > 0, f"{cp.kind} {cp.node}:{cp.visit} committed, never ran: {where}"
        for run, kind, node, visit in self.calls:
            if run == execution_id and kind == "compensation":
                assert ("node", node, visit) in committed, (
                    f"compensated {node}:{visit}, a step that never committed: {where}"
                )

    # -- the end ------------------------------------------------------------------------------

    def teardown(self) -> None:
        self.world.examples += 1
        try:
            # Only on a machine that held so far: a failure is reported as it happened.
            if self.durable is not None and sys.exc_info()[1] is None:
                self._settle()
        finally:
            if self.durable is not None:
                self._empty_queue()
                self.durable.db.dispose()
            shutil.rmtree(self.folder, ignore_errors=True)

    def _settle(self) -> None:
        """No more crashes: every message delivered, full sweeps as time passes, until quiet;
        then every run rests where only an operator or an event moves it.

        Quiet is two sweeps in a row that send nothing: a sweep re-sends a stale run only if
        no sweep did in the last ``stale_after`` (60 s), so a run swept just before the first
        is healed by the second, 60 s later."""
        quiet = 0
        for _ in range(SETTLE_ROUNDS):
            for _ in range(200):
                if not self.pending:
                    break
                self._deliver(self.pending.pop(0), None)
            self._tick(60, full=True, crash=False)
            quiet = 0 if self.pending else quiet + 1
            if quiet == 2:
                break
        self.every_run_is_explained_by_its_history()
        for execution_id in self.runs:
            record = self.engine.store.get_execution(execution_id)
            where = f"{execution_id}: {listing(self.engine.store.list(execution_id))}"
            assert record.status not in (S.RUNNING, S.COMPENSATING, S.PENDING), (
                f"{record.status} with nothing left to deliver: {where}"
            )
            if record.status == S.WAITING:
                kinds = [wait.kind for wait in record.cursor.waits.values()]
                assert kinds == ["event"], f"waits {kinds} after time passed: {where}"

    def _empty_queue(self) -> None:
        app = self.engine.app
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(app.conf.task_default_queue)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database migrated once, that each example copies."""
    path = tmp_path_factory.mktemp("state-machine") / "template.sqlite3"
    durable = Durable(embedded_app("machine-template"), database_url=f"sqlite:///{path}")
    durable.migrate()
    durable.db.dispose()
    return path


@pytest.mark.timeout(3600 if PROFILE == LONG else 300)
def test_random_interleavings_commit_once_lose_nothing_and_explain_every_status(
    template: Path,
) -> None:
    world = World(template)
    started = time.monotonic()
    with engine_time(world.clock):
        # Any factory of machines will do (its docstring); the annotation says a class.
        run_state_machine_as_test(
            lambda: Interleavings(world),  # type: ignore[arg-type]
            settings=settings.get_profile(PROFILE),
        )
    took = time.monotonic() - started
    print(f"\n{PROFILE}: {world.examples} examples, {world.steps} steps in {took:.1f} s")
    assert world.examples > 0
