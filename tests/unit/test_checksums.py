"""Checksums that cannot be skipped or forged: a row without one is refused, and under
checksum_key they are HMACs that someone who can write the tables cannot recompute. The
rows are tampered with plain SQL, as such a person would."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from alembic import command
from click.testing import CliRunner
from pydantic import BaseModel
from sqlalchemy import text

from celery_durable import CheckpointCorrupted, Context, Durable
from celery_durable.cli import main
from celery_durable.errors import ChecksumKeyMissing, ConfigurationError
from celery_durable.persistence import codec, migrate
from celery_durable.persistence.codec import Signer
from celery_durable.testing import embedded_app, in_process_worker

KEY = "a checksum key of some length"
NEW_KEY = "the key that replaces it"
KEYS = {"k1": KEY}


class Bill(BaseModel):
    amount: int = 0
    paid: bool = False


Make = Callable[..., Durable]


@pytest.fixture
def make(database_url: str) -> Iterator[Make]:
    """``make(**settings)``: a Durable on the test's database with the ``bill`` graph."""
    made: list[Durable] = []

    def build(**settings: Any) -> Durable:
        durable = Durable(embedded_app(f"sum-{uuid.uuid4().hex[:6]}"), database_url, **settings)
        durable.migrate()
        g = durable.graph("bill", state=Bill)

        @g.node
        def pay(state: Bill, ctx: Context) -> dict[str, Any]:
            return {"paid": True}

        g.entry(pay)
        made.append(durable)
        return durable

    yield build
    for durable in made:
        durable.db.dispose()


def run_once(durable: Durable) -> str:
    with in_process_worker(durable):
        run = durable.graphs["bill"].delay(amount=10)
        run.wait(timeout=10)
    return run.id


def sql(durable: Durable, statement: str, **params: Any) -> Any:
    with durable.db.engine.begin() as conn:
        return conn.execute(text(statement), params)


def test_a_row_whose_checksum_was_cleared_is_refused(make: Make) -> None:
    durable = make()
    run_id = run_once(durable)
    sql(
        durable,
        "UPDATE durable_executions SET state = :s, checksum = NULL WHERE id = :id",
        s='{"amount":1000000,"paid":false}',
        id=run_id,
    )
    with pytest.raises(CheckpointCorrupted):
        durable.get(run_id)
    assert durable.verify() == [(run_id, _version(durable, run_id), "row")]


def test_under_a_key_a_recomputed_sha256_no_longer_passes(make: Make) -> None:
    durable = make(checksum_keys=KEYS)
    run_id = run_once(durable)
    row_sum, cp_sums = _sums(durable, run_id)
    assert row_sum.startswith("h:k1:") and len(row_sum) == 64
    assert all(s.startswith("h:k1:") and len(s) == 64 for s in cp_sums)
    assert durable.verify() == []
    # Someone with write access edits the row and recomputes the SHA-256 the way codec does.
    row = sql(
        durable, "SELECT version, status, cursor, error FROM durable_executions WHERE id = :id",
        id=run_id,
    ).one()  # fmt: skip
    forged = '{"amount":1000000,"paid":false}'
    parts = codec.row_parts(run_id, row.version, row.status, forged, row.cursor, row.error)
    digest = hashlib.sha256(b"".join(p.encode() + b"\x00" for p in parts)).hexdigest()
    sql(
        durable,
        "UPDATE durable_executions SET state = :s, checksum = :c WHERE id = :id",
        s=forged,
        c=digest,
        id=run_id,
    )
    assert durable.verify() == [(run_id, row.version, "row")]
    with pytest.raises(CheckpointCorrupted):
        durable.get(run_id)


def test_a_keyed_row_read_without_the_key_says_which_setting_is_missing(make: Make) -> None:
    run_id = run_once(make(checksum_keys=KEYS))
    with pytest.raises(ChecksumKeyMissing, match=r"'k1'.*CELERY_DURABLE_CHECKSUM_KEYS"):
        make().get(run_id)


def test_switching_the_key_on_re_signs_what_checks_out_and_only_that(make: Make) -> None:
    before = make()
    good, bad = run_once(before), run_once(before)
    sql(before, "UPDATE durable_checkpoints SET meta = '{}' WHERE execution_id = :id", id=bad)
    assert make(checksum_keys=KEYS).verify() != []  # unkeyed checksums are no longer trusted
    during = make(checksum_keys=KEYS, accept_unkeyed_checksums=True)
    refused = {(run, kind) for run, _, kind in during.verify()}
    assert refused == {(bad, "checkpoint")}
    report = during.sign_checksums()
    assert {(run, kind) for run, _, kind in report.refused} == {(bad, "checkpoint")}
    assert report.rows == 2 and report.checkpoints > 0 and report.already == 0
    assert all(s.startswith("h:") for s in _sums(before, good)[1])
    after = make(checksum_keys=KEYS)
    assert {(run, kind) for run, _, kind in after.verify()} == {(bad, "checkpoint")}
    assert during.sign_checksums().already == report.rows + report.checkpoints
    with pytest.raises(ChecksumKeyMissing):
        before.get(good)


def test_the_migration_gives_rows_from_before_0005_a_checksum(make: Make) -> None:
    durable = make()
    run_id = run_once(durable)
    config = migrate._config()
    with durable.db.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0008")
    sql(durable, "UPDATE durable_executions SET checksum = NULL WHERE id = :id", id=run_id)
    assert durable.verify() == [(run_id, _version(durable, run_id), "row")]
    durable.migrate()
    assert durable.verify() == []
    assert durable.get(run_id).state.paid


def _sums(durable: Durable, run_id: str) -> tuple[str, list[str]]:
    row = sql(durable, "SELECT checksum FROM durable_executions WHERE id = :id", id=run_id)
    cps = sql(
        durable, "SELECT checksum FROM durable_checkpoints WHERE execution_id = :id", id=run_id
    )
    return row.scalar_one(), [r.checksum for r in cps]


def test_a_rotated_key_checks_what_it_signed_until_re_signed(make: Make) -> None:
    run_id = run_once(make(checksum_keys=KEYS))
    rotated = make(checksum_keys={**KEYS, "k2": NEW_KEY}, checksum_key="k2")
    assert rotated.verify() == []  # k1's rows still check out
    second = run_once(rotated)
    assert _sums(rotated, second)[0].startswith("h:k2:")
    report = rotated.sign_checksums()
    assert report.refused == [] and report.rows == 1 and report.already > 0
    assert all(
        s.startswith("h:k2:") for s in [_sums(rotated, run_id)[0], *_sums(rotated, run_id)[1]]
    )
    assert make(checksum_keys={"k2": NEW_KEY}).verify() == []  # k1 can go


def test_keys_that_cannot_sign_are_refused_at_once() -> None:
    with pytest.raises(ConfigurationError, match="shorter than 16"):
        Signer({"k1": "short"})
    with pytest.raises(ConfigurationError, match="1 to 8 characters"):
        Signer({"a:b": KEY})
    with pytest.raises(ConfigurationError, match="name the one that signs"):
        Signer({"k1": KEY, "k2": NEW_KEY})


def _version(durable: Durable, run_id: str) -> int:
    row = sql(durable, "SELECT version FROM durable_executions WHERE id = :id", id=run_id)
    return int(row.scalar_one())


def test_the_command_line_re_signs_and_lists_what_does_not_verify(make: Make) -> None:
    before = make()
    good, bad = run_once(before), run_once(before)
    sql(before, "UPDATE durable_checkpoints SET meta = '{}' WHERE execution_id = :id", id=bad)
    env = {
        "CELERY_DURABLE_CHECKSUM_KEYS": json.dumps(KEYS),
        "CELERY_DURABLE_ACCEPT_UNKEYED_CHECKSUMS": "true",
    }
    url = before.settings.database_url
    result = CliRunner().invoke(main, ["--database-url", url, "verify", "--sign"], env=env)
    assert result.exit_code == 1, result.output
    assert "signed 2 rows and" in result.output
    assert f"{bad}: checkpoint" in result.output and good not in result.output
    assert all(s.startswith("h:k1:") for s in _sums(before, good)[1])
