"""Re-signing: when checksum keys are first set, the rows written before carry unkeyed
checksums; after a rotation, checksums under the old key; rows written before revision 0005
and encrypted, none. Each is checked as it was signed (a row with none, against its newest
checkpoint) and only then signed as the settings sign now, so re-signing never blesses a row
that was changed; what does not check out is reported and left as it is, refused by every
read that decides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row, update

from celery_durable.errors import DurableError
from celery_durable.persistence import codec
from celery_durable.persistence.history import RunHistory
from celery_durable.persistence.schema import checkpoints, executions
from celery_durable.persistence.sealing import Unsealable


@dataclass
class SignReport:
    """What ``sign`` did: checkpoints and rows signed again, how many were signed as now
    already, and each (execution, seq, "checkpoint" or "row") that did not check out."""

    checkpoints: int = 0
    rows: int = 0
    already: int = 0
    refused: list[tuple[str, int, str]] = field(default_factory=list)


def sign(history: RunHistory) -> SignReport:
    """Sign every checkpoint and execution row that checks out as the settings sign now."""
    report = SignReport()
    for row in history.pages(checkpoints, (checkpoints.c.execution_id, checkpoints.c.seq), None):
        _sign_checkpoint(history, row, report)
    for row in history.pages(executions, (executions.c.id,), None):
        _sign_row(history, row, report)
    return report


def _sign_checkpoint(history: RunHistory, row: Row[Any], report: SignReport) -> None:
    m = row._mapping
    sealer, execution_id, stored = history.sealer, m["execution_id"], m["checksum"]
    if sealer.signer.is_current(stored):
        report.already += 1
        return
    try:
        state = sealer.open(m["state"], execution_id)
        output = None if m["output"] is None else sealer.open(m["output"], execution_id)
        parts = codec.checkpoint_parts(
            execution_id, m["seq"], m["kind"], m["node"], m["visit"], state, m["cursor"],
            output, m["meta"],
        )  # fmt: skip
        trusted = sealer.signer.trusting_unkeyed().matches(parts, stored)
    except (Unsealable, DurableError):
        trusted = False
    if not trusted:
        report.refused.append((execution_id, m["seq"], "checkpoint"))
        return
    c = checkpoints.c
    with history.db.engine.begin() as conn:
        conn.execute(
            update(checkpoints)
            .where(c.execution_id == execution_id, c.seq == m["seq"], c.checksum == stored)
            .values(checksum=sealer.signer.sign(parts))
        )
    report.checkpoints += 1


def _sign_row(history: RunHistory, row: Row[Any], report: SignReport) -> None:
    """A row is checked against its own checksum; a row with none (written before revision
    0005 and encrypted, so the migration could not sign it) against its newest checkpoint,
    which must agree on version, state and cursor."""
    m = row._mapping
    sealer, execution_id, stored = history.sealer, m["id"], m["checksum"]
    if sealer.signer.is_current(stored):
        report.already += 1
        return
    try:
        state = sealer.open(m["state"], execution_id)
        parts = codec.row_parts(
            execution_id, m["version"], m["status"], state, m["cursor"], m["error"]
        )
        if stored is None:
            trusted = _agrees_with_history(history, execution_id)
        else:
            trusted = sealer.signer.trusting_unkeyed().matches(parts, stored)
    except (Unsealable, DurableError):
        trusted = False
    if not trusted:
        report.refused.append((execution_id, m["version"], "row"))
        return
    e = executions.c
    unchanged = e.checksum.is_(None) if stored is None else e.checksum == stored
    with history.db.engine.begin() as conn:
        conn.execute(
            update(executions)
            .where(e.id == execution_id, e.version == m["version"], unchanged)
            .values(checksum=sealer.signer.sign(parts))
        )
    report.rows += 1


def _agrees_with_history(history: RunHistory, execution_id: str) -> bool:
    row = history.get_execution(execution_id, verify=False)
    told = history.rebuilt(execution_id)
    return (row.version, row.state, row.cursor) == (told.version, told.state, told.cursor)
