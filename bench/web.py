"""The web view's run list at 100,000 runs: ``/api/runs`` time per request, first page,
filtered, and deep in the keyset pages, on PostgreSQL.

How to run, from the repository root (PostgreSQL on loopback)::

    .venv/bin/python bench/web.py [--runs 100000] [--requests 50]

A throwaway database gets ``--runs`` executions in one INSERT ... SELECT generate_series
(graphs g0..g4, statuses spread like a busy system's, one created per second), analyzed.
Then the view is served from a thread and each request is timed: over HTTP on loopback
(what a browser waits for) and the same work without HTTP (``views.runs_page``, the
server's share). Median and p95 of ``--requests`` requests each. Goal: under 100 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from celery import Celery  # noqa: E402

from celery_durable import Durable  # noqa: E402
from celery_durable.testing import throwaway_database  # noqa: E402
from celery_durable.web import views  # noqa: E402
from celery_durable.web.app import WebConfig, serve_in_thread  # noqa: E402

ADMIN = "postgresql://root@127.0.0.1:5432/postgres"
FILL = """
INSERT INTO durable_executions
       (id, graph, fingerprint, status, version, state, cursor, error,
        created_at, updated_at, finished_at, parent_id)
SELECT 'run-' || lpad(i::text, 7, '0'), 'g' || (i %% 5), repeat('f', 64),
       (ARRAY['succeeded','succeeded','succeeded','succeeded','failed','running','waiting',
              'compensated','cancelled','needs_intervention'])[1 + i %% 10],
       5, '{"n": 1}', '{}', NULL,
       now() - (%(runs)s - i) * interval '1 second', now() - (%(runs)s - i) * interval '1 second',
       NULL, NULL
  FROM generate_series(1, %(runs)s) AS i
"""


def timed(fn: Callable[[], object], n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples), statistics.quantiles(samples, n=20)[18]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    with throwaway_database(ADMIN, f"bench_web_{uuid.uuid4().hex[:8]}") as url:
        durable = Durable(Celery("bench-web"), url)
        durable.migrate()
        started = time.perf_counter()
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(FILL, {"runs": args.runs})
            conn.execute("VACUUM ANALYZE durable_executions")
        print(f"{args.runs} runs stored in {time.perf_counter() - started:.1f} s")
        deep = views.Filters()
        for _ in range(50):  # 50 pages back: 2,500 runs older than the newest
            deep = views.Filters.parse({"before": views.runs_page(durable, deep).next})
        cases = {
            "first page": ("", views.Filters()),
            "status=failed": ("status=failed", views.Filters(status="failed")),
            "graph=g3": ("graph=g3", views.Filters(graph="g3")),
            "id prefix run-00042": ("prefix=run-00042", views.Filters(prefix="run-00042")),
            "page 51 (keyset)": (f"before={deep.before[0].isoformat()}|{deep.before[1]}"
                                 if deep.before else "", deep),
        }  # fmt: skip
        base, stop = serve_in_thread(WebConfig(durable))
        try:
            print(f"{'/api/runs':<22} {'HTTP p50':>9} {'p95':>7} {'server p50':>11} {'p95':>7}")
            for name, (query, filters) in cases.items():
                target = f"{base}/api/runs?{urllib.parse.quote(query, safe='=&|:')}"
                http = timed(lambda t=target: urllib.request.urlopen(t).read(), args.requests)
                work = timed(lambda f=filters: views.runs_page(durable, f), args.requests)
                print(f"{name:<22} {http[0]:>7.1f}ms {http[1]:>5.1f}ms {work[0]:>9.1f}ms "
                      f"{work[1]:>5.1f}ms")  # fmt: skip
        finally:
            stop()
            durable.db.dispose()


if __name__ == "__main__":
    main()
