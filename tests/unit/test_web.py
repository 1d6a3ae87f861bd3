"""The web view over HTTP: pages and JSON, keyset paging, read-only without credentials,
basic auth and XSRF with them, operations through the public methods, escaping."""

from __future__ import annotations

import base64
import http.cookiejar
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import BaseModel

from celery_durable import Durable, Saga, Status
from celery_durable.testing import in_process_worker
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
        seen += [r["id"] for r in page["runs"]]
        if not page["next"]:
            break
        filters = views.Filters.parse({"before": page["next"]})
    assert seen == ids[::-1]
    prefixed = views.runs_page(durable_embedded, views.Filters(prefix="r0"), limit=50)
    assert len(prefixed["runs"]) == 7


def test_state_at_a_checkpoint_and_its_diff(open_site: Site) -> None:
    run_id = finished(open_site)
    _, body = open_site.request(f"/api/runs/{run_id}?seq=2")
    at = json.loads(body)["at"]
    assert at["state"] == {"booked": ["flight", "hotel"]}
    assert at["diff"] == [
        {"field": "booked", "change": "changed", "old": '["flight"]', "new": '["flight", "hotel"]'}
    ]
