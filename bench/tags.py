"""Benchmark of finding runs by tag on PostgreSQL: ``Durable.list(tags=...)`` among a million
runs, and the plans PostgreSQL picks for it.

Why it exists: "show me every run for customer c-42" must stay an index range however many
runs there are. This script loads 1,000,000 runs with a realistic spread of tags (a
``customer`` tag with 100,000 values, about 10 runs each; an ``env`` tag with 3 values, about
333,000 runs each) and times the first page of ``Durable.list`` (the default 100 runs, each
with its tags: two queries) for:

1. a selective tag (a random customer each call);
2. a common tag (``env=prod``), also as a page of 50 runs (what ``durable ls`` and the web
   view show);
3. both ANDed (a random customer in prod);
4. the common tag, the page that starts 100,000 runs deep (keyset paging: ``before=``);
5. for comparison, no tag at all: the same page of 100 runs as ``Durable.list()`` reads it,
   which shows what the tags add to reading and building the page.

Aim: p50 under 10 ms for each. It prints each case's queries with EXPLAIN (ANALYZE,
BUFFERS), so the index it reads is on the page.

It creates a throwaway database ``bench_tags_<random>`` next to the one in
``--database-url``, migrates it, fills it with INSERT ... SELECT generate_series (about a
minute here), and drops it at the end, also on error or Ctrl-C.

Run (from the repository root, PostgreSQL on loopback)::

    .venv/bin/python bench/tags.py
    .venv/bin/python bench/tags.py --runs 1000000 --lookups 300 \\
        --database-url postgresql+psycopg://root@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from celery import Celery
from sqlalchemy import Engine, event

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from bench.store import scratch_database
from celery_durable import Durable

CUSTOMERS = 100_000
ENVS = ("prod", "test", "dev")
CHUNK = 100_000  # runs per fill statement
EPOCH = datetime(2026, 11, 1, tzinfo=UTC)  # when the first run started
STATE = '{"items":[' + ",".join(f'{{"sku":"sku-{k}","qty":{k}}}' for k in range(12)) + "]}"
CURSOR = '{"frontier":[],"joins":{},"visits":{"charge":1,"reserve":1,"ship":1}}'

# Run i started i * 2.6 s after the first, so a million runs span a month; finished ones.
FILL_RUNS = """
INSERT INTO durable_executions (id, graph, fingerprint, status, version, state, cursor, error,
                                created_at, updated_at, finished_at)
SELECT 'run-' || lpad(i::text, 8, '0'), 'order', repeat('0', 64),
       CASE WHEN i %% 50 = 0 THEN 'failed' ELSE 'succeeded' END, 3, %(state)s, %(cursor)s,
       NULL, %(epoch)s::timestamptz + i * interval '2.6 seconds',
       %(epoch)s::timestamptz + i * interval '2.6 seconds' + interval '4 seconds',
       %(epoch)s::timestamptz + i * interval '2.6 seconds' + interval '4 seconds'
  FROM generate_series(%(lo)s::int, %(hi)s::int) AS i
"""
# Every run carries customer = c-<i mod 100,000> and env = <i mod 3>; created_at as its run's.
FILL_TAGS = """
INSERT INTO durable_tags (execution_id, key, value, created_at)
SELECT 'run-' || lpad(i::text, 8, '0'), t.key,
       CASE WHEN t.key = 'customer' THEN 'c-' || lpad((i %% %(customers)s)::text, 5, '0')
            ELSE (ARRAY['prod', 'test', 'dev'])[i %% 3 + 1] END,
       %(epoch)s::timestamptz + i * interval '2.6 seconds'
  FROM generate_series(%(lo)s::int, %(hi)s::int) AS i
 CROSS JOIN (VALUES ('customer'), ('env')) AS t(key)
"""


def fill(dsn: str, runs: int) -> None:
    """``runs`` runs and two tags each, a chunk per transaction; then VACUUM ANALYZE, so the
    planner knows the spread and the visibility map allows index-only scans."""
    started = time.perf_counter()
    epoch = EPOCH.isoformat()
    with psycopg.connect(dsn) as conn:
        conn.execute("SET synchronous_commit = off")
        for lo in range(0, runs, CHUNK):
            hi = min(lo + CHUNK, runs) - 1
            params = {"lo": lo, "hi": hi, "epoch": epoch, "state": STATE, "cursor": CURSOR}
            conn.execute(FILL_RUNS, params)
            conn.execute(FILL_TAGS, {**params, "customers": CUSTOMERS})
            conn.commit()
            print(f"  {hi + 1:>9,} runs  {time.perf_counter() - started:6.1f} s", flush=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE durable_executions")
        conn.execute("VACUUM ANALYZE durable_tags")
        tags = conn.execute("SELECT count(*) FROM durable_tags").fetchone()
    print(f"filled and analyzed in {time.perf_counter() - started:.1f} s ({tags[0]:,} tag rows)")


Case = tuple[str, Callable[[random.Random], dict[str, Any]]]


def cases(runs: int) -> list[Case]:
    """Each case's ``Durable.list`` keyword arguments, drawn per call. The deep page starts
    at the key of the run 300,000 runs back from the newest: env=prod's 100,000th."""
    back = runs - 1 - 300_000
    deep = (EPOCH + timedelta(seconds=2.6 * back), f"run-{back:08d}")

    def customer(rng: random.Random) -> str:
        return f"c-{rng.randrange(CUSTOMERS):05d}"

    return [
        ("selective  customer=c-NNNNN", lambda rng: {"tags": {"customer": customer(rng)}}),
        ("common     env=prod", lambda rng: {"tags": {"env": "prod"}}),
        ("common     env=prod, a page of 50", lambda rng: {"tags": {"env": "prod"}, "limit": 50}),
        (
            "both       customer=c-NNNNN, env=prod",
            lambda rng: {"tags": {"customer": customer(rng), "env": "prod"}},
        ),
        (
            "deep page  env=prod, 100,000 runs in",
            lambda rng: {"tags": {"env": "prod"}, "before": deep},
        ),
        ("baseline   no tag filter", lambda rng: {}),
    ]


def timed(durable: Durable, case: Case, lookups: int) -> tuple[list[float], float]:
    """Milliseconds per call (after a warm-up), and the runs a call found on average."""
    _, draw = case
    rng = random.Random(7)
    for _ in range(20):
        durable.list(**draw(rng))
    times, found = [], 0
    for _ in range(lookups):
        kwargs = draw(rng)
        started = time.perf_counter()
        runs = durable.list(**kwargs)
        times.append((time.perf_counter() - started) * 1000)
        found += len(runs)
        wanted = kwargs.get("tags", {})
        assert all(wanted.items() <= run.tags.items() for run in runs)
    return times, found / lookups


@contextmanager
def captured(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """The statements ``engine`` runs meanwhile, with their parameters."""
    seen: list[tuple[str, Any]] = []

    def before(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if not statement.lstrip().upper().startswith("EXPLAIN"):
            seen.append((statement, params))

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)


def explain(durable: Durable, case: Case) -> None:
    """One call's queries, as PostgreSQL ran them."""
    name, draw = case
    engine = durable.db.engines.reader
    with captured(engine) as statements:
        durable.list(**draw(random.Random(11)))
    for statement, params in statements:
        with engine.connect() as conn:
            plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, params)
            lines = [row[0] for row in plan]
        print(f"\n-- {name}: {' '.join(statement.split())[:150]}...")
        print("\n".join(f"   {line}" for line in lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default="postgresql+psycopg://root@127.0.0.1:5432/postgres",
        help="an existing database; the bench creates and drops its own next to it",
    )
    parser.add_argument("--runs", type=int, default=1_000_000, help="runs to fill")
    parser.add_argument("--lookups", type=int, default=300, help="timed calls per case")
    args = parser.parse_args()
    if args.runs < 400_000:
        parser.error("--runs must be at least 400,000 (the deep page starts 300,000 runs back)")
    print(
        f"tags bench: {args.runs:,} runs, customer tag with {CUSTOMERS:,} values, env tag with "
        f"{len(ENVS)}; Durable.list first page (100 runs, with their tags) x {args.lookups}"
    )
    with scratch_database(args.database_url, "bench_tags") as (url, dsn):
        durable = Durable(Celery("bench-tags", broker="memory://"), url)
        try:
            durable.migrate()
            with psycopg.connect(dsn) as conn:
                print(f"server: {conn.execute('SELECT version()').fetchone()[0]}")  # type: ignore[index]
            fill(dsn, args.runs)
            chosen = cases(args.runs)
            print(f"\n  {'case':<40} {'p50':>8} {'p95':>8} {'runs/call':>10}")
            for case in chosen:
                times, found = timed(durable, case, args.lookups)
                p50 = statistics.median(times)
                p95 = statistics.quantiles(times, n=20)[-1]
                print(f"  {case[0]:<40} {p50:>5.2f} ms {p95:>5.2f} ms {found:>10.1f}")
            for case in chosen:
                explain(durable, case)
        finally:
            durable.db.dispose()


if __name__ == "__main__":
    main()
