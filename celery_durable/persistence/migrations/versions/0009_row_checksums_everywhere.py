"""A checksum on every execution row: rows written before 0005 get theirs now, so a row
without one is refused instead of read unverified.

Revision ID: 0009
Revises: 0008

The checksum is taken over the plain state; a row whose state was encrypted before it was
ever rewritten cannot be opened here (no keys), keeps NULL, and is refused until
``durable verify --sign`` (which has the keys) checks it against its newest checkpoint and
signs it.
"""

import base64
import binascii
import zlib

import sqlalchemy as sa
from alembic import op

from celery_durable.persistence.codec import Signer, row_parts

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BATCH = 1000


def upgrade() -> None:
    conn = op.get_bind()
    executions = sa.table(
        "durable_executions",
        sa.column("id", sa.String),
        sa.column("version", sa.Integer),
        sa.column("status", sa.String),
        sa.column("state", sa.Text),
        sa.column("cursor", sa.Text),
        sa.column("error", sa.Text),
        sa.column("checksum", sa.String),
    )
    c = executions.c
    unkeyed = Signer()
    last = ""
    while True:
        rows = conn.execute(
            sa.select(executions)
            .where(c.checksum.is_(None), c.id > last)
            .order_by(c.id)
            .limit(BATCH)
        ).all()
        for row in rows:
            state = _plain(row.state)
            if state is None:
                continue
            parts = row_parts(row.id, row.version, row.status, state, row.cursor, row.error)
            conn.execute(
                sa.update(executions)
                .where(c.id == row.id, c.version == row.version, c.checksum.is_(None))
                .values(checksum=unkeyed.sign(parts))
            )
        if len(rows) < BATCH:
            return
        last = rows[-1].id


def downgrade() -> None:
    """Checksums stay: revision 0008 reads them as it reads any other."""


def _plain(stored: str) -> str | None:
    """The state as JSON text, or None when it is encrypted (or not something it can open)."""
    if stored.startswith("e:"):
        return None
    if not stored.startswith("z:"):
        return stored
    try:
        return zlib.decompress(base64.b64decode(stored[2:], validate=True)).decode()
    except (binascii.Error, ValueError, zlib.error):
        return None
