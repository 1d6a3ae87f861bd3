"""States and outputs at rest: compressed past a size, encrypted with rotating keys, and
checked against checksums over the plain JSON. The rows are read and tampered with plain SQL."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import text

from celery_durable import CheckpointCorrupted, Context, Durable, Settings, Status
from celery_durable.engine.base import Base
from celery_durable.errors import ConfigurationError, EncryptionKeyMissing
from celery_durable.persistence import codec
from celery_durable.tasks.dispatch import Publication
from celery_durable.tasks.message import Message
from celery_durable.testing import embedded_app, in_process_worker

SECRET = "4111-1111-1111-1111"


class Card(BaseModel):
    number: str = ""
    notes: list[str] = []
    charged: int = 0


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


Make = Callable[..., Durable]


@pytest.fixture
def make(database_url: str) -> Iterator[Make]:
    """``make(**settings)``: a Durable on the test's database with the ``card`` graph."""
    made: list[Durable] = []

    def build(**settings: Any) -> Durable:
        durable = Durable(embedded_app(f"seal-{uuid.uuid4().hex[:6]}"), database_url, **settings)
        durable.migrate()
        g = durable.graph("card", state=Card)

        @g.node
        def charge(state: Card, ctx: Context) -> dict[str, Any]:
            receipt = ctx.step("gateway", lambda: {"card": state.number, "ok": True})
            return {"charged": state.charged + 1, "notes": [*state.notes, receipt["card"]]}

        g.entry(charge)
        made.append(durable)
        return durable

    yield build
    for durable in made:
        durable.db.dispose()


def run_once(durable: Durable, **input: Any) -> str:
    with in_process_worker(durable):
        run = durable.graphs["card"].delay(**input)
        run.wait(timeout=10)
    return run.id


def stored(durable: Durable, run_id: str) -> list[str]:
    """Every state and output column of the run as stored, row and checkpoints."""
    with durable.db.engine.connect() as conn:
        row = conn.execute(
            text("SELECT state FROM durable_executions WHERE id = :id"), {"id": run_id}
        ).scalar_one()
        cps = conn.execute(
            text("SELECT state, output FROM durable_checkpoints WHERE execution_id = :id"),
            {"id": run_id},
        ).all()
    return [row] + [v for cp in cps for v in cp if v]  # a step's state is "": none


def test_large_states_are_compressed_and_verify_against_the_plain_json(make: Make) -> None:
    durable = make()  # compress_over defaults to 4096 bytes
    notes = [f"line {i} of a long note about this card" for i in range(400)]
    big = run_once(durable, number=SECRET, notes=notes)
    small = run_once(durable, number=SECRET)
    big_row, *_ = stored(durable, big)
    assert big_row.startswith("z:")
    plain = codec.dumps(durable.get(big).refresh().state)
    assert len(big_row) * 4 < len(plain)  # JSON this repetitive shrinks well past 4x
    assert stored(durable, small)[0].startswith("{")  # under the threshold: as it is
    assert durable.get(big).state.notes == [*notes, SECRET]
    node = next(cp for cp in durable.get(big).history() if cp.kind == "node")
    expected = codec.checksum(
        big, node.seq, "node", "charge", 1, plain, codec.dumps(node.cursor.to_json()),
        codec.dumps(node.output), codec.dumps(node.meta),
    )  # fmt: skip
    assert node.checksum == expected  # over the plain JSON, not the stored bytes
    assert durable.verify() == []


def test_a_step_checkpoint_stores_its_result_not_the_state(make: Make) -> None:
    durable = make(compress_over=0)
    run_id = run_once(durable, number=SECRET, notes=["x" * 1000])
    with durable.db.engine.connect() as conn:
        step_state, output = conn.execute(
            text(
                "SELECT state, output FROM durable_checkpoints "
                "WHERE execution_id = :id AND kind = 'step'"
            ),
            {"id": run_id},
        ).one()
    assert step_state == "" and json.loads(output) == {"card": SECRET, "ok": True}
    run = durable.get(run_id)
    step = next(cp for cp in run.history() if cp.kind == "step")
    assert step.state is None and step.output == {"card": SECRET, "ok": True}
    run.restart_from(step.seq, by="ops", reason="from the step")  # the state before it
    with in_process_worker(durable):
        assert run.wait(timeout=10).charged == 1


def test_encrypted_rows_hold_no_plain_text_and_metadata_stays_readable(make: Make) -> None:
    durable = make(encryption_keys={"k1": new_key()})
    run_id = run_once(durable, number=SECRET)
    for value in stored(durable, run_id):
        assert value.startswith("e:k1:") and SECRET not in value
    with durable.db.engine.connect() as conn:
        status, cursor = conn.execute(
            text("SELECT status, cursor FROM durable_executions WHERE id = :id"), {"id": run_id}
        ).one()
        kinds = conn.execute(
            text(
                "SELECT kind, meta FROM durable_checkpoints WHERE execution_id = :id ORDER BY seq"
            ),
            {"id": run_id},
        ).all()
    assert status == "succeeded" and isinstance(json.loads(cursor), dict)
    assert [k for k, _ in kinds] == ["start", "step", "node"]
    assert json.loads(kinds[2][1])["attempt"] == 1
    run = durable.get(run_id)
    assert run.state.number == SECRET and run.state.notes == [SECRET]
    assert durable.verify() == []


def test_keys_rotate_and_a_missing_key_is_a_clear_error(make: Make) -> None:
    k1, k2 = new_key(), new_key()
    old = run_once(make(encryption_keys={"k1": k1}), number="old")
    rotated = make(encryption_keys={"k1": k1, "k2": k2}, encryption_key="k2")
    new = run_once(rotated, number="new")
    assert stored(rotated, new)[0].startswith("e:k2:")
    assert stored(rotated, old)[0].startswith("e:k1:")
    assert rotated.get(old).state.number == "old"  # old rows stay readable
    assert rotated.get(new).state.number == "new"
    without_k1 = make(encryption_keys={"k2": k2})
    with pytest.raises(EncryptionKeyMissing, match=r"'k1'.*encryption_keys"):
        without_k1.get(old).retry(by="ops")
    assert rotated.get(old).status == Status.SUCCEEDED  # nothing changed
    assert sorted(r.id for r in without_k1.list()) == sorted([old, new])  # listings still work


def test_a_changed_ciphertext_is_refused_as_corrupted(make: Make) -> None:
    durable = make(encryption_keys={"k1": new_key()})
    run_id = run_once(durable, number=SECRET)
    with durable.db.engine.begin() as conn:  # the chaos: one byte of the ciphertext
        sealed = conn.execute(
            text("SELECT state FROM durable_executions WHERE id = :id"), {"id": run_id}
        ).scalar_one()
        flipped = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
        conn.execute(
            text("UPDATE durable_executions SET state = :s WHERE id = :id"),
            {"s": flipped, "id": run_id},
        )
        conn.execute(
            text("UPDATE durable_checkpoints SET output = :s WHERE execution_id = :id AND seq = 1"),
            {"s": flipped, "id": run_id},
        )
    with pytest.raises(CheckpointCorrupted, match="row of execution"):
        durable.get(run_id).state  # noqa: B018
    history = durable.runtime.store.list(run_id, contain=True)
    assert [cp.corrupted for cp in history] == [False, True, False]


def test_bad_encryption_settings_are_refused_where_they_are_given(database_url: str) -> None:
    app = embedded_app("seal-config")
    with pytest.raises(ConfigurationError, match="32 bytes in base64"):
        Durable(app, database_url, encryption_keys={"k1": "too short"})
    with pytest.raises(ConfigurationError, match="name the one that encrypts"):
        Durable(app, database_url, encryption_keys={"a": new_key(), "b": new_key()})
    with pytest.raises(ConfigurationError, match="not one of encryption_keys"):
        Durable(app, database_url, encryption_keys={"a": new_key()}, encryption_key="b")
    with pytest.raises(ConfigurationError, match="without ':'"):
        Durable(app, database_url, encryption_keys={"a:b": new_key()})
    key = new_key()
    settings = Settings.load(
        environ={
            "CELERY_DURABLE_ENCRYPTION_KEYS": json.dumps({"k1": key}),
            "CELERY_DURABLE_ENCRYPTION_KEY": "k1",
        }
    )
    assert settings.encryption_keys == {"k1": key} and settings.encryption_key == "k1"


def test_with_encryption_node_messages_carry_the_state_sealed(make: Make) -> None:
    durable = make(encryption_keys={"k1": new_key()})
    run = durable.graphs["card"].delay(number=SECRET)  # no worker: its message is not taken
    base = Base.of(durable.store.get_execution(run.id))
    sent = durable.runtime.dispatcher.prepare("card", "charge", 1, run.id, base)
    assert isinstance(sent, Publication) and sent.built is not None
    kwargs = sent.message.kwargs()
    assert kwargs["state"].startswith("e:k1:") and SECRET not in json.dumps(kwargs)
    assert SECRET not in repr(sent.built)  # the body Celery publishes
    read = Message.read(run.id, 1, kwargs, durable.store.sealer)
    assert read.base.state == base.state
    with in_process_worker(durable):
        assert run.wait(timeout=10).notes == [SECRET]  # type: ignore[attr-defined]
    plain = make()
    plain_run = plain.graphs["card"].delay(number=SECRET)
    plain_base = Base.of(plain.store.get_execution(plain_run.id))
    assert Message(plain_run.id, 1, plain_base).kwargs()["state"]["number"] == SECRET
