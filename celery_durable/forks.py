"""Values that belong to one process (or one thread of it), safe across ``os.fork``.

Celery's prefork pool forks workers from a parent that may already hold pools, sockets and
threads. A forked child shares those file descriptors with its parent: using one interleaves
two processes on one socket, and closing one (even by a finalizer on garbage collection)
can end the parent's session. So a child makes its own value and leaves the inherited one
alone, referenced and untouched, for as long as the child lives.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_instances: weakref.WeakSet[ProcessLocal[Any]] = weakref.WeakSet()


class ProcessLocal(Generic[T]):
    """One value per process, made on first use; a forked child makes its own and never
    touches (or closes) its parent's."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._values: dict[int, T] = {}
        self._lock = threading.Lock()
        _instances.add(self)

    def get(self) -> T:
        """This process's value, made now if absent."""
        slots, pid = self._slots(), os.getpid()
        if pid not in slots:
            with self._making():
                if pid not in slots:
                    slots[pid] = self._make()
        return slots[pid]

    def peek(self) -> T | None:
        """This process's value, or None; never makes one."""
        return self._slots().get(os.getpid())

    def clear(self) -> T | None:
        """Take this process's value out and return it, so the caller can close it: None if
        there is none, or if the only one was made by another process (it is not ours to close)."""
        with self._making():
            return self._slots().pop(os.getpid(), None)

    def _slots(self) -> dict[int, T]:
        # Keyed by pid, so an inherited value stays referenced (no finalizer runs on it in
        # the child) yet is never returned there.
        return self._values

    def _making(self) -> AbstractContextManager[object]:
        return self._lock

    def _after_fork(self) -> None:
        # A thread of the parent may have held the lock at the fork: in the child nobody
        # ever will release it.
        self._lock = threading.Lock()


class ThreadLocal(ProcessLocal[T]):
    """The same, one value per thread of each process."""

    def __init__(self, make: Callable[[], T]) -> None:
        super().__init__(make)
        self._local = threading.local()

    def _slots(self) -> dict[int, T]:
        slots: dict[int, T] | None = getattr(self._local, "values", None)
        if slots is None:
            slots = self._local.values = {}
        return slots

    def _making(self) -> AbstractContextManager[object]:
        # Only this thread sees its values: making one need not wait for other threads.
        return contextlib.nullcontext()


def _reset_locks() -> None:
    for instance in list(_instances):
        instance._after_fork()


os.register_at_fork(after_in_child=_reset_locks)
