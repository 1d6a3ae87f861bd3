"""Canonical JSON and checksums: the one place bytes for the database are made."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from celery_durable.errors import NotJSONSerializable


def dumps(value: Any, what: str = "The value") -> str:
    """Canonical JSON: sorted keys, no whitespace, so equal values give equal text and hash."""
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise NotJSONSerializable(what, str(exc)) from exc


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def checksum(
    execution_id: str,
    seq: int,
    kind: str,
    node: str,
    visit: int,
    state: str,
    cursor: str,
    output: str | None,
    meta: str | None,
) -> str:
    """SHA-256 over a checkpoint's identity and its canonical JSON columns, as stored."""
    digest = hashlib.sha256()
    parts = (
        execution_id,
        str(seq),
        kind,
        node,
        str(visit),
        state,
        cursor,
        output or "",
        meta or "",
    )
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\x00")
    return digest.hexdigest()


def row_checksum(
    execution_id: str, version: int, status: str, state: str, cursor: str, error: str | None
) -> str:
    """SHA-256 over what an execution row decides with (version, status, state, cursor,
    error), as stored: resume, retry and restart read these, not a checkpoint."""
    digest = hashlib.sha256()
    for part in (execution_id, str(version), status, state, cursor, error or ""):
        digest.update(part.encode())
        digest.update(b"\x00")
    return digest.hexdigest()
