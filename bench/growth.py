"""How many bytes does a long-looping run leave in the database? A 200-iteration loop, each
visit one ``ctx.step``, its state a list of 40 order lines (about 4 KB of JSON), stored plain,
compressed (the default: past ``compress_over``, 4096 bytes) and compressed and encrypted.

How to run, from the repository root (PostgreSQL on loopback)::

    .venv/bin/python bench/growth.py [--iterations 200] [--modes plain,compressed,encrypted]

Each mode runs one loop in a throwaway PostgreSQL database with an in-process worker, then
sums the stored length of every column of the run's checkpoints and execution row
(``octet_length``), the WAL the loop wrote (what replicas and backups carry), and the
tables' size on disk (``pg_total_relation_size``, TOAST included, which PostgreSQL compresses
with pglz on its own past 2 KB). Ratios are bytes per run to ``plain``.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
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
    if mode == "plain":
        # Before compression existed the setting did not either: plain is what was stored.
        return {"compress_over": 0} if "compress_over" in Settings.model_fields else {}
    if mode == "compressed":
        return {}
    key = base64.b64encode(os.urandom(32)).decode()
    return {"encryption_keys": {"k1": key}}


def one_loop(url: str, mode: str, iterations: int) -> dict[str, float]:
    durable = Durable(embedded_app(f"growth-{mode}"), url, **settings_for(mode))
    durable.migrate()
    g = durable.graph("loop", state=Order)

    @g.node
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
    with in_process_worker(durable):
        run = g.delay(until=iterations, lines=order_lines())
        final = run.wait(timeout=600)
    took = time.perf_counter() - started
    assert final.i == iterations
    columns = "octet_length(state) + octet_length(cursor) + coalesce(octet_length(output), 0)"
    with durable.db.engine.connect() as conn:
        checkpoint_bytes = conn.execute(
            text(
                f"SELECT count(*), sum({columns} + coalesce(octet_length(meta), 0)) "
                "FROM durable_checkpoints WHERE execution_id = :id"
            ),
            {"id": run.id},
        ).one()
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
    durable.db.dispose()
    return {
        "checkpoints": checkpoint_bytes[0],
        "bytes": checkpoint_bytes[1] + row_bytes,
        "disk": disk,
        "wal": float(wal),
        "seconds": took,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--modes", default="plain,compressed,encrypted")
    args = parser.parse_args()
    modes = args.modes.split(",")
    results = {}
    for mode in modes:
        with throwaway_database(ADMIN_DSN) as url:
            results[mode] = one_loop(url, mode, args.iterations)
    base = results.get("plain")
    print(f"{args.iterations}-iteration loop, one ctx.step per visit, {LINES} order lines:")
    print(
        f"{'mode':<12}{'checkpoints':>12}{'bytes/run':>12}{'ratio':>8}{'WAL bytes':>12}"
        f"{'on disk':>12}{'s':>8}"
    )
    for mode, r in results.items():
        ratio = f"{r['bytes'] / base['bytes']:.2f}" if base else "-"
        print(
            f"{mode:<12}{r['checkpoints']:>12,.0f}{r['bytes']:>12,.0f}{ratio:>8}"
            f"{r['wal']:>12,.0f}{r['disk']:>12,.0f}{r['seconds']:>8.1f}"
        )


if __name__ == "__main__":
    main()
