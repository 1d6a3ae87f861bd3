"""Where one node's time goes in a pool process: ``bench/engine.py --hops``.

A run's latency with a message per node is five hops; the bench's ratios move by more
between runs on a shared machine than one change to a hop does. This instrument reads each
hop where it happens: from Celery's ``task_prerun`` to ``task_postrun`` in the pool process
(the task), and within it the node commit (the dialect's one statement, during which the next
node's message is built) and the publish of that message once the commit answered (the
dispatcher's held producer). Only the one-at-a-time latency phase is reported,
so the figures are a hop's critical path, not time spent queued behind other runs.

``install(directory)`` runs in each worker (``bench/engine_app.py`` calls it when
``BENCH_ENGINE_HOPS`` names a directory) and writes one JSON file per pool process when it
exits; ``report(directory, windows)`` reads them back.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

PARTS = ("task", "commit", "publish")


def install(directory: str) -> None:
    """Time every task, node commit and node publish of this worker's pool processes."""
    from celery.signals import task_postrun, task_prerun, worker_process_shutdown

    from celery_durable.persistence.pending import PendingCommit
    from celery_durable.tasks.producer import HeldProducer

    hop: dict[str, float] = {}
    hops: list[list[float | None]] = []

    def timed(part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                hop[part] = time.perf_counter() - started

        return wrapper

    # The commit: the wait for its answer, once the next messages were built.
    PendingCommit.result = timed("commit", PendingCommit.result)  # type: ignore[method-assign]
    HeldProducer.send = timed("publish", HeldProducer.send)  # type: ignore[method-assign]

    @task_prerun.connect(weak=False)
    def _started(**_: Any) -> None:
        hop.clear()
        hop["at"], hop["started"] = time.time(), time.perf_counter()

    @task_postrun.connect(weak=False)
    def _ended(**_: Any) -> None:
        if "started" in hop:
            hop["task"] = time.perf_counter() - hop["started"]
            hops.append([hop["at"], *(hop.get(part) for part in PARTS)])

    @worker_process_shutdown.connect(weak=False)
    def _write(**_: Any) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / f"{os.getpid()}.json").write_text(json.dumps(hops))


def report(directory: Path, windows: Iterable[tuple[float, float]]) -> str:
    """p50 of each part, in ms, over the hops that started inside one of ``windows``."""
    spans = list(windows)
    samples: dict[str, list[float]] = {part: [] for part in (*PARTS, "rest")}
    for path in directory.glob("*.json"):
        for at, *parts in json.loads(path.read_text()):
            if not any(start <= at <= end for start, end in spans):
                continue
            timings = dict(zip(PARTS, parts, strict=True))
            for part, seconds in timings.items():
                if seconds is not None:
                    samples[part].append(seconds * 1000)
            inside = (timings["commit"] or 0.0) + (timings["publish"] or 0.0)
            samples["rest"].append(timings["task"] * 1000 - inside * 1000)
    count = len(samples["task"])
    cells = [
        f"{statistics.median(samples[part]):8.3f}" if samples[part] else f"{'-':>8}"
        for part in (*PARTS, "rest")
    ]
    return f"{count:>6} " + " ".join(cells)
