"""Benchmark of the checkpoint store on PostgreSQL: what a durable commit costs, and whether
finding an execution's latest checkpoint stays flat as the table grows.

Why it exists: every node of every durable execution ends in ``CheckpointStore.save()``, and
every resume starts with ``CheckpointStore.latest()``. This script checks two claims with
numbers instead of words:

1. a store commit (checkpoint insert + execution advance, checksum, canonical JSON, SQLAlchemy)
   costs about what a bare psycopg ``INSERT; COMMIT`` loop costs (aim: bare/store <= 1.3);
2. ``latest()`` is one backward step on the primary key, so its latency at 1,000,000 rows is
   about its latency at 10,000 rows (aim: ratio ~ 1).

``--idle`` measures only what one commit costs after the connection sat idle for 0 to 10 ms,
with and without waiting for the WAL flush: a message per node commits once per hop, never
back to back, so this is the floor under each node's commit in ``bench/engine.py
--inline-nodes 0``.

It creates a throwaway database ``bench_store_<random>`` next to the one in
``--database-url``, migrates it, and drops it at the end, also on error or Ctrl-C.

Run (from the repository root, PostgreSQL on loopback)::

    .venv/bin/python bench/store.py
    .venv/bin/python bench/store.py --idle
    .venv/bin/python bench/store.py -n 5000 --rows 1000000 --rounds 5 --lookups 2000 \\
        --database-url postgresql+psycopg://root@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from celery_durable.model.cursor import Cursor
from celery_durable.model.records import Commit
from celery_durable.persistence import codec, migrate
from celery_durable.persistence.database import Database
from celery_durable.persistence.store import CheckpointStore
from celery_durable.status import Status

STATE_BYTES = 1024
PER_EXECUTION = 10  # checkpoints per execution, start checkpoint included in the fills
SMALL_ROWS = 10_000
FILL_CHUNK = 10_000  # executions per fill statement (100,000 checkpoint rows)

BARE_TABLE = """
CREATE TABLE bench_bare (
    execution_id varchar(255) NOT NULL,
    seq bigint NOT NULL,
    state text NOT NULL,
    PRIMARY KEY (execution_id, seq)
)"""
BARE_INSERT = "INSERT INTO bench_bare (execution_id, seq, state) VALUES (%s, %s, %s)"

FILL_EXECUTIONS = """
INSERT INTO durable_executions (id, graph, fingerprint, status, version, state, cursor, error,
                                created_at, updated_at, finished_at)
SELECT 'fill-' || lpad(i::text, 8, '0'), 'bench', repeat('0', 64), 'running', %(last)s::bigint,
       %(state)s, '{}', NULL, now(), now(), NULL
  FROM generate_series(%(lo)s::int, %(hi)s::int) AS i
"""
# Same bytes as codec.checksum(): every part (execution_id, seq, kind, node, visit, state,
# cursor, output, meta) UTF-8 encoded and followed by a NUL, output and meta NULL (hashed as
# empty), so store.latest() verifies these rows as genuine; it raises if they drift apart.
FILL_CHECKPOINTS = r"""
INSERT INTO durable_checkpoints (execution_id, seq, kind, node, visit, state, cursor, output,
                                 meta, checksum, created_at)
SELECT c.eid, c.seq, c.kind, c.node, c.visit, %(state)s, c.cursor, NULL, NULL,
       encode(sha256(
           convert_to(c.eid, 'UTF8') || '\x00'::bytea || convert_to(c.seq::text, 'UTF8')
           || '\x00'::bytea || convert_to(c.kind, 'UTF8') || '\x00'::bytea
           || convert_to(c.node, 'UTF8') || '\x00'::bytea || convert_to(c.visit::text, 'UTF8')
           || '\x00'::bytea || convert_to(%(state)s, 'UTF8') || '\x00'::bytea
           || convert_to(c.cursor, 'UTF8') || '\x000000'::bytea
       ), 'hex'),
       now()
  FROM (SELECT 'fill-' || lpad(i::text, 8, '0') AS eid, s::bigint AS seq,
               CASE WHEN s = 0 THEN 'start' ELSE 'node' END AS kind,
               CASE WHEN s = 0 THEN '' ELSE 'step-' || s END AS node,
               CASE WHEN s = 0 THEN 0 ELSE 1 END AS visit,
               '{"frontier":[["step-' || (s + 1) || '",1]],"joins":{},"visits":{}}' AS cursor
          FROM generate_series(%(lo)s::int, %(hi)s::int) AS i
         CROSS JOIN generate_series(0, %(last)s::int) AS s) AS c
"""
LATEST_SQL = (
    "EXPLAIN SELECT * FROM durable_checkpoints WHERE execution_id = %s ORDER BY seq DESC LIMIT 1"
)


def make_state(step: int) -> dict[str, Any]:
    """A plausible workflow state whose canonical JSON is STATE_BYTES long (give or take)."""
    state: dict[str, Any] = {
        "step": step,
        "order": {"id": f"ord-{step:08d}", "currency": "EUR", "total": 1234.5},
        "items": [{"sku": f"sku-{k}", "qty": k % 5 + 1, "price": 9.99 * k} for k in range(8)],
        "note": "",
    }
    state["note"] = "x" * (STATE_BYTES - len(codec.dumps(state)))
    return state


@contextmanager
def scratch_database(admin_url: str, prefix: str = "bench_store") -> Iterator[tuple[str, str]]:
    """Create <prefix>_<random>; yield (SQLAlchemy URL, libpq DSN); always drop it."""
    admin = admin_url.replace("postgresql+psycopg://", "postgresql://", 1)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    base = admin.rpartition("/")[0]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        dsn = f"{base}/{name}"
        yield dsn.replace("postgresql://", "postgresql+psycopg://", 1), dsn
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        print(f"dropped database {name}")


def rate(count: int, fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return count / (time.perf_counter() - started)


def store_round(store: CheckpointStore, n: int, tag: str, states: list[Any]) -> tuple[float, float]:
    """N sequential saves over N/10 executions; returns (creates/s, commits/s)."""
    ids = [f"{tag}-{e:06d}" for e in range(-(-n // PER_EXECUTION))]

    def create() -> None:
        for eid in ids:
            store.create_execution(
                execution_id=eid,
                graph="bench",
                fingerprint="0" * 64,
                state=states[0],
                cursor=Cursor(),
            )

    def save() -> None:
        for i in range(n):
            eid, version = ids[i // PER_EXECUTION], i % PER_EXECUTION
            store.save(
                Commit(
                    execution_id=eid,
                    expected_version=version,
                    kind="node",
                    node=f"step-{version + 1}",
                    visit=1,
                    state=states[i % len(states)],
                    cursor=Cursor(frontier=[(f"step-{version + 2}", 1)]),
                    status=Status.RUNNING,
                )
            )

    return rate(len(ids), create), rate(n, save)


def bare_round(conn: psycopg.Connection[Any], n: int, tag: str, texts: list[str]) -> float:
    """N rows through one persistent connection, one transaction per row."""

    def insert() -> None:
        for i in range(n):
            conn.execute(BARE_INSERT, (f"{tag}-{i // PER_EXECUTION:06d}", i, texts[i % len(texts)]))
            if not conn.autocommit:
                conn.commit()

    return rate(n, insert)


def measure_writes(store: CheckpointStore, dsn: str, n: int, rounds: int) -> dict[str, list[float]]:
    """Rounds of N commits per contender, interleaved and rotated so drift hits all of them."""
    states = [make_state(step) for step in range(PER_EXECUTION)]
    texts = [codec.dumps(state) for state in states]
    results: dict[str, list[float]] = {"store": [], "tx": [], "auto": [], "create": []}
    with psycopg.connect(dsn) as tx, psycopg.connect(dsn, autocommit=True) as auto:
        tx.execute(BARE_TABLE)
        tx.commit()
        for r in range(rounds):
            order = ["store", "tx", "auto"]
            for name in order[r % 3 :] + order[: r % 3]:
                if name == "store":
                    creates, commits = store_round(store, n, f"r{r}", states)
                    results["create"].append(creates)
                    results["store"].append(commits)
                else:
                    conn = tx if name == "tx" else auto
                    results[name].append(bare_round(conn, n, f"{name}{r}", texts))
            print(
                f"  round {r + 1}: store {results['store'][-1]:6.0f}/s   "
                f"INSERT;COMMIT {results['tx'][-1]:6.0f}/s   "
                f"autocommit INSERT {results['auto'][-1]:6.0f}/s"
            )
    return results


def fill(conn: psycopg.Connection[Any], first: int, last: int, state_text: str) -> None:
    """Executions fill-<first>..fill-<last>, PER_EXECUTION valid checkpoints each, in SQL."""
    for lo in range(first, last + 1, FILL_CHUNK):
        params = {"lo": lo, "hi": min(lo + FILL_CHUNK - 1, last), "state": state_text}
        params["last"] = PER_EXECUTION - 1
        conn.execute(FILL_EXECUTIONS, params)
        conn.execute(FILL_CHECKPOINTS, params)
        conn.commit()


def time_latest(store: CheckpointStore, executions: int, k: int, rng: random.Random) -> float:
    """Mean µs of store.latest() over k random executions (after a short warm-up)."""
    ids = [f"fill-{rng.randint(1, executions):08d}" for _ in range(k + 200)]
    for eid in ids[:200]:
        store.latest(eid)
    started = time.perf_counter()
    for eid in ids[200:]:
        checkpoint = store.latest(eid)
        assert checkpoint is not None and checkpoint.seq == PER_EXECUTION - 1
    return (time.perf_counter() - started) / k * 1e6


def measure_latest(
    store: CheckpointStore, dsn: str, rows: int, k: int, rounds: int
) -> dict[str, Any]:
    rng = random.Random(20240611)
    state_text = codec.dumps(make_state(0))
    small, large = SMALL_ROWS // PER_EXECUTION, rows // PER_EXECUTION
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "TRUNCATE durable_node_visits, durable_checkpoints, durable_executions CASCADE"
        )
        conn.commit()
        fill(conn, 1, small, state_text)
        _vacuum(dsn)
        at_small = [time_latest(store, small, k, rng) for _ in range(rounds)]
        started = time.perf_counter()
        fill(conn, small + 1, large, state_text)
        _vacuum(dsn)
        fill_seconds = time.perf_counter() - started
        count = conn.execute("SELECT count(*) FROM durable_checkpoints").fetchone()[0]  # type: ignore[index]
        conn.commit()
        print(f"  filled to {count:,} rows in {fill_seconds:.1f} s (VACUUM ANALYZE included)")
        at_large = [time_latest(store, large, k, rng) for _ in range(rounds)]
        plan = conn.execute(LATEST_SQL, ("fill-00000042",)).fetchall()
    return {
        "small": at_small,
        "large": at_large,
        "rows": count,
        "fill_seconds": fill_seconds,
        "plan": next(line for (line,) in plan if "Scan" in line).strip(),
    }


def _vacuum(dsn: str) -> None:
    """Set hint bits and statistics now, so lookups read a settled table."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE durable_executions")
        conn.execute("VACUUM ANALYZE durable_checkpoints")


def report(writes: dict[str, list[float]], latest: dict[str, Any]) -> None:
    best = {name: max(values) for name, values in writes.items()}
    med = {name: statistics.median(values) for name, values in writes.items()}
    small, large = min(latest["small"]), min(latest["large"])
    small_med, large_med = statistics.median(latest["small"]), statistics.median(latest["large"])
    rows = [
        ("store.save(Commit)", f"{best['store']:,.0f}/s", f"{med['store']:,.0f}/s"),
        ("bare psycopg INSERT; COMMIT", f"{best['tx']:,.0f}/s", f"{med['tx']:,.0f}/s"),
        ("bare psycopg autocommit INSERT", f"{best['auto']:,.0f}/s", f"{med['auto']:,.0f}/s"),
        ("(store.create_execution)", f"{best['create']:,.0f}/s", f"{med['create']:,.0f}/s"),
        (
            "ratio INSERT;COMMIT / store",
            f"{best['tx'] / best['store']:.2f}",
            f"{med['tx'] / med['store']:.2f}   aim <= 1.3",
        ),
        (
            "ratio autocommit INSERT / store",
            f"{best['auto'] / best['store']:.2f}",
            f"{med['auto'] / med['store']:.2f}   (one round trip per row, the floor)",
        ),
        (f"latest() @ {SMALL_ROWS:,} rows", f"{small:,.0f} µs", f"{small_med:,.0f} µs"),
        (f"latest() @ {latest['rows']:,} rows", f"{large:,.0f} µs", f"{large_med:,.0f} µs"),
        ("ratio large / small", f"{large / small:.2f}", f"{large_med / small_med:.2f}   aim ~ 1"),
        ("fill to large + VACUUM ANALYZE", f"{latest['fill_seconds']:.1f} s", ""),
    ]
    print()
    print(f"{'':34}{'best':>12}  median")
    for label, first, second in rows:
        print(f"{label:34}{first:>12}  {second}")
    print(f"latest() plan at {latest['rows']:,} rows: {latest['plan']}")


IDLE_GAPS_MS = (0.0, 1.0, 3.0, 10.0)


def commit_after_idle(dsn: str, commits: int) -> None:
    """Median wall time of one autocommitted bare INSERT after each idle gap, with and without
    waiting for the WAL flush: what a node commit costs once the disk has been idle as long as
    a node's hop (a message per node), not back to back."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(BARE_TABLE)
        seq = 0
        print(f"  {'idle before':>12} {'synchronous_commit=on':>22} {'off':>8}")
        for gap_ms in IDLE_GAPS_MS:
            medians = []
            for synchronous in ("on", "off"):
                conn.execute(f"SET synchronous_commit = {synchronous}")
                times = []
                for _ in range(commits):
                    time.sleep(gap_ms / 1000)
                    seq += 1
                    started = time.perf_counter()
                    conn.execute(BARE_INSERT, ("idle", seq, "x" * 64), prepare=True)
                    times.append(time.perf_counter() - started)
                medians.append(statistics.median(times) * 1000)
            print(f"  {gap_ms:>9.0f} ms {medians[0]:>19.3f} ms {medians[1]:>5.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default="postgresql+psycopg://root@127.0.0.1:5432/postgres",
        help="an existing database; the bench creates and drops its own next to it",
    )
    parser.add_argument("-n", type=int, default=5000, help="sequential commits per contender")
    parser.add_argument("--rows", type=int, default=1_000_000, help="checkpoint rows at the end")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds")
    parser.add_argument("--lookups", type=int, default=2000, help="latest() calls per round")
    parser.add_argument(
        "--idle",
        action="store_true",
        help="only: a bare commit's latency after idle gaps of 0 to 10 ms (300 commits each)",
    )
    args = parser.parse_args()
    if args.idle:
        with scratch_database(args.database_url) as (_, dsn):
            print("one autocommitted bare INSERT, median wall time:")
            commit_after_idle(dsn, 300)
        return
    if args.rows < SMALL_ROWS * 2:
        parser.error(f"--rows must be at least {SMALL_ROWS * 2}")

    print(
        f"checkpoint store bench: N={args.n} sequential commits x {args.rounds} interleaved rounds "
        f"per contender, state {len(codec.dumps(make_state(0)))} B canonical JSON, "
        f"{PER_EXECUTION} checkpoints/execution, latest() x {args.lookups} random executions "
        f"at {SMALL_ROWS:,} and {args.rows:,} rows; best and median of rounds"
    )
    with scratch_database(args.database_url) as (url, dsn):
        db = Database(url)
        try:
            migrate.upgrade(db)
            store = CheckpointStore(db)
            with psycopg.connect(dsn) as conn:
                print(f"server: {conn.execute('SELECT version()').fetchone()[0]}")  # type: ignore[index]
            print("writes:")
            writes = measure_writes(store, dsn, args.n, args.rounds)
            print("latest(): filling ...")
            latest = measure_latest(store, dsn, args.rows, args.lookups, args.rounds)
            report(writes, latest)
        finally:
            db.dispose()


if __name__ == "__main__":
    main()
