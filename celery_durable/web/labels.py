"""How the pages say times, durations and waits: the same words as the CLI where it has them
(``render.age``), a date with every time (a timeline can span days), UTC said once."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from celery_durable.render import age


def when(iso: str | None) -> str:
    """``2026-12-07 06:32:01.123`` (UTC), from an ISO time."""
    if not iso:
        return ""
    at = datetime.fromisoformat(iso).astimezone(UTC)
    return at.strftime("%Y-%m-%d %H:%M:%S.") + f"{at.microsecond // 1000:03d}"


def ago(iso: str | None, now: datetime | None = None) -> str:
    """``5m ago``, as ``durable ls`` says it."""
    if not iso:
        return ""
    return age(datetime.fromisoformat(iso), now) + " ago"


def span(seconds: float | None) -> str:
    """``850ms``, ``42s``, ``3m 05s``, ``2h 10m``, ``3d 4h``."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    whole = int(seconds)
    for size, unit, small, small_unit in ((86400, "d", 3600, "h"), (3600, "h", 60, "m")):
        if whole >= size:
            return f"{whole // size}{unit} {whole % size // small}{small_unit}"
    if whole >= 60:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"


def offset(iso: str, start: str | None) -> str:
    """``+1.234s`` after the run's first checkpoint (as ``durable history`` counts)."""
    if not start:
        return ""
    seconds = (datetime.fromisoformat(iso) - datetime.fromisoformat(start)).total_seconds()
    return f"+{seconds:.3f}s"


def waits_for(wait: Mapping[str, Any] | None) -> str | None:
    """What a run waits for, from ``Execution.waiting_on``: ``approval before review``,
    ``event paid at collect until 2026-12-07 07:00:00``, ``sleep at ship until ...``."""
    if not wait:
        return None
    kind, node = wait.get("kind"), wait.get("node")
    if kind == "interrupt":
        text = f"approval {wait.get('when', 'before')} {node}"
    elif kind == "event":
        text = f"event {wait.get('event')} at {node}"
    elif kind == "child":
        text = f"child run {wait.get('child')} at {node}"
    elif kind == "children":
        text = f"{wait.get('children')} child runs at {node}"
    else:
        text = f"{kind} at {node}"
    until = wait.get("until")
    if until:
        text += f" until {when(until)[:19]}"
    return text


def few(names: list[str], shown: int = 3) -> str:
    """``a, b, c and 47 more``: a fan-out's nodes in one line of the list."""
    if len(names) <= shown + 1:
        return ", ".join(names)
    return f"{', '.join(names[:shown])} and {len(names) - shown} more"


def pretty(value: Any) -> str:
    """A state as the page shows it: indented JSON, keys in order."""
    return json.dumps(value, indent=2, sort_keys=True)
