"""The operations the web view offers, each calling the same public method as the CLI
command of the same name, audited with the signed-in user as ``by``. Fields come from a
form (strings, JSON in text) or a JSON body (values)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from celery_durable import Durable, Execution


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


OPERATIONS: dict[str, Operation] = {
    "pause": _simple("pause"),
    "resume": _resume,
    "cancel": _simple("cancel"),
    "retry": _simple("retry"),
    "restart": _restart,
    "fork": _fork,
    "skip": _skip,
    "patch": _patch,
    "compensate": _simple("compensate"),
    "send-event": _send_event,
}


def run_operation(
    durable: Durable, execution: Execution, name: str, fields: Fields, user: str | None
) -> dict[str, Any]:
    """Run one operation; DurableError (wrong status, bad state) and Refused pass through."""
    why = fields.get("reason") or None
    result = OPERATIONS[name](durable, execution, fields, user or "web", why)
    return {"id": execution.id, "status": str(execution.refresh().status), **result}
