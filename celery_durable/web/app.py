"""The web view's HTTP side, on Tornado (already installed with Flower): pages, JSON under
/api/, operations as POSTs. Every page and call needs HTTP basic auth when credentials are
set; without them the view is read-only and every operation answers 403. Forms carry
Tornado's XSRF token; templates escape everything they print."""

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

from celery_durable import Durable, DurableError, Execution, ExecutionNotFound
from celery_durable.web import views
from celery_durable.web.actions import OPERATIONS, Refused, run_operation
from celery_durable.web.svg import graph_svg

HERE = Path(__file__).parent
USER_ENV, PASSWORD_ENV, FLOWER_ENV = (
    "CELERY_DURABLE_WEB_USER",
    "CELERY_DURABLE_WEB_PASSWORD",
    "CELERY_DURABLE_FLOWER_URL",
)


# The protection space a browser keeps the credentials it was given for.
REALM = "celery-durable"


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

    def prepare(self) -> None:
        if not self.web.read_only and self.current_user is None:
            raise tornado.web.HTTPError(401, reason="Sign in")
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

    def execution(self, execution_id: str) -> Execution:
        try:
            return self.web.durable.get(execution_id)
        except ExecutionNotFound as exc:
            raise tornado.web.HTTPError(404, reason="No such run") from exc

    def args(self) -> dict[str, str]:
        return {k: self.get_argument(k) for k in self.request.arguments}

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 401:
            # Here, not before raising: send_error() clears the headers set before it, and a
            # 401 without its challenge makes a browser neither ask for nor send credentials.
            self.set_header("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')
        message = self._reason
        if self.request.path.startswith("/api/"):
            self.finish({"error": message, "status": status_code})
        else:
            self.render("error.html", status=status_code, message=message)


class RunsPage(Handler):
    def get(self) -> None:
        filters = _filters(self.args())
        page = views.runs_page(self.web.durable, filters)
        self.render("runs.html", page=page, args=self.args(), next_url=_next(self, page.next))


class RunPage(Handler):
    def get(self, execution_id: str) -> None:
        execution = self.execution(execution_id)
        detail = views.run_detail(self.web.durable, execution, self.web.flower)
        graph = views.drawn(self.web.durable, detail.graph, detail.graph_version)
        svg = graph_svg(detail.nodes, detail.edges, graph.entry_node if graph else None)
        seq = self.get_argument("seq", None)
        at = _state_at(execution, seq)
        self.render(
            "run.html",
            run=detail,
            svg=svg,
            at=at,
            ops=OPERATIONS,
            read_only=self.web.read_only,
            user=self.current_user,
            done=self.get_argument("done", None),
            error=self.get_argument("error", None),
            quote=quote,
        )


class ApiRuns(Handler):
    def get(self) -> None:
        self.finish(views.runs_page(self.web.durable, _filters(self.args())).as_json())


class ApiRun(Handler):
    def get(self, execution_id: str) -> None:
        execution = self.execution(execution_id)
        detail = views.run_detail(self.web.durable, execution, self.web.flower).as_json()
        at = _state_at(execution, self.get_argument("seq", None))
        self.finish(detail if at is None else {**detail, "at": at.as_json()})


class ApiOperation(Handler):
    def post(self, execution_id: str, operation: str) -> None:
        form = self.request.headers.get("Content-Type", "").startswith(
            "application/x-www-form-urlencoded"
        )
        if self.web.read_only:
            raise tornado.web.HTTPError(
                403, reason=f"Read-only: set {USER_ENV} and {PASSWORD_ENV} to operate runs"
            )
        execution = self.execution(execution_id)
        fields = self.args() if form else _json_body(self.request.body)
        try:
            result = run_operation(
                self.web.durable, execution, operation, fields, self.current_user
            )
        except (Refused, DurableError) as exc:
            if form:
                return self.redirect(_run_url(execution_id, error=str(exc)))
            raise tornado.web.HTTPError(409, reason=str(exc)) from exc
        if form:
            return self.redirect(_run_url(result.get("id", execution_id), done=operation))
        self.finish({"ok": True, "operation": operation, **result})


def _json_body(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise tornado.web.HTTPError(400, reason=f"The body is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise tornado.web.HTTPError(400, reason="The body must be a JSON object")
    return value


def _filters(args: dict[str, str]) -> views.Filters:
    try:
        return views.Filters.parse(args)
    except ValueError as exc:
        raise tornado.web.HTTPError(400, reason=f"Bad filter: {exc}") from exc


def _state_at(execution: Execution, seq: str | None) -> views.StateAt | None:
    if seq is None:
        return None
    try:
        return views.state_at(execution, int(seq))
    except (KeyError, ValueError) as exc:
        raise tornado.web.HTTPError(404, reason=f"No checkpoint {seq!r} in this run") from exc


def _run_url(execution_id: str, **params: str) -> str:
    return f"/runs/{quote(execution_id, safe='')}?{urlencode(params)}"


def _next(handler: Handler, before: str | None) -> str | None:
    """The link to the page after: these filters, going on from ``before``."""
    if not before:
        return None
    return "/?" + urlencode({**handler.args(), "before": before})


def make_app(web: WebConfig) -> tornado.web.Application:
    ops = "|".join(OPERATIONS)
    routes: list[Any] = [
        (r"/", RunsPage, {"web": web}),
        (r"/runs/(.+)", RunPage, {"web": web}),
        (r"/api/runs", ApiRuns, {"web": web}),
        (rf"/api/runs/(.+)/({ops})", ApiOperation, {"web": web}),
        (r"/api/runs/(.+)", ApiRun, {"web": web}),
    ]
    return tornado.web.Application(
        routes,
        template_path=str(HERE / "templates"),
        static_path=str(HERE / "static"),
        xsrf_cookies=True,
        autoescape="xhtml_escape",
    )


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
