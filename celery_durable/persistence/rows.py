"""Rows as records, checked on the way out: a checkpoint always against its checksum, an
execution row against its own when the read decides something (``verify``)."""

from __future__ import annotations

import hmac
from typing import Any

from sqlalchemy import Row

from celery_durable.errors import CheckpointCorrupted
from celery_durable.persistence import codec
from celery_durable.persistence.records import Checkpoint, ExecutionRecord, Kind, as_utc
from celery_durable.status import Status


def execution_record(row: Row[Any], verify: bool = False) -> ExecutionRecord:
    """The row as a record; ``verify``: check its checksum first (reads that decide)."""
    m = row._mapping
    if verify and m["checksum"] is not None:
        expected = codec.row_checksum(
            m["id"], m["version"], m["status"], m["state"], m["cursor"], m["error"]
        )
        if not hmac.compare_digest(expected, m["checksum"]):
            raise CheckpointCorrupted(m["id"], m["version"], row=True)
    return ExecutionRecord(
        id=m["id"],
        graph=m["graph"],
        fingerprint=m["fingerprint"],
        status=Status(m["status"]),
        version=m["version"],
        state=codec.loads(m["state"]),
        cursor=codec.loads(m["cursor"]),
        error=codec.loads(m["error"]),
        created_at=as_utc(m["created_at"]),  # type: ignore[arg-type]
        updated_at=as_utc(m["updated_at"]),  # type: ignore[arg-type]
        finished_at=as_utc(m["finished_at"]),
        swept_at=as_utc(m["swept_at"]),
        parent_id=m["parent_id"],
    )


def checkpoint_record(row: Row[Any], contain: bool = False) -> Checkpoint:
    """The checkpoint, verified. ``contain`` (reads for display): a corrupted one comes back
    marked, its contents withheld, instead of raising, so the rest of the run stays visible."""
    m = row._mapping
    expected = codec.checksum(
        m["execution_id"],
        m["seq"],
        m["kind"],
        m["node"],
        m["visit"],
        m["state"],
        m["cursor"],
        m["output"],
        m["meta"],
    )
    corrupted = not hmac.compare_digest(expected, m["checksum"] or "")
    if corrupted and not contain:
        raise CheckpointCorrupted(m["execution_id"], m["seq"])
    if corrupted:
        return Checkpoint(
            m["execution_id"], m["seq"], Kind(m["kind"]), m["node"], m["visit"], {}, {}, None,
            None, m["checksum"], as_utc(m["created_at"]), corrupted=True,  # type: ignore[arg-type]
        )  # fmt: skip
    return Checkpoint(
        execution_id=m["execution_id"],
        seq=m["seq"],
        kind=Kind(m["kind"]),
        node=m["node"],
        visit=m["visit"],
        state=codec.loads(m["state"]),
        cursor=codec.loads(m["cursor"]),
        output=codec.loads(m["output"]),
        meta=codec.loads(m["meta"]),
        checksum=m["checksum"],
        created_at=as_utc(m["created_at"]),  # type: ignore[arg-type]
    )
