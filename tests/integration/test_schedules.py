"""Two real ``celery beat`` processes on one schedule, one of them killed and restarted, and a
real worker on RabbitMQ and PostgreSQL: each tick starts one run, whatever number of tick
tasks the beats send.

The schedule ticks every 2 s, three times only: its cron names three seconds of one minute,
``S-(S+4)/2 M H D Mo *``, a little after the processes start. The beats keep sending the tick
task every second until well after the last tick, so any tick a second beat, a restart or a
late copy could start twice has had its chance to.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from celery_durable import Status
from celery_durable.constants import SCHEDULES_TASK
from tests.integration import schedule_app
from tests.integration.harness import REPO, Workers, ledger_lines
from tests.integration.schedule_app import ScheduleApp
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

APP = "tests.integration.schedule_app"
# Time for a worker and two beats to start before the first tick, on a busy machine.
LEAD = 25
TICKS = 3
EVERY = 2


class Beat:
    """One ``celery beat`` process in a session of its own, with its own schedule file."""

    def __init__(self, env: dict[str, str], folder: Path, label: str, schedule: str) -> None:
        self.log = folder / f"beat-{label}.log"
        cmd = [
            sys.executable, "-m", "celery", "-A", APP, "beat", "-l", "INFO",
            "-s", str(folder / f"beat-{schedule}-schedule"),
            "--pidfile", str(folder / f"beat-{label}.pid"),
        ]  # fmt: skip
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_DURABLE_")}
        environ.update(env)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, env=environ, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        wait_for(self.started, timeout=30, interval=0.05, what=f"beat {label} to start")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def started(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"beat exited:\n{self.output()[-3000:]}")
        return "beat: Starting..." in self.output()

    def sent(self) -> int:
        return self.output().count(f"Sending due task {SCHEDULES_TASK}")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.kill()


def three_ticks() -> tuple[str, list[datetime]]:
    """A cron for three ticks 2 s apart in one minute, the first LEAD s or more from now."""
    first = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=LEAD)
    if first.second > 59 - EVERY * (TICKS - 1):
        first = first.replace(second=0) + timedelta(minutes=1)
    last = first.second + EVERY * (TICKS - 1)
    cron = f"{first.second}-{last}/{EVERY} {first:%M %H %d %m} *"
    return cron, [first + timedelta(seconds=EVERY * i) for i in range(TICKS)]


@pytest.fixture
def scheduled(client_env: dict[str, str]) -> Iterator[ScheduleApp]:
    """The client side, on the workers' database, schema migrated before they start."""
    built = schedule_app.build()
    built.durable.migrate()
    try:
        yield built
    finally:
        built.app.close()
        built.durable.db.dispose()


@pytest.fixture
def processes(
    env: dict[str, str], queue: str, tmp_path: Path
) -> Iterator[tuple[Workers, list[Beat]]]:
    workers = Workers(env, queue, tmp_path, app=APP)
    beats: list[Beat] = []
    try:
        yield workers, beats
    finally:
        for beat in beats:
            beat.kill()
        workers.cleanup()


def sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


def test_two_beats_and_a_restart_start_each_tick_once(
    scheduled: ScheduleApp,
    processes: tuple[Workers, list[Beat]],
    env: dict[str, str],
    ledger_path: Path,
    tmp_path: Path,
) -> None:
    workers, beats = processes
    cron, ticks = three_ticks()
    with_cron = {**env, "DURABLE_TEST_CRON": cron}
    workers.start(concurrency=2, extra_env={"DURABLE_TEST_CRON": cron})
    beats += [Beat(with_cron, tmp_path, "a", "a"), Beat(with_cron, tmp_path, "b", "b")]
    assert datetime.now(UTC) < ticks[0], "the worker and beats started after the first tick"

    def started() -> list[str]:
        return sorted(run.id for run in scheduled.durable.list(graph="tick"))

    wait_for(started, timeout=LEAD + 15, interval=0.1, what="the first tick's run")
    beats[1].kill()  # a beat that crashed, restarted on its schedule file
    beats.append(Beat(with_cron, tmp_path, "b-again", "b"))
    sleep_until(ticks[-1] + timedelta(seconds=5))
    for beat in (beats[0], beats[2]):
        assert beat.sent() >= 3, beat.output()[-3000:]
        beat.stop()

    expected = [scheduled.schedule.run_id(tick) for tick in ticks]
    assert started() == expected
    for execution_id in expected:
        run = scheduled.durable.get(execution_id)
        run.wait(timeout=30)
        assert run.status == Status.SUCCEEDED and run.state.note == "from beat"
    ran = Counter(line[1] for line in ledger_lines(ledger_path) if line[0] == "ran")
    assert ran == dict.fromkeys(expected, 1)
    sent = sum(beat.sent() for beat in beats)
    print(f"schedules: {len(expected)} runs from {sent} tick tasks sent by two beats")
