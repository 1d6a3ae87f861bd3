"""The web view over HTTP: pages and JSON, keyset paging, read-only without credentials,
basic auth and XSRF with them, operations through the public methods, escaping."""

from __future__ import annotations

import ast
import base64
import http.cookiejar
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from celery_durable import Durable, Graph, Saga, Status
from celery_durable.testing import embedded_app, in_process_worker
from celery_durable.web import views
from celery_durable.web.app import WebConfig, serve_in_thread

SCRIPT_ID = "<script>alert(1)</script>"


class Trip(BaseModel):
    booked: list[str] = []


def define(durable: Durable) -> Saga:
    trip = durable.saga("trip", state=Trip)

    @trip.step
    def flight(state: Trip) -> dict[str, list[str]]:
        return {"booked": [*state.booked, "flight"]}

    @flight.compensation
    def cancel_flight(state: Trip) -> None:
        return None

    @trip.step
    def hotel(state: Trip) -> dict[str, list[str]]:
        return {"booked": [*state.booked, "hotel"]}

    @hotel.compensation
    def cancel_hotel(state: Trip) -> None:
        return None

    return trip


@dataclass
class Site:
    url: str
    durable: Durable
    trip: Saga
    auth: str | None = None

    def request(
        self, path: str, data: dict[str, Any] | None = None, *, auth: bool = True, xsrf: bool = True
    ) -> tuple[int, str]:
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        headers = {}
        if auth and self.auth:
            headers["Authorization"] = self.auth
        body = None
        if data is not None:
            if xsrf:  # as a browser does: the cookie from a page, echoed in a header
                opener.open(urllib.request.Request(self.url + "/", headers=headers)).read()
                token = next(c.value for c in jar if c.name == "_xsrf")
                headers["X-XSRFToken"] = token
            headers["Content-Type"] = "application/json"
            body = json.dumps(data).encode()
        request = urllib.request.Request(self.url + path, data=body, headers=headers)
        try:
            with opener.open(request) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


def site(durable: Durable, user: str | None, password: str | None) -> Iterator[Site]:
    trip = define(durable)
    url, stop = serve_in_thread(WebConfig(durable, user, password))
    auth = None
    if user and password:
        auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        yield Site(url, durable, trip, auth)
    finally:
        stop()


@pytest.fixture
def open_site(durable_embedded: Durable) -> Iterator[Site]:
    yield from site(durable_embedded, None, None)


@pytest.fixture
def signed_site(durable_embedded: Durable) -> Iterator[Site]:
    yield from site(durable_embedded, "ops", "s3cret")


def finished(s: Site, execution_id: str | None = None) -> str:
    with in_process_worker(s.durable):
        run = s.trip.apply_async(execution_id=execution_id)
        run.wait(timeout=10)
    return run.id


def test_read_only_lists_and_shows_but_refuses_every_operation(open_site: Site) -> None:
    run_id = finished(open_site)
    status, body = open_site.request("/api/runs")
    page = json.loads(body)
    assert status == 200 and [r["id"] for r in page["runs"]] == [run_id]
    assert page["counts"] == {"succeeded": 1}
    status, body = open_site.request(f"/api/runs/{run_id}")
    detail = json.loads(body)
    assert detail["nodes"] == {"flight": "done", "hotel": "done"}
    assert [cp["kind"] for cp in detail["timeline"]] == ["start", "node", "node"]
    status, body = open_site.request(f"/api/runs/{run_id}/compensate", {"reason": "test"})
    assert status == 403 and "Read-only" in json.loads(body)["error"]
    assert open_site.durable.get(run_id).status == Status.SUCCEEDED


def test_with_credentials_every_page_asks_and_operations_are_audited(signed_site: Site) -> None:
    run_id = finished(signed_site)
    assert signed_site.request("/", auth=False)[0] == 401
    assert signed_site.request(f"/api/runs/{run_id}", auth=False)[0] == 401
    assert signed_site.request("/")[0] == 200
    # No XSRF token: refused, nothing changed.
    status, _ = signed_site.request(f"/api/runs/{run_id}/compensate", {}, xsrf=False)
    assert status == 403
    assert signed_site.durable.get(run_id).status == Status.SUCCEEDED
    with in_process_worker(signed_site.durable):
        status, body = signed_site.request(
            f"/api/runs/{run_id}/compensate", {"reason": "customer cancelled"}
        )
        assert status == 200, body
        run = signed_site.durable.get(run_id)
        with pytest.raises(Exception, match=r"compensated|Compensated"):
            run.wait(timeout=10)
    manual = [cp for cp in run.history() if cp.kind == "manual"]
    assert manual[-1].meta["by"] == "ops" and manual[-1].meta["reason"] == "customer cancelled"


def test_an_operation_in_the_wrong_status_is_refused_in_plain_words(signed_site: Site) -> None:
    run_id = finished(signed_site)
    status, body = signed_site.request(f"/api/runs/{run_id}/resume", {})
    assert status == 409 and "succeeded" in json.loads(body)["error"]
    status, body = signed_site.request(f"/api/runs/{run_id}/patch", {"patch": "not json"})
    assert status == 409 and "not JSON" in json.loads(body)["error"]
    assert signed_site.request("/api/runs/nope")[0] == 404
    assert signed_site.request("/api/runs?since=yesterday")[0] == 400
    assert signed_site.durable.get(run_id).status == Status.SUCCEEDED


def test_user_supplied_text_is_escaped(open_site: Site) -> None:
    finished(open_site, SCRIPT_ID)
    _, listing = open_site.request("/")
    quoted = urllib.parse.quote(SCRIPT_ID, safe="")
    _, page = open_site.request(f"/runs/{quoted}")
    for html in (listing, page):
        assert "<script>alert(1)</script>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_pages_are_keyset_pages_newest_first(durable_embedded: Durable) -> None:
    trip = define(durable_embedded)
    ids = [trip.apply_async(execution_id=f"r{i:02d}").id for i in range(7)]
    seen: list[str] = []
    filters = views.Filters()
    while True:
        page = views.runs_page(durable_embedded, filters, limit=3)
        seen += [r.id for r in page.runs]
        if not page.next:
            break
        filters = views.Filters.parse({"before": page.next})
    assert seen == ids[::-1]
    prefixed = views.runs_page(durable_embedded, views.Filters(prefix="r0"), limit=50)
    assert len(prefixed.runs) == 7


def test_state_at_a_checkpoint_and_its_diff(open_site: Site) -> None:
    run_id = finished(open_site)
    _, body = open_site.request(f"/api/runs/{run_id}?seq=2")
    at = json.loads(body)["at"]
    assert at["state"] == {"booked": ["flight", "hotel"]}
    assert at["diff"] == [
        {"field": "booked", "change": "changed", "old": '["flight"]', "new": '["flight", "hotel"]'}
    ]


def test_json_keeps_its_keys_and_links_each_node_commit_to_its_task_in_flower(
    open_site: Site,
) -> None:
    run_id = finished(open_site)
    page = json.loads(open_site.request("/api/runs")[1])
    assert set(page) == {"runs", "next", "counts", "graphs"}
    row_keys = {
        "id", "graph", "graph_version", "status", "version", "created_at", "updated_at", "parent",
        "stuck",
    }  # fmt: skip
    assert set(page["runs"][0]) == row_keys
    detail = json.loads(open_site.request(f"/api/runs/{run_id}?seq=2")[1])
    assert set(detail) == row_keys | {
        "finished", "drawn_version", "state", "error", "nodes", "edges", "waiting_on",
        "held_back", "children", "timeline", "at",
    }  # fmt: skip
    assert detail["edges"] == [{"from": "flight", "to": "hotel", "kind": "edge"}]
    assert set(detail["at"]) == {"seq", "state", "diff"}
    links = {cp["kind"]: cp["flower"] for cp in detail["timeline"]}
    assert links["start"] is None
    node = detail["timeline"][-1]
    assert set(node) == {
        "seq", "kind", "node", "visit", "by", "why", "op", "at", "flower", "corrupted",
    }  # fmt: skip
    # The id Celery ran the attempt under: execution.node.visit.attempt.
    assert node["flower"] == f"http://127.0.0.1:5555/task/{run_id}.hotel.{node['visit']}.1"


class Parcel(BaseModel):
    path: list[str] = []


def define_versions(durable: Durable) -> tuple[Graph, Graph]:
    """Version 1 of "parcel" reviews then ships, version 2 reviews then audits; both wait for
    an operator at review."""
    v1 = durable.graph("parcel", state=Parcel, version="1")

    @v1.node(interrupt_before=True)
    def review(parcel: Parcel) -> None:
        return None

    @v1.node
    def ship(parcel: Parcel) -> None:
        return None

    v1.entry(review)
    v1.edge(review, ship)
    v2 = durable.graph("parcel", state=Parcel, version="2")

    @v2.node(interrupt_before=True, name="review")
    def review_v2(parcel: Parcel) -> None:
        return None

    @v2.node
    def audit(parcel: Parcel) -> None:
        return None

    v2.entry(review_v2)
    v2.edge(review_v2, audit)
    return v1, v2


def test_a_run_shows_its_version_and_the_graph_of_that_version(open_site: Site) -> None:
    # Given a run of a saga with its default version, and one of two versions side by side
    trip_run = finished(open_site)
    v1, _ = define_versions(open_site.durable)
    run = v1.delay()

    # Then the JSON says each run's version and draws the structure of its own version
    trip = json.loads(open_site.request(f"/api/runs/{trip_run}")[1])
    assert trip["graph_version"] == open_site.trip.version == trip["drawn_version"]
    detail = json.loads(open_site.request(f"/api/runs/{run.id}")[1])
    assert (detail["graph_version"], detail["drawn_version"]) == ("1", "1")
    assert set(detail["nodes"]) == {"review", "ship"}
    assert detail["edges"] == [{"from": "review", "to": "ship", "kind": "edge"}]
    listed = {
        r["id"]: r["graph_version"] for r in json.loads(open_site.request("/api/runs")[1])["runs"]
    }
    assert listed == {trip_run: open_site.trip.version, run.id: "1"}

    # And the page says it, drawing version 1's nodes, not the newest's
    _, page = open_site.request(f"/runs/{run.id}")
    assert '<span id="version">version <b>1</b></span>' in page
    assert ">ship<" in page and ">audit<" not in page
    assert 'id="drawn"' not in page

    # After an upgrade, the page follows the run onto version 2
    run.upgrade("2")
    _, page = open_site.request(f"/runs/{run.id}")
    assert '<span id="version">version <b>2</b></span>' in page
    assert ">audit<" in page and ">ship<" not in page


def test_a_run_of_a_version_this_process_lacks_is_drawn_as_the_newest_and_says_so(
    open_site: Site, durable_database_url: str
) -> None:
    # Given a run started by other code, on a version 0 this process does not define
    define_versions(open_site.durable)
    older = Durable(embedded_app(f"older-{uuid.uuid4().hex[:8]}"), durable_database_url)
    v0 = older.graph("parcel", state=Parcel, version="0")

    @v0.node(interrupt_before=True)
    def weigh(parcel: Parcel) -> None:
        return None

    v0.entry(weigh)
    run_id = v0.delay().id
    older.db.dispose()

    detail = json.loads(open_site.request(f"/api/runs/{run_id}")[1])
    assert (detail["graph_version"], detail["drawn_version"]) == ("0", "2")
    _, page = open_site.request(f"/runs/{run_id}")
    assert '<span id="version">version <b>0</b></span>' in page
    assert "This process does not define version 0 of parcel" in page
    assert "the graph below is version 2" in page


# The web view is an operator surface on the public objects: what a user can import.
PUBLIC = {
    "celery_durable",
    "celery_durable.durable",
    "celery_durable.engine.execution",
    "celery_durable.render",
    "celery_durable.status",
}


def test_the_web_view_imports_only_public_modules() -> None:
    """Every module of celery_durable.web imports, from celery_durable, only the package
    itself (its re-exported names), the modules of the public objects (durable,
    engine.execution, status), render, and its own modules: it works through what a user
    can reach, never through the store or the task wire format."""
    package = Path(views.__file__).parent
    reached: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] == "celery_durable":
                    reached.setdefault(name, set()).add(path.name)
    assert "celery_durable" in reached  # the check sees the imports it is about
    private = {
        name: files
        for name, files in reached.items()
        if name not in PUBLIC and not name.startswith("celery_durable.web")
    }
    assert private == {}
