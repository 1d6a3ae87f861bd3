"""ProcessLocal and ThreadLocal: a forked child never sees its parent's value."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time

import pytest

from celery_durable.forks import ProcessLocal, ThreadLocal

fork_only = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _counter() -> ProcessLocal[int]:
    made = itertools.count(1)
    return ProcessLocal(lambda: next(made))


def _in_child(check: ProcessLocal[int]) -> int:
    """Exit status of a forked child: 0 when it saw no inherited value and made its own."""
    pid = os.fork()
    if pid == 0:
        status = 3
        try:
            fresh = check.peek() is None and check.clear() is None
            made = check.get()
            status = 0 if fresh and made == 2 and check.get() == made else 1
        finally:
            os._exit(status)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _exit_code(pid: int, timeout: float = 5.0) -> int:
    """The child's exit code; a child still running after ``timeout`` is killed (-9)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    return _exit_code(pid)


def test_made_once_per_process_and_cleared() -> None:
    local = _counter()
    assert local.peek() is None
    assert local.get() == 1
    assert local.get() == 1
    assert local.peek() == 1
    assert local.clear() == 1
    assert local.peek() is None
    assert local.get() == 2


@fork_only
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_forked_child_makes_its_own() -> None:
    # Given a value made in the parent
    local = _counter()
    assert local.get() == 1
    # When a child forks, then it neither sees nor clears the parent's, and makes its own
    assert _in_child(local) == 0
    # And the parent's value is still the parent's
    assert local.get() == 1


@fork_only
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fork_while_another_thread_makes_does_not_deadlock_the_child() -> None:
    inside, release = threading.Event(), threading.Event()
    made = itertools.count(1)

    def slow() -> int:
        inside.set()
        release.wait(5)
        return next(made)

    local: ProcessLocal[int] = ProcessLocal(slow)
    maker = threading.Thread(target=local.get)
    maker.start()
    assert inside.wait(5)  # the lock is held by another thread at the fork
    pid = os.fork()
    if pid == 0:
        release.set()  # the child's own make must not wait for the parent's thread
        os._exit(0 if local.get() == 1 else 1)  # its copy of the counter: the parent's made none
    release.set()
    maker.join(5)
    assert _exit_code(pid) == 0
    assert local.get() == 1


def test_threads_get_their_own() -> None:
    made = itertools.count(1)
    local: ThreadLocal[int] = ThreadLocal(lambda: next(made))
    mine = local.get()
    seen: list[int | None] = []

    def other() -> None:
        seen.append(local.peek())
        seen.append(local.get())
        seen.append(local.get())

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == [None, 2, 2]
    assert local.get() == mine == 1


def test_process_local_is_shared_by_threads_and_made_once() -> None:
    made = itertools.count(1)
    barrier = threading.Barrier(8)

    def make() -> int:
        return next(made)

    local: ProcessLocal[int] = ProcessLocal(make)
    seen: list[int] = []

    def use() -> None:
        barrier.wait()
        seen.append(local.get())

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [1] * 8
