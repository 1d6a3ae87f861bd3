"""What a page or a JSON answer says when a request cannot be served: a title, one sentence on
what happened and, where there is one, one line on what to do. Never a bare "Forbidden" or a
500 with nothing in it, and never a traceback: a database that cannot be reached says which
database (its password hidden) and what to check, as the CLI does."""

from __future__ import annotations

from dataclasses import dataclass

import tornado.web
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError

from celery_durable import DurableError
from celery_durable.errors import DatabaseUnavailable, SchemaNotMigrated

TITLES = {
    400: "Bad request",
    401: "Sign in",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed here",
    409: "Refused",
    503: "Database unavailable",
}
CREDENTIALS = "CELERY_DURABLE_WEB_USER and CELERY_DURABLE_WEB_PASSWORD"


class Problem(tornado.web.HTTPError):
    """A request refused with a sentence for the operator (Tornado's ``reason`` is only the
    status line); ``hint``: what to do about it; ``back``: the page to go back to."""

    def __init__(
        self, status: int, message: str, hint: str | None = None, back: str | None = None
    ) -> None:
        super().__init__(status)
        self.message = message
        self.hint = hint
        self.back = back


@dataclass(frozen=True)
class Shown:
    status: int
    message: str
    hint: str | None = None
    back: str | None = None

    @property
    def title(self) -> str:
        return TITLES.get(self.status, "Server error" if self.status >= 500 else "Refused")

    def as_json(self) -> dict[str, object]:
        return {"error": self.message, "hint": self.hint, "status": self.status}


def read_only() -> Problem:
    return Problem(
        403,
        "Read-only: this web view was started without credentials, and operates no run.",
        f"To operate runs, set {CREDENTIALS} where the web view runs and start it again.",
    )


def expected(exc: BaseException | None) -> bool:
    """An error the page explains in full (a refusal, the database out of reach): no
    traceback for the log."""
    return isinstance(exc, DurableError | OperationalError | InterfaceError)


def shown(status: int, exc: BaseException | None, database_url: str) -> Shown:
    """What to say for a request that ends in ``status``, raised as ``exc`` (if any)."""
    if isinstance(exc, Problem):
        return Shown(exc.status_code, exc.message, exc.hint, exc.back)
    if isinstance(exc, DatabaseUnavailable | SchemaNotMigrated):
        return Shown(503, str(exc))
    if isinstance(exc, OperationalError | InterfaceError):
        return Shown(503, *_unreachable(exc, database_url))
    if isinstance(exc, DurableError):
        return Shown(500, str(exc))
    if isinstance(exc, tornado.web.HTTPError):
        return _http(exc)
    if status == 401:
        return _http(tornado.web.HTTPError(401))
    return Shown(status, "The web view failed to answer this request.", "Its log says why.")


def _http(exc: tornado.web.HTTPError) -> Shown:
    status = exc.status_code
    if status == 401:
        return Shown(
            401,
            "This web view asks who you are.",
            f"Sign in with the user and password set in {CREDENTIALS}.",
        )
    if status == 403 and "XSRF" in (exc.log_message or "").upper():
        return Shown(
            403,
            "This form was sent without the page's security token, or with an old one: "
            "nothing was done.",
            "Reload the page and send it again.",
        )
    if status == 404:
        return Shown(404, "There is no such page.", back="/")
    if status == 405:
        return Shown(405, "This address does not take that kind of request.", back="/")
    return Shown(status, exc.reason or TITLES.get(status, "Refused"))


def _unreachable(exc: OperationalError | InterfaceError, database_url: str) -> tuple[str, str]:
    said = str(exc.orig).strip()
    cause = said.splitlines()[0] if said else type(exc.orig).__name__
    return (
        f"The database at {_without_password(database_url)} is unreachable ({cause}).",
        "Check that its server is up and reachable from this host, and the URL in "
        "CELERY_DURABLE_DATABASE_URL (or the app's settings).",
    )


def _without_password(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(its URL does not parse)"
