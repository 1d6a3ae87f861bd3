"""Node time limits enforced by the engine: the soft limit raises inside the node, in the
main thread of the process; past the hard limit the process ends, as a crash would."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from celery_durable.engine.deadline import time_limit
from celery_durable.errors import NodeTimeout


def test_the_soft_limit_raises_inside_the_node() -> None:
    started = time.monotonic()
    with pytest.raises(NodeTimeout, match="crawl"), time_limit("crawl", 0.05):
        time.sleep(2)
    assert time.monotonic() - started < 0.5


def test_a_node_within_its_limit_is_untouched_and_the_alarm_is_cleared() -> None:
    with time_limit("quick", 0.2):
        time.sleep(0.01)
    time.sleep(0.3)  # an alarm left armed would raise here


def test_off_the_main_thread_nothing_is_armed() -> None:
    finished: list[bool] = []

    def node() -> None:
        with time_limit("threaded", 0.01):
            time.sleep(0.1)
        finished.append(True)

    thread = threading.Thread(target=node)
    thread.start()
    thread.join()
    assert finished == [True]


def test_a_node_that_ignores_the_soft_limit_ends_its_process() -> None:
    script = textwrap.dedent(
        """
        import time
        from celery_durable.engine import deadline
        deadline.HARD_LIMIT_GRACE = 0.3
        with deadline.time_limit("stubborn", 0.1):
            while True:
                try:
                    time.sleep(10)
                except Exception:
                    pass  # swallows NodeTimeout
        """
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert done.returncode == -9, done.stderr
    assert time.monotonic() - started < 10
    assert b"ran past its hard time limit" in done.stderr
