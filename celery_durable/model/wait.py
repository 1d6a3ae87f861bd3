"""What a waiting node visit waits for, and how waits change a run's position.

A node may wait inside its function (``ctx.sleep``, ``ctx.wait_for_event``, ``ctx.wait_child``,
``ctx.map``) or before or after it runs (``interrupt_before=``, ``interrupt_after=``). Each
wait is a slot of its node visit: in-node waits are numbered in the order the function asks
for them ("0", "1", ...); interrupts are "before" and "after". While a wait is open it is in
the cursor, and its visit (or, after an interrupt_after, the visits the node made ready) is
not in flight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Visit = tuple[str, int]

WaitKind = Literal["sleep", "event", "interrupt", "child", "children"]
BEFORE = "before"
AFTER = "after"


@dataclass(frozen=True, slots=True)
class Wait:
    """One open wait of one node visit."""

    kind: WaitKind
    node: str
    visit: int
    slot: str
    # When a sleep ends or an event wait times out (epoch seconds), if ever.
    until: float | None = None
    # The event waited for.
    event: str | None = None
    # The child run waited for; for "children" (ctx.map), the prefix of their ids.
    child: str | None = None
    # For "children": how many there are.
    count: int | None = None
    # After an interrupt_after: the visits the node made ready, dispatched on resume.
    ready: tuple[Visit, ...] = field(default=())

    @property
    def key(self) -> str:
        return f"{self.node}:{self.visit}:{self.slot}"

    @property
    def checkpoint_node(self) -> str:
        """The node name its wait and wake checkpoints carry: unique per visit and slot."""
        return f"{self.node}@{self.slot}"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": self.kind,
            "node": self.node,
            "visit": self.visit,
            "slot": self.slot,
        }
        if self.until is not None:
            data["until"] = self.until
        if self.event is not None:
            data["event"] = self.event
        if self.child is not None:
            data["child"] = self.child
        if self.count is not None:
            data["count"] = self.count
        if self.ready:
            data["ready"] = [list(v) for v in self.ready]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Wait:
        return cls(
            kind=data["kind"],
            node=data["node"],
            visit=int(data["visit"]),
            slot=str(data["slot"]),
            until=data.get("until"),
            event=data.get("event"),
            child=data.get("child"),
            count=data.get("count"),
            ready=tuple((n, int(v)) for n, v in data.get("ready", [])),
        )

    def public(self) -> dict[str, Any]:
        """What ``Execution.waiting_on`` shows: what for, where, until when."""
        shown: dict[str, Any] = {"kind": self.kind, "node": self.node}
        if self.kind == "interrupt":
            shown["when"] = self.slot
        if self.event is not None:
            shown["event"] = self.event
        if self.kind == "child":
            shown["child"] = self.child
        if self.kind == "children":
            shown["children"] = self.count
        if self.until is not None:
            shown["until"] = datetime.fromtimestamp(self.until, UTC).isoformat()
        return shown
