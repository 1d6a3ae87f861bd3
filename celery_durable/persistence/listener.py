"""Waking a waiter when its run ends, and a stream when a run it follows commits: one
LISTEN connection per process, read by a thread.

A commit that ends a run notifies FINISHED_CHANNEL (postgres.py's statements); the listener
wakes the waiters of the execution each notification names. A commit or an emit of a run
someone streams notifies STREAM_CHANNEL; the listener wakes the streams that follow it
(stream_watch.py) and keeps their reader rows alive.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from sqlalchemy import URL

from celery_durable.persistence.stream_watch import STREAM_CHANNEL, StreamRegistry, StreamSlot

logger = logging.getLogger(__name__)
LISTEN_READY_TIMEOUT = 5.0
LISTEN_POLL = 1.0
# The channel a run's end is notified on; the notification carries the row (postgres.py).
FINISHED_CHANNEL = "durable_finished"


class _Slot:
    """One waiter's wake-up, and the row its notification carried, if it carried one."""

    __slots__ = ("event", "row")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.row: dict[str, Any] | None = None


def read_notice(payload: str) -> tuple[str, dict[str, Any] | None]:
    """The execution id a notification names, and the row it carries (None: read it). A
    worker of an earlier release sends the bare id."""
    if payload.startswith("{"):
        try:
            notice = json.loads(payload)
        except ValueError:
            notice = None
        if isinstance(notice, dict) and isinstance(notice.get("id"), str):
            return notice["id"], notice if "version" in notice else None
    return payload, None


class Listener:
    """One LISTEN connection per process, read by a daemon thread that wakes the waiters of
    the execution named in each notification.

    Waiting costs no connection and no LISTEN/UNLISTEN round trips of its own. A waiter still
    looks at the row itself once a second, and every waiter is woken to look when the
    connection is (re)made, so a notification lost in between delays a waiter, never strands it.
    """

    def __init__(self, url: URL) -> None:
        # What the pools connect with, hosts lists and options included (a URL rendered back
        # to a string keeps only the last of several host= parameters).
        args, params = url.get_dialect()().create_connect_args(url)
        params.pop("context", None)
        self._conninfo = make_conninfo(*args, **params)
        self._waiting: dict[str, set[_Slot]] = {}
        self._lock = threading.Lock()
        self._tried = threading.Event()  # the first connection attempt is over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._streams = StreamRegistry()

    def subscribe(self, execution_id: str) -> _Slot:
        """A slot set when ``execution_id`` ends (or when the waiter should look again)."""
        slot = _Slot()
        with self._lock:
            self._waiting.setdefault(execution_id, set()).add(slot)
        self._listening()
        return slot

    def watch(self, slot: StreamSlot) -> None:
        """Wake ``slot`` when a run its keys name commits or emits."""
        self._streams.add(slot)
        self._listening()

    def unwatch(self, slot: StreamSlot) -> None:
        self._streams.remove(slot)

    def _listening(self) -> None:
        """Start the thread if it is not running; only a notification sent after LISTEN is
        heard: the first time, wait for the thread to LISTEN (or to fail; waiters and
        streams then look once a second)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="durable-listener", daemon=True
                )
                self._thread.start()
        self._tried.wait(LISTEN_READY_TIMEOUT)

    def unsubscribe(self, execution_id: str, slot: _Slot) -> None:
        with self._lock:
            waiting = self._waiting.get(execution_id)
            if waiting is not None:
                waiting.discard(slot)
                if not waiting:
                    del self._waiting[execution_id]

    def close(self) -> None:
        """Stop listening; the thread ends within LISTEN_POLL seconds, on its own."""
        self._stop.set()

    def _wake(self, execution_id: str | None = None, row: dict[str, Any] | None = None) -> None:
        with self._lock:
            if execution_id is None:
                woken = [slot for slots in self._waiting.values() for slot in slots]
            else:
                woken = list(self._waiting.get(execution_id, ()))
        for slot in woken:
            slot.row = row
            slot.event.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {FINISHED_CHANNEL}")
                    conn.execute(f"LISTEN {STREAM_CHANNEL}")
                    self._streams.refresh(conn)
                    # Whatever ended or committed while nobody listened: look again.
                    self._wake()
                    self._streams.wake_all()
                    self._tried.set()
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=LISTEN_POLL):
                            if notice.channel == STREAM_CHANNEL:
                                self._streams.notice(notice.payload)
                            else:
                                self._wake(*read_notice(notice.payload))
                        self._streams.refresh_if_due(conn)
            except psycopg.Error as exc:
                if not self._stop.is_set():
                    logger.warning("listening for notifications failed (%s); retrying in 1s", exc)
            finally:
                self._tried.set()
                self._wake()
                self._streams.wake_all()
            self._stop.wait(1.0)


class Waiter:
    """Wakes when one execution ends, through the process's Listener."""

    first_pause = 1.0
    max_pause = 1.0

    def __init__(self, listener: Listener, execution_id: str) -> None:
        self._listener = listener
        self._execution_id = execution_id
        self._slot = listener.subscribe(execution_id)

    def wait(self, timeout: float) -> dict[str, Any] | None:
        slot = self._slot
        if not slot.event.wait(timeout):
            return None
        slot.event.clear()
        row, slot.row = slot.row, None
        return row

    def close(self) -> None:
        self._listener.unsubscribe(self._execution_id, self._slot)
