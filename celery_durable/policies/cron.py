"""When a schedule ticks: a cron expression in a time zone, or a fixed interval. Pure values,
each telling the first tick after an instant; no Celery, no SQL, no clock of their own.

A cron has five fields (minute hour day-of-month month day-of-week) or six, seconds first.
Each field takes ``*``, a value, a range ``a-b``, a step ``*/n``, ``a-b/n`` or ``a/n``, and
lists of them; months and weekdays also by name (``jan``, ``mon``); ``@hourly``, ``@daily``
(``@midnight``), ``@weekly``, ``@monthly`` and ``@yearly`` (``@annually``) stand for their
usual crons. As in Vixie cron, when both day fields are restricted a day matching either one
matches, otherwise a day must match both.

Wall times and daylight saving time: a time the clock skips (spring forward) ticks once, at
the instant the clock jumps over it; a time the clock shows twice (fall back) ticks once, the
first time. So a nightly job runs once every night, and no tick is ever started twice.
"""

from __future__ import annotations

import bisect
import calendar
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery_durable.errors import InvalidSchedule

# (name, lowest, highest) of each field, seconds first.
FIELDS = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)
MONTHS = {m.lower(): i for i, m in enumerate(calendar.month_abbr) if m}
WEEKDAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# What leaves a field unrestricted ("?" as Quartz writes it for a day field).
STARS = ("*", "?")
# A cron that matches no day in this many years never will (Feb 29 comes every 4 to 8).
SEARCH_YEARS = 30
# How far back ``latest_at_or_before`` looks for a tick before it gives up.
LOOK_BACK = timedelta(days=366 * SEARCH_YEARS)


class Timetable(Protocol):
    """When a schedule ticks."""

    def next_after(self, after: datetime) -> datetime:
        """The first tick strictly after ``after`` (aware), in UTC."""
        ...

    @property
    def needs_seconds(self) -> bool:
        """Whether some tick falls inside a minute, so a minutely check would start it late."""
        ...

    def describe(self) -> str:
        """How an operator reads it: the cron and its zone, or the interval."""
        ...


@dataclass(frozen=True, slots=True)
class Cron:
    """A cron expression read in a time zone (an IANA name, default UTC)."""

    expression: str
    timezone: str = "UTC"
    seconds: tuple[int, ...] = field(init=False, repr=False)
    minutes: tuple[int, ...] = field(init=False, repr=False)
    hours: tuple[int, ...] = field(init=False, repr=False)
    days: frozenset[int] = field(init=False, repr=False)
    months: tuple[int, ...] = field(init=False, repr=False)
    weekdays: frozenset[int] = field(init=False, repr=False)
    # Both day fields restricted: a day matching either matches (Vixie cron's rule).
    either_day: bool = field(init=False, repr=False)
    zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        what = f"cron {self.expression!r}"
        parts = _fields(self.expression, what)
        sets = [_field(text, what, *spec) for text, spec in zip(parts, FIELDS, strict=True)]
        seconds, minutes, hours, days, months, weekdays = sets
        set_ = object.__setattr__
        set_(self, "seconds", tuple(sorted(seconds)))
        set_(self, "minutes", tuple(sorted(minutes)))
        set_(self, "hours", tuple(sorted(hours)))
        set_(self, "days", frozenset(days))
        set_(self, "months", tuple(sorted(months)))
        set_(self, "weekdays", frozenset(d % 7 for d in weekdays))
        set_(self, "either_day", not parts[3].startswith(STARS) and not parts[5].startswith(STARS))
        set_(self, "zone", time_zone(self.timezone))
        if not self.either_day and not any(
            day <= _longest(month) for month in self.months for day in self.days
        ):
            raise InvalidSchedule(what, "no month has the days it names, so it never ticks")

    @property
    def needs_seconds(self) -> bool:
        return self.seconds != (0,)

    def describe(self) -> str:
        return f"{self.expression} ({self.timezone})"

    def next_after(self, after: datetime) -> datetime:
        local = _aware(after).astimezone(self.zone)
        wall = local.replace(tzinfo=None, microsecond=0, fold=0)
        start = wall + timedelta(seconds=1)
        if local.fold:
            # Second time round an hour the clock repeats: its wall times ticked the first
            # time, so the search starts where the repeated hour ends.
            first = wall.replace(tzinfo=self.zone).astimezone(UTC)
            back = _jump(self.zone, first, _aware(after))
            offset = first.astimezone(self.zone).utcoffset() or timedelta()
            start = max(start, (back + offset).replace(tzinfo=None))
        return self._instant(self._wall_at_or_after(start))

    def _wall_at_or_after(self, t: datetime) -> datetime:
        """The first wall time at or after ``t`` (naive, whole seconds) that matches."""
        limit = t.year + SEARCH_YEARS
        while t.year <= limit:
            if t.month not in self.months:
                later = [m for m in self.months if m > t.month]
                t = (
                    datetime(t.year, later[0], 1)
                    if later
                    else datetime(t.year + 1, self.months[0], 1)
                )
            elif not self._day_matches(t) or (hour := _at_or_after(self.hours, t.hour)) is None:
                t = datetime(t.year, t.month, t.day) + timedelta(days=1)
            elif hour != t.hour:
                t = t.replace(hour=hour, minute=0, second=0)
            elif (minute := _at_or_after(self.minutes, t.minute)) is None:
                t = t.replace(minute=0, second=0) + timedelta(hours=1)
            elif minute != t.minute:
                t = t.replace(minute=minute, second=0)
            elif (second := _at_or_after(self.seconds, t.second)) is None:
                t = t.replace(second=0) + timedelta(minutes=1)
            else:
                return t.replace(second=second)
        raise InvalidSchedule(f"cron {self.expression!r}", "it never ticks")

    def _day_matches(self, t: datetime) -> bool:
        by_date = t.day in self.days
        by_weekday = t.isoweekday() % 7 in self.weekdays
        return (by_date or by_weekday) if self.either_day else (by_date and by_weekday)

    def _instant(self, wall: datetime) -> datetime:
        """The instant a wall time ticks: its first occurrence, or, when the clock skips it,
        the instant the clock jumps."""
        at = wall.replace(tzinfo=self.zone).astimezone(UTC)
        if at.astimezone(self.zone).replace(tzinfo=None) == wall:
            return at
        other = wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        return _jump(self.zone, min(at, other), max(at, other))


@dataclass(frozen=True, slots=True)
class Every:
    """A tick every ``interval`` (whole seconds, at least one), counted from the Unix epoch
    in UTC: every process computes the same ticks, with no state shared."""

    interval: timedelta

    def __post_init__(self) -> None:
        if not isinstance(self.interval, timedelta):
            raise InvalidSchedule(f"every={self.interval!r}", "give a datetime.timedelta")
        seconds = self.interval.total_seconds()
        if seconds < 1 or seconds != int(seconds):
            raise InvalidSchedule(
                f"every={self.interval!r}", "give a whole number of seconds, 1 or more"
            )

    @property
    def seconds(self) -> int:
        return int(self.interval.total_seconds())

    @property
    def needs_seconds(self) -> bool:
        return self.seconds % 60 != 0

    def describe(self) -> str:
        return f"every {_duration(self.seconds)}"

    def next_after(self, after: datetime) -> datetime:
        step = self.seconds
        count = math.floor(_aware(after).timestamp() / step) + 1
        return datetime.fromtimestamp(count * step, UTC)


def latest_at_or_before(timetable: Timetable, at: datetime) -> datetime | None:
    """The last tick at or before ``at`` (None: none in ``LOOK_BACK``): a window reaching
    back twice as far each time, then walked forward."""
    reach = timedelta(seconds=1)
    while (first := timetable.next_after(at - reach)) > at:
        if reach > LOOK_BACK:
            return None
        reach *= 2
    while (following := timetable.next_after(first)) <= at:
        first = following
    return first


def ticks(timetable: Timetable, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` ticks after ``after``."""
    found: list[datetime] = []
    while len(found) < count:
        after = timetable.next_after(after)
        found.append(after)
    return found


def time_zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``, or InvalidSchedule."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidSchedule(
            f"timezone={name!r}", "not a time zone: give an IANA name such as 'Europe/Paris'"
        ) from None


def _fields(expression: object, what: str) -> list[str]:
    if not isinstance(expression, str):
        raise InvalidSchedule(what, "a cron is a string such as '0 3 * * *'")
    text = MACROS.get(expression.strip().lower(), expression)
    parts = text.split()
    if len(parts) == 5:
        return ["0", *parts]
    if len(parts) == 6:
        return parts
    raise InvalidSchedule(
        what,
        f"it has {len(parts)} fields; give 5 (minute hour day-of-month month day-of-week) or "
        "6 (seconds first), or one of " + ", ".join(MACROS),
    )


def _field(text: str, what: str, name: str, low: int, high: int) -> set[int]:
    names = MONTHS if name == "month" else WEEKDAYS if name == "day of week" else {}
    values: set[int] = set()
    for part in text.lower().split(","):
        body, slash, step_text = part.partition("/")
        step = _number(step_text, what, name, names={}) if slash else 1
        if body in STARS:
            start, end = low, high
        elif "-" in body:
            first, _, last = body.partition("-")
            start, end = _number(first, what, name, names), _number(last, what, name, names)
        else:
            start = _number(body, what, name, names)
            end = high if slash else start
        if not low <= start <= end <= high or step < 1:
            raise InvalidSchedule(
                what,
                f"the {name} field {text!r} must hold values from {low} to {high}, ranges "
                "low-high, and steps of 1 or more",
            )
        values.update(range(start, end + 1, step))
    return values


def _number(text: str, what: str, name: str, names: dict[str, int]) -> int:
    if text in names:
        return names[text]
    if not text.isdigit():
        raise InvalidSchedule(what, f"{text!r} is not a value of the {name} field")
    return int(text)


def _at_or_after(values: tuple[int, ...], value: int) -> int | None:
    at = bisect.bisect_left(values, value)
    return values[at] if at < len(values) else None


def _longest(month: int) -> int:
    return 29 if month == 2 else calendar.monthrange(2001, month)[1]


def _aware(moment: datetime) -> datetime:
    """An instant; a naive datetime is taken as UTC, as everything stored is."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _jump(zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """The first whole second after ``before`` whose UTC offset is ``after``'s: the instant
    the clock changed between the two."""
    low, high = int(before.timestamp()), math.ceil(after.timestamp())
    wanted = datetime.fromtimestamp(high, zone).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == wanted:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def _duration(seconds: int) -> str:
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)
