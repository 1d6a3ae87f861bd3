"""The operations the web view offers, each calling the same public method as the CLI
command of the same name, audited with the signed-in user as ``by``. Fields come from a
form (strings, JSON in text) or a JSON body (values).

A run's page offers only what its status allows (the engine's own table, so the page and the
refusal cannot disagree), and the destructive ones only after the operator confirmed."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from celery_durable import Durable, Execution, Status
from celery_durable.engine.operations import ALLOWED, FINAL
from celery_durable.engine.versions import UPGRADABLE
from celery_durable.status import FINISHED


class Refused(Exception):
    """The request itself is wrong (a missing field, text that is not JSON): nothing done."""


Fields = dict[str, Any]
Operation = Callable[[Durable, Execution, Fields, str, str | None], dict[str, Any]]


def _json(fields: Fields, name: str, *, required: bool = False, any_json: bool = False) -> Any:
    value = fields.get(name)
    if value in (None, ""):
        if required:
            raise Refused(f"{name} is required")
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise Refused(f"{name} is not JSON: {exc}") from exc
    if not any_json and not isinstance(value, dict):
        raise Refused(f'{name} must be a JSON object, like {{"field": 1}}')
    return value


def _int(fields: Fields, name: str) -> int:
    try:
        return int(fields[name])
    except (KeyError, TypeError, ValueError):
        raise Refused(f"{name} must be a checkpoint number") from None


def _text(fields: Fields, name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value:
        raise Refused(f"{name} is required")
    return value


def _simple(method: str) -> Operation:
    def run(d: Durable, ex: Execution, f: Fields, by: str, why: str | None) -> dict[str, Any]:
        getattr(ex, method)(by=by, reason=why)
        return {}

    return run


def _resume(d: Durable, ex: Execution, f: Fields, by: str, why: str | None) -> dict[str, Any]:
    ex.resume(_json(f, "update"), by=by, reason=why)
    return {}


def _restart(d: Durable, ex: Execution, f: Fields, by: str, why: str | None) -> dict[str, Any]:
    ex.restart_from(_int(f, "seq"), by=by, reason=why)
    return {}


def _fork(d: Durable, ex: Execution, f: Fields, by: str, why: str | None) -> dict[str, Any]:
    new_id = f.get("execution_id") or None
    forked = ex.fork(_int(f, "seq"), execution_id=new_id, by=by, reason=why)
    return {"id": forked.id}


def _skip(d: Durable, ex: Execution, f: Fields, by: str, why: str | None) -> dict[str, Any]:
    ex.skip(_text(f, "node"), _json(f, "output"), by=by, reason=why)
    return {}


def _patch(d: Durable, ex: Execution, f: Fields, by: str, why: str | None) -> dict[str, Any]:
    ex.update_state(_json(f, "patch", required=True), by=by, reason=why)
    return {}


def _send_event(d: Durable, ex: Execution, f: Fields, by: str, why: str | None) -> dict[str, Any]:
    payload = _json(f, "payload", any_json=True)
    key = f.get("idempotency_key") or None
    event = d.send_event(ex.id, _text(f, "name"), payload, key, by=by, reason=why)
    return {"event": event.id}


def _upgrade(d: Durable, ex: Execution, f: Fields, by: str, why: str | None) -> dict[str, Any]:
    return {"version": ex.upgrade(f.get("version") or None, by=by, reason=why)}


# In the order a run's page shows them: what moves a run on first, what ends it last.
OPERATIONS: dict[str, Operation] = {
    "resume": _resume,
    "retry": _simple("retry"),
    "pause": _simple("pause"),
    "send-event": _send_event,
    "patch": _patch,
    "skip": _skip,
    "restart": _restart,
    "fork": _fork,
    "upgrade": _upgrade,
    "cancel": _simple("cancel"),
    "compensate": _simple("compensate"),
}

S = Status
# The statuses each operation accepts: the engine's table, and the repairs' own rules.
STATUSES: dict[str, frozenset[Status]] = {
    **ALLOWED,
    "upgrade": UPGRADABLE,
    "restart": frozenset(S) - {S.RUNNING, S.COMPENSATING, S.PENDING},
    "fork": frozenset(S),
    "skip": frozenset({S.FAILED, S.NEEDS_INTERVENTION}),
    "patch": frozenset(S) - FINAL,
    "send-event": frozenset(S) - FINISHED,
}
# What cannot be taken back with one click: the page asks again, in these words, before it
# is done (a form without confirm=yes gets the question, not the operation).
CONFIRM = {
    "cancel": "Cancel this run? Nothing more of it runs and its tasks in flight are revoked; "
    "a cancelled run cannot be resumed.",
    "compensate": "Compensate this run? Its completed steps are undone, newest first.",
    "restart": "Restart this run from the checkpoint given? It goes on from that checkpoint's "
    "state; what came after stays in its history.",
    "skip": "Skip the node given? It is marked done with the output given, without running.",
    "upgrade": "Upgrade this run to the version given (the newest if none)? It goes on with "
    "that version's graph.",
}
DESTRUCTIVE = frozenset(CONFIRM)
# What Durable.bulk applies to a selection of runs.
BULK = ("retry", "resume", "pause", "cancel", "compensate", "upgrade")


def offered(
    status: Status, *, approval: bool, compensable: bool, other_versions: bool
) -> tuple[str, ...]:
    """The operations a run in ``status`` accepts, in the order the page shows them.
    ``approval``: it waits at an interrupt (a waiting run resumes only from one);
    ``compensable``: its graph has compensations; ``other_versions``: there is a version to
    upgrade it to."""
    skip = set()
    if status == S.WAITING and not approval:
        skip.add("resume")
    if not compensable:
        skip.add("compensate")
    if not other_versions:
        skip.add("upgrade")
    return tuple(op for op in OPERATIONS if status in STATUSES[op] and op not in skip)


def run_operation(
    durable: Durable, execution: Execution, name: str, fields: Fields, user: str | None
) -> dict[str, Any]:
    """Run one operation; DurableError (wrong status, bad state) and Refused pass through."""
    why = fields.get("reason") or None
    result = OPERATIONS[name](durable, execution, fields, user or "web", why)
    return {"id": execution.id, "status": str(execution.refresh().status), **result}
