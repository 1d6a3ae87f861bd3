"""The fleet's versions: which worker serves which version of which graph, on which routing
keys, as the workers' own heartbeat rows say (persistence/deployments.py).

A worker joins when it starts: it refuses to start when a live worker serves one of its
versions with another structure, then announces what it serves and beats while it runs.
A node task whose run's version this worker lacks asks ``serving`` whether a live worker
has it on the message's routing key: the answer is cached for a heartbeat, so a rolling
deploy's stream of such messages costs one read per heartbeat, not one per message.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

from celery_durable.engine.definition import GraphDefinition
from celery_durable.errors import VersionClash
from celery_durable.model.records import utcnow
from celery_durable.persistence.deployments import Deployment, Deployments, Served

logger = logging.getLogger(__name__)

# A worker whose heartbeat is this many beats old is taken for dead.
LIVE_BEATS = 3
# Rows of workers gone this long are removed when a worker joins.
FORGET_AFTER = timedelta(days=1)


class Fleet:
    """The live workers' versions, as this process sees them."""

    def __init__(self, deployments: Deployments, heartbeat: float) -> None:
        self.rows = deployments
        self.heartbeat = heartbeat
        self._cache: tuple[float, list[Deployment]] | None = None
        self._lock = threading.Lock()

    def live(self, graph: str | None = None) -> list[Deployment]:
        """The rows of live workers, read now."""
        since = utcnow() - timedelta(seconds=self.heartbeat * LIVE_BEATS)
        return self.rows.live(since, graph)

    def known(self, graph: str) -> list[Deployment]:
        """Every row of ``graph`` not yet forgotten, the dead workers' included: what a
        version that is no longer served looked like."""
        return self.rows.live(utcnow() - FORGET_AFTER, graph)

    def serving(self, graph: str, version: str, routing_key: str | None) -> list[Deployment]:
        """Live workers that serve ``version`` of ``graph`` and consume ``routing_key`` (any,
        if None); read at most once a heartbeat."""
        return [
            d
            for d in self.versions(graph)
            if d.served.version == version
            and (routing_key is None or routing_key in d.routing_keys)
        ]

    def versions(self, graph: str) -> list[Deployment]:
        """Live workers' rows of ``graph``, read at most once a heartbeat."""
        with self._lock:
            cached = self._cache
            if cached is None or time.monotonic() - cached[0] > self.heartbeat:
                cached = self._cache = (time.monotonic(), self.live())
        return [d for d in cached[1] if d.served.graph == graph]


def served(definition: GraphDefinition) -> Served:
    return Served(definition.name, definition.version, definition.fingerprint, definition.shape())


class Member:
    """This worker in the fleet: joined on start, beating while it runs, gone on shutdown."""

    def __init__(
        self,
        fleet: Fleet,
        worker: str,
        definitions: list[GraphDefinition],
        routing_keys: list[str],
    ) -> None:
        self.fleet = fleet
        self.worker = worker
        self.served = [served(d) for d in definitions]
        self.routing_keys = routing_keys
        self._next_beat = 0.0

    def join(self) -> None:
        """Refuse (VersionClash) a version a live worker serves with another structure, then
        announce what this worker serves."""
        others = [d for d in self.fleet.live() if d.worker != self.worker]
        for mine in self.served:
            for other in others:
                theirs = other.served
                if (theirs.graph, theirs.version) == (mine.graph, mine.version) and (
                    theirs.fingerprint != mine.fingerprint
                ):
                    raise VersionClash(
                        mine.graph,
                        mine.version,
                        f"worker {other.worker}",
                        difference(theirs.shape, mine.shape),
                    )
        now = utcnow()
        self.fleet.rows.forget(now - FORGET_AFTER)
        self.fleet.rows.announce(self.worker, self.served, self.routing_keys, now)
        self._next_beat = time.monotonic() + self.fleet.heartbeat

    def beat(self) -> None:
        """Called often (the recovery loop's timer ticks); writes once a heartbeat."""
        if time.monotonic() < self._next_beat:
            return
        self._next_beat = time.monotonic() + self.fleet.heartbeat
        if not self.fleet.rows.beat(self.worker, utcnow()):
            self.fleet.rows.announce(self.worker, self.served, self.routing_keys, utcnow())

    def leave(self) -> None:
        gone = utcnow() - timedelta(seconds=self.fleet.heartbeat * LIVE_BEATS + 1)
        try:
            self.fleet.rows.leave(self.worker, gone)
        except Exception:
            # Its rows go stale and stop counting after LIVE_BEATS heartbeats anyway.
            logger.warning("could not remove worker %s from the fleet's rows", self.worker)


def difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What changed from one structure (``GraphDefinition.shape``) to another, in words."""
    said: list[str] = []
    old_nodes, new_nodes = old.get("nodes", {}), new.get("nodes", {})
    added = sorted(set(new_nodes) - set(old_nodes))
    removed = sorted(set(old_nodes) - set(new_nodes))
    if added:
        said.append(f"nodes added: {', '.join(added)}")
    if removed:
        said.append(f"nodes removed: {', '.join(removed)}")
    changed = sorted(n for n in set(old_nodes) & set(new_nodes) if old_nodes[n] != new_nodes[n])
    if changed:
        said.append(f"routing options changed on: {', '.join(changed)}")
    if old.get("entry") != new.get("entry"):
        said.append(f"entry {old.get('entry')} became {new.get('entry')}")
    for part in ("edges", "joins", "branches"):
        before, after = old.get(part, {}), new.get(part, {})
        moved = [
            f"{src} → {'/'.join(before.get(src, [])) or '(none)'} became "
            f"{'/'.join(after.get(src, [])) or '(none)'}"
            for src in sorted(set(before) | set(after))
            if before.get(src) != after.get(src)
        ]
        if moved:
            said.append(f"{part} changed: {'; '.join(moved)}")
    if old.get("on_failure") != new.get("on_failure"):
        said.append(f"on_failure {old.get('on_failure')} became {new.get('on_failure')}")
    return "; ".join(said) or "same structure"
