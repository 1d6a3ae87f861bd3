"""How many rows and bytes does a long-looping run leave in the database, and how many with
``keep_checkpoints``? A loop of ``--iterations`` turns, each visit one ``ctx.step``, its state
a list of 40 order lines (about 4 KB of JSON), stored plain, compressed (the default: past
``compress_over``, 4096 bytes) and compressed and encrypted, each keeping every checkpoint;
then compressed with ``keep_checkpoints=N`` (bounded history: the run keeps its newest N).

How to run, from the repository root (PostgreSQL on loopback)::

    .venv/bin/python bench/growth.py [--iterations 200] [--modes compressed]
                                     [--keep-checkpoints 100]

``--modes plain,compressed,encrypted`` compares the three ways of storing a state, keeping
every checkpoint; ``--modes ''`` leaves the unbounded runs out, ``--keep-checkpoints 0`` the
bounded one. An unbounded loop slows as its history grows (10,000 turns took 104 s here,
100,000 would take hours), so unbounded runs stop at ``--unbounded-max`` turns (10,000) and
their figures at ``--iterations`` are also printed projected: each turn adds the same two
checkpoints and the same bytes, so rows and bytes grow linearly with the turns.

Each run is one loop in a throwaway PostgreSQL database with an in-process worker (one node
after the other in the same task, as a worker runs them), then counts the run's rows in
every table its history grows (checkpoints, the visit ledger, failed attempts, events,
emitted values), sums the stored length of every column of its checkpoints and execution
row (``octet_length``), the WAL the server wrote meanwhile (what replicas and backups
carry: the loop's own on a server nothing else writes to), and the tables' size on disk
(``pg_total_relation_size``, TOAST included, which PostgreSQL compresses with pglz on its
own past 2 KB). ``peak`` is the most checkpoints the run had at once, sampled every 0.2 s.
Ratios are bytes per run to ``plain`` (or to the first run printed).

Space a compaction frees is reused once the table is vacuumed, never given back to the file
system. A server whose autovacuum is off (``SHOW autovacuum``) would never reclaim it, and
scans would wade through ever more dead rows: there the bench vacuums the run's tables
every ``--vacuum-every`` seconds (default 10, about what autovacuum does for tables this
busy), and says so.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydantic import BaseModel  # noqa: E402
from sqlalchemy import text  # noqa: E402

from celery_durable import Context, Durable, Settings  # noqa: E402
from celery_durable.testing import (  # noqa: E402
    embedded_app,
    in_process_worker,
    throwaway_database,
)

ADMIN_DSN = os.environ.get("CELERY_DURABLE_TEST_PG", "postgresql://root@127.0.0.1:5432/postgres")
LINES = 40
# The tables a run's history grows, besides the checkpoints.
HISTORY_TABLES = ("durable_node_visits", "durable_attempts", "durable_events", "durable_emits")
VACUUMED = ("durable_checkpoints", "durable_executions", *HISTORY_TABLES)


class Order(BaseModel):
    i: int = 0
    until: int = 200
    lines: list[dict[str, Any]] = []


def order_lines() -> list[dict[str, Any]]:
    return [
        {
            "sku": f"SKU-{n:05d}",
            "title": f"Replacement part number {n} for the order",
            "qty": n % 7 + 1,
            "price_cents": 1999 + n * 13,
            "status": "reserved",
        }
        for n in range(LINES)
    ]


def settings_for(mode: str) -> dict[str, Any]:
    # Every visit in the task that ran the one before, as far as the time budget allows: the
    # bench measures storage, not the in-memory broker's polling between messages.
    inline = {"inline_nodes": 1_000_000} if "inline_nodes" in Settings.model_fields else {}
    if mode == "plain":
        # Before compression existed the setting did not either: plain is what was stored.
        return {**inline, "compress_over": 0} if "compress_over" in Settings.model_fields else {}
    if mode == "compressed":
        return inline
    key = base64.b64encode(os.urandom(32)).decode()
    return {**inline, "encryption_keys": {"k1": key}}


class Peak:
    """The most checkpoints one run had at once, sampled in a thread while it runs; and, every
    ``vacuum_every`` seconds (None: never), a VACUUM of the tables a run changes."""

    def __init__(self, durable: Durable, vacuum_every: float | None) -> None:
        self.durable = durable
        self.vacuum_every = vacuum_every
        self.execution_id: str | None = None
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        query = text("SELECT count(*) FROM durable_checkpoints WHERE execution_id = :id")
        vacuumed = time.monotonic()
        while not self._stop.wait(0.2):
            if self.execution_id is None:
                continue
            with self.durable.db.engine.connect() as conn:
                count = conn.execute(query, {"id": self.execution_id}).scalar_one()
            self.most = max(self.most, int(count))
            if self.vacuum_every is not None and time.monotonic() - vacuumed > self.vacuum_every:
                vacuum(self.durable)
                vacuumed = time.monotonic()


def vacuum(durable: Durable) -> None:
    autocommit = durable.db.engine.execution_options(isolation_level="AUTOCOMMIT")
    with autocommit.connect() as conn:
        conn.execute(text(f"VACUUM {', '.join(VACUUMED)}"))


def autovacuum_on(url: str) -> bool:
    durable = Durable(embedded_app("growth-probe"), url)
    with durable.db.engine.connect() as conn:
        on = conn.execute(text("SHOW autovacuum")).scalar_one() == "on"
    durable.db.dispose()
    return bool(on)


def one_loop(
    url: str, mode: str, iterations: int, keep: int | None, vacuum_every: float | None
) -> dict[str, float]:
    durable = Durable(embedded_app(f"growth-{mode}"), url, **settings_for(mode))
    durable.migrate()
    options = {} if keep is None else {"keep_checkpoints": keep}
    g = durable.graph("loop", state=Order, **options)

    @g.node(max_visits=iterations + 1)
    def work(state: Order, ctx: Context) -> dict[str, Any]:
        price = ctx.step("quote", lambda: {"sku": state.lines[state.i % LINES]["sku"], "ok": 1})
        lines = list(state.lines)
        lines[state.i % LINES] = {**lines[state.i % LINES], "status": f"seen {price['ok']}"}
        return {"i": state.i + 1, "lines": lines}

    g.entry(work)
    g.branch(work, lambda s: "work" if s.i < s.until else None, paths=["work"])
    started = time.perf_counter()
    with durable.db.engine.connect() as conn:
        wal_before = conn.execute(text("SELECT pg_current_wal_insert_lsn()")).scalar_one()
    with Peak(durable, vacuum_every) as peak, in_process_worker(durable):
        run = g.delay(until=iterations, lines=order_lines())
        peak.execution_id = run.id
        final = run.wait(timeout=24 * 3600)
    took = time.perf_counter() - started
    assert final.i == iterations
    figures = measure(durable, run.id, wal_before)
    durable.db.dispose()
    return {**figures, "peak": max(peak.most, figures["checkpoints"]), "seconds": took}


def measure(durable: Durable, execution_id: str, wal_before: str) -> dict[str, float]:
    columns = "octet_length(state) + octet_length(cursor) + coalesce(octet_length(output), 0)"
    with durable.db.engine.connect() as conn:
        checkpoints = conn.execute(
            text(
                f"SELECT count(*), sum({columns} + coalesce(octet_length(meta), 0)) "
                "FROM durable_checkpoints WHERE execution_id = :id"
            ),
            {"id": execution_id},
        ).one()
        others = sum(
            conn.execute(
                text(f"SELECT count(*) FROM {table} WHERE execution_id = :id"),
                {"id": execution_id},
            ).scalar_one()
            for table in HISTORY_TABLES
        )
        row_bytes = conn.execute(
            text("SELECT octet_length(state) + octet_length(cursor) FROM durable_executions")
        ).scalar_one()
        wal = conn.execute(
            text("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), :lsn)"), {"lsn": wal_before}
        ).scalar_one()
        disk = conn.execute(
            text(
                "SELECT pg_total_relation_size('durable_checkpoints') + "
                "pg_total_relation_size('durable_executions')"
            )
        ).scalar_one()
    return {
        "checkpoints": checkpoints[0],
        "rows": checkpoints[0] + others + 1,
        "bytes": checkpoints[1] + row_bytes,
        "disk": disk,
        "wal": float(wal),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--modes", default="compressed")
    parser.add_argument("--keep-checkpoints", type=int, default=100)
    parser.add_argument("--vacuum-every", type=float, default=10.0)
    parser.add_argument("--unbounded-max", type=int, default=10_000)
    args = parser.parse_args()
    variants: list[tuple[str, int | None]] = [(m, None) for m in args.modes.split(",") if m]
    if args.keep_checkpoints:
        variants.append(("compressed", args.keep_checkpoints))
    results = {}
    vacuum_every: float | None = None
    for mode, keep in variants:
        with throwaway_database(ADMIN_DSN) as url:
            vacuum_every = None if autovacuum_on(url) else args.vacuum_every
            turns = args.iterations if keep else min(args.iterations, args.unbounded_max)
            results[mode, keep] = one_loop(url, mode, turns, keep, vacuum_every)
            results[mode, keep]["turns"] = turns
    base = results.get(("plain", None)) or next(iter(results.values()))
    print(f"{args.iterations}-iteration loop, one ctx.step per visit, {LINES} order lines:")
    if vacuum_every is not None:
        print(f"(autovacuum is off on this server: the bench vacuums every {vacuum_every:g} s)")
    print(
        f"{'mode':<12}{'keep':>7}{'turns':>9}{'checkpoints':>12}{'peak':>9}{'rows':>9}{'bytes/run':>14}"
        f"{'ratio':>8}{'WAL bytes':>15}{'on disk':>14}{'s':>8}"
    )
    for (mode, keep), r in projected(results, args.iterations):
        took = "-" if mode.startswith("~") else f"{r['seconds']:.1f}"
        peak = "-" if mode.startswith("~") else f"{r['peak']:,.0f}"
        print(
            f"{mode:<12}{keep or 'all':>7}{r['turns']:>9,.0f}{r['checkpoints']:>12,.0f}{peak:>9}"
            f"{r['rows']:>9,.0f}{r['bytes']:>14,.0f}{r['bytes'] / base['bytes']:>8.3f}"
            f"{r['wal']:>15,.0f}{r['disk']:>14,.0f}{took:>8}"
        )


def projected(
    results: dict[tuple[str, int | None], dict[str, float]], iterations: int
) -> list[tuple[tuple[str, int | None], dict[str, float]]]:
    """Each result, and after an unbounded one cut short, its figures at ``iterations``
    turns (mode marked ``~``): rows and bytes scaled by the turns; peak and time not shown."""
    lines = []
    for (mode, keep), r in results.items():
        lines.append(((mode, keep), r))
        if r["turns"] < iterations:
            scale = iterations / r["turns"]
            grown = {k: r[k] * scale for k in ("checkpoints", "rows", "bytes", "wal", "disk")}
            lines.append(((f"~{mode}", keep), {**r, **grown, "turns": iterations}))
    return lines


if __name__ == "__main__":
    main()
