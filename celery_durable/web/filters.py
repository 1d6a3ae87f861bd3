"""The run list's filters, spelled as the CLI spells them (``status=failed``, ``since=2h``,
``tag=customer=c-42``, repeatable as ``--tag`` is):
an operator who knows ``durable ls`` knows the query string. A value that does not parse, or
a filter that does not exist, is refused with what to write instead, never ignored (a typo
that silently lists nothing reads as "no such runs")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from celery_durable import Status
from celery_durable.errors import InvalidTags
from celery_durable.model.tags import parsed

# The units `durable ls --since` takes.
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
NAMES = ("status", "graph", "since", "prefix", "parent", "tag", "before")


class BadFilter(ValueError):
    """A filter the list cannot apply; the message says what to write instead."""


@dataclass(frozen=True)
class Filters:
    """``status``: one status or several (any of them); ``tags``: (key, value) pairs, every
    one of them; ``before``: the key of the last run of the page before, (created_at, id);
    see Durable.list."""

    status: str | tuple[str, ...] | None = None
    graph: str | None = None
    since: datetime | None = None
    prefix: str | None = None
    parent: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    before: tuple[datetime, str] | None = None

    @classmethod
    def parse(cls, args: Mapping[str, str | Sequence[str]], now: datetime | None = None) -> Filters:
        """From query arguments (a name may repeat: ``status=failed&status=waiting``)."""
        values = {name: _values(value) for name, value in args.items()}
        unknown = sorted(set(values) - set(NAMES))
        if unknown:
            raise BadFilter(f"no filter {unknown[0]!r}: the filters are {', '.join(NAMES)}")
        statuses = tuple(_status(s) for v in values.get("status", []) for s in v.split(","))
        since = _last(values, "since")
        before = _last(values, "before")
        return cls(
            status=statuses[0] if len(statuses) == 1 else statuses or None,
            graph=_last(values, "graph"),
            since=since_time(since, now or datetime.now(UTC)) if since else None,
            prefix=_last(values, "prefix"),
            parent=_last(values, "parent"),
            tags=_tags(values.get("tag", [])),
            before=_before(before) if before else None,
        )

    @property
    def statuses(self) -> tuple[str, ...]:
        if self.status is None:
            return ()
        return (self.status,) if isinstance(self.status, str) else self.status


def since_time(text: str, now: datetime) -> datetime:
    """``90s``, ``15m``, ``2h``, ``7d``, ``1w`` ago (as ``durable ls --since``), or an ISO time."""
    text = text.strip()
    if text[-1:] in UNITS:
        try:
            return now - timedelta(seconds=float(text[:-1]) * UNITS[text[-1]])
        except ValueError:
            pass
    try:
        # An ISO time typed in an address has lost its "+" to a space.
        at = datetime.fromisoformat(text.replace(" ", "+") if "T" in text else text)
    except ValueError:
        raise BadFilter(
            f"since={text!r}: use a number and a unit, like 90s, 15m, 2h, 7d (as durable ls "
            "--since), or an ISO time like 2026-12-01T00:00+00:00"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _status(text: str) -> str:
    try:
        return str(Status(text.strip()))
    except ValueError:
        names = ", ".join(str(s) for s in Status)
        raise BadFilter(f"no status {text!r}: use one of {names}") from None


def _tags(spelled: list[str]) -> tuple[tuple[str, str], ...]:
    try:
        return tuple(parsed(spelled).items())
    except InvalidTags as exc:
        raise BadFilter(f"tag: {exc.problem}") from None


def _before(text: str) -> tuple[datetime, str]:
    at, _, last = text.partition("|")
    try:
        return datetime.fromisoformat(at), last
    except ValueError:
        raise BadFilter(
            f"before={text!r} is not a page key: follow the list's 'Older runs' link"
        ) from None


def _values(value: str | Sequence[str]) -> list[str]:
    listed = [value] if isinstance(value, str) else list(value)
    return [v for v in listed if v]


def _last(values: Mapping[str, list[str]], name: str) -> str | None:
    given = values.get(name)
    return given[-1] if given else None
