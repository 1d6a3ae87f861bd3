"""The web view's HTTP side, on Tornado (already installed with Flower): pages, JSON under
/api/, operations as POSTs. Every page and call needs HTTP basic auth when credentials are
set (a 401 carries the challenge, so a browser asks, or sends the credentials given in the
address); without them the view is read-only and every operation answers 403. Forms carry
Tornado's XSRF token; templates escape everything they print; the pages run only the
package's own script (a Content-Security-Policy says so to the browser)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import tornado.netutil
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.log import app_log

from celery_durable import Durable, DurableError, Execution, ExecutionNotFound
from celery_durable.web import labels, problems, views
from celery_durable.web.actions import BULK, CONFIRM, OPERATIONS, Refused, run_operation
from celery_durable.web.filters import BadFilter
from celery_durable.web.problems import Problem
from celery_durable.web.selection import KEPT, BadSelection, Selection, apply_bulk
from celery_durable.web.svg import graph_svg, legend

HERE = Path(__file__).parent
USER_ENV, PASSWORD_ENV, FLOWER_ENV = (
    "CELERY_DURABLE_WEB_USER",
    "CELERY_DURABLE_WEB_PASSWORD",
    "CELERY_DURABLE_FLOWER_URL",
)
# The protection space a browser keeps the credentials it was given for.
REALM = "celery-durable"
# Scripts, styles and forms from this server only; no frame may embed the pages.
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class WebConfig:
    durable: Durable
    user: str | None = None
    password: str | None = None
    flower: str = "http://127.0.0.1:5555"

    @classmethod
    def from_env(cls, durable: Durable) -> WebConfig:
        return cls(
            durable,
            os.environ.get(USER_ENV) or None,
            os.environ.get(PASSWORD_ENV) or None,
            os.environ.get(FLOWER_ENV) or "http://127.0.0.1:5555",
        )

    @property
    def read_only(self) -> bool:
        return not (self.user and self.password)


class Handler(tornado.web.RequestHandler):
    def initialize(self, web: WebConfig) -> None:
        self.web = web

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", POLICY)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")

    def prepare(self) -> None:
        if not self.web.read_only and self.current_user is None:
            raise tornado.web.HTTPError(401)
        if self.request.method == "GET":
            self.xsrf_token  # noqa: B018  (sets the _xsrf cookie scripts echo in X-XSRFToken)

    def get_current_user(self) -> str | None:
        header = self.request.headers.get("Authorization", "")
        if self.web.read_only or not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        ok = hmac.compare_digest(user, self.web.user or "") and hmac.compare_digest(
            password, self.web.password or ""
        )
        return user if ok else None

    def get_template_namespace(self) -> dict[str, Any]:
        return {
            **super().get_template_namespace(),
            "words": labels,
            "read_only": self.web.read_only,
            "user": self.current_user,
            "quote": lambda text: quote(text, safe=""),
        }

    def execution(self, execution_id: str) -> Execution:
        try:
            return self.web.durable.get(execution_id)
        except ExecutionNotFound as exc:
            raise Problem(
                404, f"There is no run {execution_id!r} in this database.", back="/"
            ) from exc

    def query(self) -> dict[str, list[str]]:
        return {k: self.get_query_arguments(k) for k in self.request.query_arguments}

    def form(self) -> bool:
        return self.request.headers.get("Content-Type", "").startswith(FORM)

    def wants_json(self) -> bool:
        """The API answers JSON, except to a page's form sent without a script."""
        if "application/json" in self.request.headers.get("Accept", ""):
            return True
        return self.request.path.startswith("/api/") and not self.form()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        said = problems.shown(status_code, exc, self.web.durable.settings.database_url)
        self.set_status(said.status)
        if said.status == 401:
            # Here, not before raising: send_error() clears the headers set before it, and a
            # 401 without its challenge makes a browser neither ask for nor send credentials.
            self.set_header("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')
        if self.wants_json():
            self.finish(said.as_json())
        else:
            self.render("error.html", said=said)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if problems.expected(value):  # one line, not a traceback per request while it lasts
            app_log.warning("%s %s: %s", self.request.method, self.request.uri, value)
            return
        super().log_exception(typ, value, tb)


class RunsPage(Handler):
    def get(self) -> None:
        filters = _filters(self.query())
        page = views.runs_page(self.web.durable, filters)
        kept = [(n, v) for n, vs in self.query().items() if n in KEPT for v in vs]
        self.render(
            "runs.html",
            page=page,
            args={n: vs[-1] for n, vs in self.query().items()},
            tags=self.get_query_arguments("tag"),
            kept=kept,
            filtered=bool(kept),
            bulk_operations=BULK,
            next_url=_next(self.query(), page.next),
        )


class RunPage(Handler):
    def get(self, execution_id: str) -> None:
        execution = self.execution(execution_id)
        detail = views.run_detail(self.web.durable, execution, self.web.flower)
        graph = views.drawn(self.web.durable, detail.graph, detail.graph_version)
        entry = graph.entry_node if graph else None
        self.render(
            "run.html",
            run=detail,
            svg=graph_svg(detail.nodes, detail.edges, entry, detail.tries()),
            legend=legend(),
            at=_state_at(execution, self.get_query_argument("seq", None)),
            confirm=CONFIRM,
        )


class ApiRuns(Handler):
    def get(self) -> None:
        self.finish(views.runs_page(self.web.durable, _filters(self.query())).as_json())


class ApiRun(Handler):
    def get(self, execution_id: str) -> None:
        execution = self.execution(execution_id)
        detail = views.run_detail(self.web.durable, execution, self.web.flower).as_json()
        at = _state_at(execution, self.get_query_argument("seq", None))
        self.finish(detail if at is None else {**detail, "at": at.as_json()})


class ApiOperation(Handler):
    """One operation on one run. A page's form of a destructive one must carry confirm=yes
    (its script asks first; without the script the answer is the question, as a page); a
    refusal is the answer itself, never a parameter of the next page's address."""

    def post(self, execution_id: str, operation: str) -> None:
        if self.web.read_only:
            raise problems.read_only()
        execution = self.execution(execution_id)
        back = _run_url(execution_id)
        if self.form():
            fields = {k: self.get_body_argument(k) for k in self.request.body_arguments}
        else:
            fields = _json_body(self.request.body)
        if self.form() and operation in CONFIRM and fields.get("confirm") != "yes":
            if self.wants_json():
                raise Problem(409, f"{operation} needs a confirmation: send confirm=yes with it.")
            shown = {k: v for k, v in fields.items() if k not in ("_xsrf", "confirm")}
            self.render(
                "confirm.html",
                run_id=execution_id,
                operation=operation,
                fields=shown,
                confirm=CONFIRM,
            )
            return
        try:
            result = run_operation(
                self.web.durable, execution, operation, fields, self.current_user
            )
        except (Refused, DurableError) as exc:
            raise Problem(409, str(exc), back=back) from exc
        if not self.wants_json():
            self.redirect(_run_url(result["id"]))
            return
        said = f"{operation}: done; the run is {result['status']}."
        if result["id"] != execution.id:
            said = f"{operation}: done; the new run is {result['id']}."
        self.finish({"ok": True, "operation": operation, "said": said, **result})


class BulkPage(Handler):
    """The list's bulk form: a dry run, then (``apply=yes``, from the dry run's page) the
    operation itself, each answered with the report."""

    def post(self) -> None:
        if self.web.read_only:
            raise problems.read_only()
        fields = {k: self.get_body_arguments(k) for k in self.request.body_arguments}
        operation = (fields.get("operation") or [""])[-1]
        reason = (fields.get("reason") or [""])[-1] or None
        dry_run = "yes" not in fields.get("apply", ())
        try:
            selection = Selection.parse(fields)
            report = apply_bulk(
                self.web.durable,
                operation,
                selection,
                by=self.current_user or "web",
                reason=reason,
                dry_run=dry_run,
            )
        except (BadSelection, BadFilter) as exc:
            raise Problem(400, str(exc), back="/") from exc
        self.render(
            "bulk.html",
            report=report,
            selection=selection,
            reason=reason or "",
            destructive=operation in CONFIRM,
        )


class ApiBulk(Handler):
    """``{"operation": "retry", "ids": [...]}`` or ``{"operation": ..., "filters":
    {"status": "failed", "since": "2h", "tag": ["customer=c-42"]}}`` (the list's filters, a
    repeated one as a list), with ``reason`` and ``dry_run``: the report."""

    def post(self) -> None:
        if self.web.read_only:
            raise problems.read_only()
        body = _json_body(self.request.body)
        filters = body.get("filters") or {}
        if not isinstance(filters, dict) or not isinstance(body.get("ids") or [], list):
            raise Problem(
                400, 'ids must be a list of run ids and filters an object like {"status": "failed"}'
            )
        fields: dict[str, list[str]] = {"id": [str(i) for i in body.get("ids") or []]}
        if filters:
            # A filter that repeats (status, tag) may come as a list.
            given = {k: v if isinstance(v, list) else [v] for k, v in filters.items()}
            fields |= {"all": ["yes"], **{str(k): [str(v) for v in vs] for k, vs in given.items()}}
        try:
            report = apply_bulk(
                self.web.durable,
                str(body.get("operation", "")),
                Selection.parse(fields),
                by=self.current_user or "web",
                reason=body.get("reason") or None,
                dry_run=bool(body.get("dry_run")),
            )
        except (BadSelection, BadFilter) as exc:
            raise Problem(400, str(exc)) from exc
        self.finish(report.as_dict())


def _json_body(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise Problem(400, f"The body is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise Problem(400, "The body must be a JSON object.")
    return value


def _filters(args: dict[str, list[str]]) -> views.Filters:
    try:
        return views.Filters.parse(args)
    except BadFilter as exc:
        raise Problem(400, f"Bad filter: {exc}.", back="/") from exc


def _state_at(execution: Execution, seq: str | None) -> views.StateAt | None:
    if seq is None:
        return None
    try:
        return views.state_at(execution, int(seq))
    except (KeyError, ValueError) as exc:
        raise Problem(
            404, f"This run has no checkpoint {seq!r}.", back=_run_url(execution.id)
        ) from exc


def _run_url(execution_id: str) -> str:
    return f"/runs/{quote(execution_id, safe='')}"


def _next(args: dict[str, list[str]], before: str | None) -> str | None:
    """The link to the page after: these filters, going on from ``before``."""
    if not before:
        return None
    return "/?" + urlencode({**args, "before": [before]}, doseq=True)


def make_app(web: WebConfig) -> tornado.web.Application:
    ops = "|".join(OPERATIONS)
    routes: list[Any] = [
        (r"/", RunsPage, {"web": web}),
        (r"/runs/(.+)", RunPage, {"web": web}),
        (r"/bulk", BulkPage, {"web": web}),
        (r"/api/runs", ApiRuns, {"web": web}),
        (r"/api/bulk", ApiBulk, {"web": web}),
        (rf"/api/runs/(.+)/({ops})", ApiOperation, {"web": web}),
        (r"/api/runs/(.+)", ApiRun, {"web": web}),
    ]
    return tornado.web.Application(
        routes,
        template_path=str(HERE / "templates"),
        static_path=str(HERE / "static"),
        xsrf_cookies=True,
        autoescape="xhtml_escape",
        default_handler_class=NotFound,
        default_handler_args={"web": web},
    )


class NotFound(Handler):
    """Any other address: the view's own 404 page, not Tornado's."""

    def prepare(self) -> None:
        super().prepare()
        raise tornado.web.HTTPError(404)


def serve(web: WebConfig, host: str = "127.0.0.1", port: int = 5580) -> None:
    """Serve until interrupted."""

    async def main() -> None:
        make_app(web).listen(port, address=host)
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_in_thread(
    web: WebConfig, host: str = "127.0.0.1", port: int = 0
) -> tuple[str, Callable[[], None]]:
    """Serve from a thread (tests, an embedded app); returns the base URL and a stop."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    def run() -> None:
        async def main() -> None:
            server = HTTPServer(make_app(web))
            sockets = tornado.netutil.bind_sockets(port, address=host)
            server.add_sockets(sockets)
            state["port"] = sockets[0].getsockname()[1]
            state["stop"] = asyncio.Event()
            ready.set()
            await state["stop"].wait()
            server.stop()

        state["loop"] = asyncio.new_event_loop()
        state["loop"].run_until_complete(main())

    thread = threading.Thread(target=run, name="durable-web", daemon=True)
    thread.start()
    ready.wait(10)

    def stop() -> None:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(10)

    return f"http://{host}:{state['port']}", stop
