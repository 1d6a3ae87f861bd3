"""Waking a stream when a run it follows commits or emits (PostgreSQL).

A NOTIFY in a commit takes PostgreSQL's notification lock until the commit ends, which
serializes every committing transaction that notifies: measured on two cores, node commits
a second fell by 5 to 20% at two committers and by half at eight. So a commit notifies only
when a row of ``durable_stream_readers`` names its run, its graph or every run (postgres.py's
statements look: about 10 us a commit, a probe of a table that is empty while nobody
streams). A stream writes its rows before its first read and deletes them when it closes;
its process's listener thread refreshes them, so the rows of a process that died expire.

Whatever a notification could miss (a commit that began before the rows were written, a
connection lost and made again) the stream finds by looking again once a second
(``FALLBACK``): late, never lost.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any, Protocol

from sqlalchemy import Engine

from celery_durable.persistence.stream_rows import (
    EVERY_RUN,
    STREAM_READERS_TABLE,
    graph_key,
    run_key,
)

# The channel commits and emits of streamed runs notify, with {"id", "graph", "seq"}.
STREAM_CHANNEL = "durable_stream"
# How long a reader's rows live unless its process refreshes them, and how often it does.
READER_TTL = 60.0
REFRESH_EVERY = 20.0
# Between notifications a stream looks again this often, for what one could have missed.
FALLBACK = 1.0

REGISTER = f"""
INSERT INTO {STREAM_READERS_TABLE} (key, reader, expires_at)
SELECT key, reader, now() + make_interval(secs => %(ttl)s)
  FROM unnest(%(keys)s::text[], %(readers)s::text[]) AS r(key, reader)
    ON CONFLICT (key, reader) DO UPDATE SET expires_at = EXCLUDED.expires_at
"""
FORGET = f"DELETE FROM {STREAM_READERS_TABLE} WHERE reader = %(reader)s OR expires_at < now()"


class StreamSlot:
    """One stream's wake-up, and the runs notified since it last looked."""

    __slots__ = ("_everything", "_lock", "_noticed", "event", "keys", "reader")

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = tuple(keys)
        self.reader = uuid.uuid4().hex
        self.event = threading.Event()
        self._lock = threading.Lock()
        self._noticed: set[str] = set()
        # Look at every run it follows: the connection was made again.
        self._everything = False

    def notify(self, execution_id: str | None) -> None:
        """``execution_id`` committed or emitted (None: anything may have)."""
        with self._lock:
            if execution_id is None:
                self._everything = True
            else:
                self._noticed.add(execution_id)
            self.event.set()

    def take(self) -> set[str] | None:
        """What was notified since the last take; None: look at everything."""
        with self._lock:
            self.event.clear()
            noticed, everything = self._noticed, self._everything
            self._noticed, self._everything = set(), False
        return None if everything else noticed


class Watcher(Protocol):
    """What a stream needs of the process's listener (listener.Listener): to be woken."""

    def watch(self, slot: StreamSlot) -> None: ...

    def unwatch(self, slot: StreamSlot) -> None: ...


class StreamRegistry:
    """The open streams of one process, by key; their rows kept alive by the listener."""

    def __init__(self) -> None:
        self._slots: dict[str, set[StreamSlot]] = {}
        self._lock = threading.Lock()
        self._refreshed = 0.0

    def add(self, slot: StreamSlot) -> None:
        with self._lock:
            for key in slot.keys:
                self._slots.setdefault(key, set()).add(slot)

    def remove(self, slot: StreamSlot) -> None:
        with self._lock:
            for key in slot.keys:
                slots = self._slots.get(key)
                if slots is not None:
                    slots.discard(slot)
                    if not slots:
                        del self._slots[key]

    def notice(self, payload: str) -> None:
        """Wake the streams of the run a notification names."""
        try:
            notice = json.loads(payload)
            execution_id, graph = str(notice["id"]), str(notice["graph"])
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            woken = {
                slot
                for key in (run_key(execution_id), graph_key(graph), EVERY_RUN)
                for slot in self._slots.get(key, ())
            }
        for slot in woken:
            slot.notify(execution_id)

    def wake_all(self) -> None:
        """After a (re)connection: what was notified meanwhile is unknown, so look at all."""
        with self._lock:
            woken = {slot for slots in self._slots.values() for slot in slots}
        for slot in woken:
            slot.notify(None)

    def refresh_if_due(self, conn: Any) -> None:
        """``refresh`` every REFRESH_EVERY seconds."""
        if time.monotonic() - self._refreshed >= REFRESH_EVERY:
            self.refresh(conn)

    def refresh(self, conn: Any) -> None:
        """Write every open stream's rows again, on the listener's connection: they live
        READER_TTL seconds more."""
        self._refreshed = time.monotonic()
        with self._lock:
            pairs = [(key, slot.reader) for key, slots in self._slots.items() for slot in slots]
        if pairs:
            keys, readers = [key for key, _ in pairs], [reader for _, reader in pairs]
            conn.execute(REGISTER, {"ttl": READER_TTL, "keys": keys, "readers": readers})


class StreamWaiter:
    """What a stream waits on, on PostgreSQL: its rows written, its slot in the listener."""

    first_pause = FALLBACK
    max_pause = FALLBACK

    def __init__(self, listener: Watcher, engine: Engine, keys: Iterable[str]) -> None:
        self._listener = listener
        self._engine = engine
        self._slot = StreamSlot(keys)
        listener.watch(self._slot)
        # Written before the stream's first read: every commit that begins after this
        # notifies, and the first read finds what committed before.
        keys, reader = list(self._slot.keys), self._slot.reader
        self._write(REGISTER, ttl=READER_TTL, keys=keys, readers=[reader] * len(keys))

    def wait(self, timeout: float) -> set[str] | None:
        """The runs notified since the last call (empty: none, it timed out), or None: look
        at every run followed."""
        if not self._slot.event.wait(timeout):
            return None
        return self._slot.take()

    def close(self) -> None:
        self._listener.unwatch(self._slot)
        self._write(FORGET, reader=self._slot.reader)

    def _write(self, statement: str, **params: Any) -> None:
        with self._engine.connect() as conn:
            conn.exec_driver_sql(statement, params)
            conn.commit()
