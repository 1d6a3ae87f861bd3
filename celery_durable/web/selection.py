"""Bulk operations from the run list: the runs an operator ticked, or every run the list's
filters match, and one operation, applied by ``Durable.bulk`` run by run (each audited with
the signed-in user). The page always shows a dry run first; applying is a second, explicit
step, and the report says what was done and what was refused, and why."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from celery_durable import BulkReport, Durable, ExecutionNotFound
from celery_durable.web.actions import BULK
from celery_durable.web.filters import NAMES, Filters

# The list's filters a selection keeps ("before" only pages the list).
KEPT = tuple(name for name in NAMES if name != "before")


class BadSelection(ValueError):
    """A bulk request that selects nothing, or names no bulk operation; says what to do."""


@dataclass(frozen=True)
class Selection:
    """``ids``: the runs ticked; else ``filters``: every run they match (given as typed, so
    ``since=2h`` counts back from when the operation is applied)."""

    ids: tuple[str, ...] = ()
    filters: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, fields: Mapping[str, Sequence[str]]) -> Selection:
        """From a form: ``id`` once per ticked run, or ``all=yes`` and the list's filters."""
        ids = tuple(dict.fromkeys(i for i in fields.get("id", ()) if i))
        if "yes" not in fields.get("all", ()):
            if not ids:
                raise BadSelection("no runs selected: tick some, or 'all matching the filter'")
            return cls(ids=ids)
        given = tuple((n, v) for n in KEPT for v in fields.get(n, ()) if v)
        if not given:
            raise BadSelection(
                "'all matching the filter' needs a filter (status, graph, since, prefix, parent "
                "or tag): without one it would be every run"
            )
        Filters.parse(_grouped(given))  # refused now, not after the dry run
        return cls(filters=given)

    def said(self) -> str:
        """``3 runs ticked`` or ``every run matching status=failed, since=2h``."""
        if self.ids:
            return "1 run ticked" if len(self.ids) == 1 else f"{len(self.ids)} runs ticked"
        return "every run matching " + ", ".join(f"{n}={v}" for n, v in self.filters)

    def fields(self) -> list[tuple[str, str]]:
        """The selection as form fields, to apply what the dry run showed."""
        if self.ids:
            return [("id", i) for i in self.ids]
        return [("all", "yes"), *self.filters]

    def list_url(self) -> str:
        """The list this selection came from."""
        return "/?" + urlencode(self.filters) if self.filters else "/"


def apply_bulk(
    durable: Durable,
    operation: str,
    selection: Selection,
    *,
    by: str,
    reason: str | None,
    dry_run: bool,
) -> BulkReport:
    """``operation`` on every selected run, or (``dry_run``) what it would do to each."""
    if operation not in BULK:
        raise BadSelection(f"no bulk operation {operation!r}: use one of {', '.join(BULK)}")
    if not selection.ids:
        ids = tuple(_matching(durable, Filters.parse(_grouped(selection.filters))))
        return durable.bulk(operation, ids=ids, by=by, reason=reason, dry_run=dry_run)
    # A ticked run pruned since the list was drawn is refused, not an error for the rest.
    gone = {i: "no such run (pruned?)" for i in selection.ids if not _exists(durable, i)}
    found = [i for i in selection.ids if i not in gone]
    report = durable.bulk(operation, ids=found, by=by, reason=reason, dry_run=dry_run)
    report.refused.update(gone)
    return report


def _exists(durable: Durable, execution_id: str) -> bool:
    try:
        durable.get(execution_id)
    except ExecutionNotFound:
        return False
    return True


def _matching(durable: Durable, filters: Filters, page: int = 500) -> Iterator[str]:
    """Every run the filters match, newest first, a keyset page at a time."""
    before = None
    while True:
        runs = durable.list(
            status=filters.status,
            graph=filters.graph,
            since=filters.since,
            limit=page,
            parent=filters.parent,
            id_prefix=filters.prefix,
            before=before,
            tags=dict(filters.tags) or None,
        )
        yield from (run.id for run in runs)
        if len(runs) < page:
            return
        before = (runs[-1].record.created_at, runs[-1].id)


def _grouped(pairs: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        grouped.setdefault(name, []).append(value)
    return grouped
