"""Flow control at a node visit's door: circuit breakers and fleet-wide rate limits
(engine/admission.py applies them, with concurrency keys, at a visit's door).

A visit that may not run now is held: a row in the visit ledger, due when it may try again,
saying what holds it. No worker waits and no attempt is counted; the recovery sweep's timer
loop sends the visit again when the row comes due. A success costs a breaker nothing; only
failures, probes and rejections write.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from celery_durable.coroutines import settled
from celery_durable.engine.definition import GraphDefinition
from celery_durable.errors import InvalidNodeOption, UndeclaredName, UnknownBreaker
from celery_durable.model.records import BreakerRow, BreakerState, utcnow
from celery_durable.persistence.flow_rows import BreakerStatus, FlowStore
from celery_durable.persistence.slot_table import SlotTable
from celery_durable.policies.breakers import Admission, BreakerPolicy, admit, record
from celery_durable.policies.limits import RateLimit

T = TypeVar("T")


# A call whose rate turn is this near waits for it in the worker, so that it starts at its
# turn: neither the broker (Celery runs a countdown message up to a second late) nor a timer
# is that precise, and a call run late bunches up with the calls after it.
NEAR = timedelta(seconds=1.5)
# A call held for a turn further away comes back this long before it, and waits the rest.
EARLY = timedelta(seconds=1.0)


@dataclass(frozen=True, slots=True)
class Held:
    """Come back at ``until``: ``by`` ("breaker payments", "rate stripe") holds the visit;
    ``turn``: the rate turn reserved for it, which it runs at when it comes back."""

    until: datetime
    by: str
    turn: datetime | None = None

    @property
    def passed(self) -> str:
        """What the visit comes back with: what held it, and its turn if it has one."""
        return self.by if self.turn is None else f"{self.by}@{self.turn.timestamp():.6f}"


@dataclass(frozen=True, slots=True)
class Turn:
    """A rate turn reserved for a call: it starts at ``at``, or not at all. Met at the call
    itself (``FlowControl.meet``), after everything else the attempt does first, so that the
    calls start evenly spaced, never bunched up in a window."""

    rate: RateLimit
    by: str
    at: datetime

    @property
    def grace(self) -> timedelta:
        """How late a call may still start at its turn: half the spacing, so that no window
        of ``per`` seconds holds more than ``limit`` calls (one more for the clock's
        granularity)."""
        return self.rate.interval / 2


def shown(passed: str) -> str:
    """What holds a visit, as an operator reads it (without a reserved turn's time)."""
    by, at, turn = passed.rpartition("@")
    return by if at and turn.replace(".", "", 1).isdigit() else passed


class HeldBack(BaseException):
    """``ctx.step(..., breaker=)`` met an open breaker: the whole visit is held. A
    BaseException, so that a node's ``except Exception`` cannot swallow it."""

    def __init__(self, held: Held, *, by_message: bool = False) -> None:
        super().__init__(held.by)
        self.held = held
        # A rate turn's hold: it waits as a message with a countdown when it is close.
        self.by_message = by_message


class FlowControl:
    """The breakers declared on one Durable, and the shared rows behind them and the rates."""

    def __init__(self, store: FlowStore, slots: SlotTable, probe_ttl: float) -> None:
        self.store = store
        self.slots = slots
        self.probe_ttl = probe_ttl
        self.policies: dict[str, BreakerPolicy] = {}

    def declare(self, policy: BreakerPolicy) -> BreakerPolicy:
        self.policies[policy.name] = policy
        return policy

    def check(self, definitions: Iterable[GraphDefinition]) -> None:
        """Refuse what a worker cannot run: a node's breaker nobody declared (UndeclaredName),
        one rate limit name with two rates (InvalidNodeOption)."""
        rates: dict[str, tuple[RateLimit, str]] = {}
        for graph in definitions:
            for node in graph.nodes.values():
                where = f"{graph.name}.{node.name}"
                if node.breaker is not None and node.breaker not in self.policies:
                    raise UndeclaredName(
                        graph.name,
                        node.name,
                        "circuit breaker",
                        node.breaker,
                        self.policies,
                        f"Declare it with durable.breaker({node.breaker!r}, ...) before the "
                        "worker starts, or fix the name.",
                    )
                if node.rate is None:
                    continue
                seen = rates.setdefault(node.rate.name, (node.rate, where))
                if seen[0] != node.rate:
                    raise InvalidNodeOption(
                        f"Rate limit {node.rate.name!r} is {_rate(seen[0])} on {seen[1]} and "
                        f"{_rate(node.rate)} on {where}: one name is one limit across the fleet. "
                        "Give both the same rate, or each its own name."
                    )

    def policy(self, name: str) -> BreakerPolicy:
        try:
            return self.policies[name]
        except KeyError:
            raise UnknownBreaker(name, self.policies) from None

    def admit(self, breaker: str) -> Admission:
        """May a call behind ``breaker`` go now? A rejection is counted."""
        policy = self.policy(breaker)
        with self.store.locked_breaker(breaker) as locked:
            admission, changed = admit(policy, locked.row, utcnow(), self.probe_ttl)
            locked.write(changed)
        if not admission.allowed:
            self.store.reject(breaker)
        return admission

    def call(self, breaker: str, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """``fn(*args)`` behind ``breaker``, or HeldBack while it is open."""
        admission = self.admit(breaker)
        if admission.retry_at is not None:
            raise HeldBack(Held(admission.retry_at, f"breaker {breaker}"))
        try:
            result = settled(fn(*args))
        except Exception:
            self.report(breaker, False, admission.probe)
            raise
        self.report(breaker, True, admission.probe)
        return result

    def report(self, breaker: str, ok: bool, probe: bool) -> None:
        """A call behind ``breaker`` ended. Successes outside a probe change nothing."""
        if ok and not probe:
            return
        policy = self.policy(breaker)
        with self.store.locked_breaker(breaker) as locked:
            locked.write(record(policy, locked.row, ok, utcnow(), probe))

    def take_turn(self, rate: RateLimit, by: str, passed: str | None) -> Held | Turn:
        """This call's turn under ``rate``: the Turn to meet when it is near, else the hold
        until it nears. A visit sent again for its turn (``passed``) keeps that turn, unless
        it came back too late for it."""
        if passed is not None and passed.startswith(f"{by}@"):
            at = datetime.fromtimestamp(float(passed[len(by) + 1 :]), UTC)
            if utcnow() <= at + rate.interval / 2:
                return _near(Turn(rate, by, at))
        return _near(Turn(rate, by, self.store.reserve(rate.name, rate.interval, utcnow())))

    def meet(self, turn: Turn) -> Held | None:
        """Right before the call: wait for its turn. A turn missed (the call came too late
        for it) is given up for a new one, waited for too when near, else held for."""
        while True:
            early = (turn.at - utcnow()).total_seconds()
            if early > 0:
                time.sleep(early)
            if utcnow() - turn.at <= turn.grace:
                return None
            taken = self.take_turn(turn.rate, turn.by, None)
            if isinstance(taken, Held):
                return taken
            turn = taken

    def set(self, name: str, state: BreakerState, by: str) -> None:
        """An operator opens or closes a breaker; an opened one half-opens after reset_after."""
        if name not in self.policies and name not in {b.name for b in self.store.breakers()}:
            raise UnknownBreaker(name, self.policies)
        now = utcnow()
        row = BreakerRow(state, opened_at=now) if state == BreakerState.OPEN else BreakerRow()
        self.store.set_breaker(name, row, by)

    def breakers(self) -> list[BreakerStatus]:
        """Every declared or stored breaker, with its state (closed when never used)."""
        stored = {status.name: status for status in self.store.breakers()}
        return [
            stored.get(name) or BreakerStatus(name, BreakerRow(), 0, None, None)
            for name in sorted(set(self.policies) | set(stored))
        ]


def _near(turn: Turn) -> Held | Turn:
    """A turn near enough to wait for in the worker; the hold for one further away."""
    if turn.at - utcnow() > NEAR:
        return Held(turn.at - EARLY, turn.by, turn.at)
    return turn


def _rate(rate: RateLimit) -> str:
    return f"{rate.limit} per {rate.per:g}s"
