"""The web view over HTTP: pages and JSON, keyset paging, filters in the CLI's spellings,
read-only without credentials, basic auth and XSRF with them, operations offered by status and
confirmed when destructive, refusals from the server's own answer, every failed attempt in the
timeline, readable graphs at any fan-out, bulk operations from the list, a proper page for an
outage, escaping."""

from __future__ import annotations

import ast
import base64
import http.cookiejar
import json
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from html import escape
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError

from celery_durable import Durable, ExecutionFailed, Graph, RetryPolicy, Saga, Status
from celery_durable.testing import embedded_app, in_process_worker
from celery_durable.web import problems, svg, views
from celery_durable.web.actions import ALLOWED, BULK, DESTRUCTIVE, OPERATIONS, offered
from celery_durable.web.app import WebConfig, serve_in_thread
from tests.waiting import wait_for

SCRIPT_ID = "<script>alert(1)</script>"
STYLE = Path(views.__file__).parent / "static" / "style.css"


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


class Parcel(BaseModel):
    note: str = ""
    path: list[str] = []


def define_approval(durable: Durable) -> Graph:
    """weigh, then review (waits for an operator's approval), then ship."""
    g = durable.graph("parcel_review", state=Parcel)

    @g.node
    def weigh(parcel: Parcel) -> dict[str, list[str]]:
        return {"path": [*parcel.path, "weigh"]}

    @g.node(interrupt_before=True)
    def review(parcel: Parcel) -> dict[str, list[str]]:
        return {"path": [*parcel.path, "review"]}

    @g.node
    def ship(parcel: Parcel) -> dict[str, list[str]]:
        return {"path": [*parcel.path, "ship"]}

    g.entry(weigh)
    g.edge(weigh, review)
    g.edge(review, ship)
    return g


class Payment(BaseModel):
    paid: bool = False


def define_flaky(durable: Durable, failures: int, attempts: int = 3) -> Graph:
    """``charge`` fails its first ``failures`` attempts (of ``attempts``) with the gateway's
    error, then succeeds."""
    g = durable.graph("payment", state=Payment)
    calls: list[int] = []

    @g.node
    def order(payment: Payment) -> None:
        return None

    @g.node(retry=RetryPolicy(max_attempts=attempts, initial_delay=0.01, jitter=False))
    def charge(payment: Payment) -> dict[str, bool]:
        calls.append(1)
        if len(calls) <= failures:
            raise ConnectionError(f"gateway refused call {len(calls)}")
        return {"paid": True}

    g.entry(order)
    g.edge(order, charge)
    return g


class Fan(BaseModel):
    seen: int = 0


def define_fan_out(durable: Durable, width: int, failing: str | None = None) -> Graph:
    """split -> part00..part<width-1> side by side -> merge; ``failing`` raises, never retried."""
    g = durable.graph(f"fan_out_{width}", state=Fan)

    @g.node
    def split(fan: Fan) -> None:
        return None

    def part(name: str) -> Any:
        def run(fan: Fan) -> None:
            if name == failing:
                raise ValueError(f"{name} cannot read its shard")

        return run

    names = [f"part{i:02d}" for i in range(width)]
    for name in names:
        g.node(part(name), name=name, retry=RetryPolicy.never())

    @g.node
    def merge(fan: Fan) -> None:
        return None

    g.entry(split)
    g.edge(split, names)
    g.edge(names, merge)
    return g


@dataclass
class Answer:
    status: int
    body: str
    headers: Message  # names in any case, as HTTP has them

    def json(self) -> Any:
        return json.loads(self.body)


class _Stay(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is an answer to look at, not to follow


@dataclass
class Site:
    url: str
    durable: Durable
    trip: Saga
    auth: str | None = None

    def request(
        self, path: str, data: dict[str, Any] | None = None, *, auth: bool = True, xsrf: bool = True
    ) -> tuple[int, str]:
        """GET, or POST ``data`` as JSON (as a script does)."""
        answer = self.call(path, json_body=data, auth=auth, xsrf=xsrf)
        return answer.status, answer.body

    def call(
        self,
        path: str,
        *,
        json_body: dict[str, Any] | None = None,
        form: list[tuple[str, str]] | dict[str, str] | None = None,
        accept: str | None = None,
        auth: bool = True,
        xsrf: bool = True,
    ) -> Answer:
        """A request as a browser or a script sends it; redirects are returned, not followed."""
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _Stay())
        headers = {}
        if auth and self.auth:
            headers["Authorization"] = self.auth
        if accept:
            headers["Accept"] = accept
        body = None
        if json_body is not None or form is not None:
            if xsrf:  # as a browser does: the cookie from a page, echoed back
                opener.open(urllib.request.Request(self.url + "/", headers=headers)).read()
                headers["X-XSRFToken"] = next(c.value for c in jar if c.name == "_xsrf")
            if form is not None:
                headers["Content-Type"] = "application/x-www-form-urlencoded"
                body = urllib.parse.urlencode(form).encode()
            else:
                headers["Content-Type"] = "application/json"
                body = json.dumps(json_body).encode()
        request = urllib.request.Request(self.url + path, data=body, headers=headers)
        try:
            with opener.open(request) as response:
                return Answer(response.status, response.read().decode(), response.headers)
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, exc.read().decode(), exc.headers)


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


def quoted(execution_id: str) -> str:
    return urllib.parse.quote(execution_id, safe="")


def forms(page: str) -> list[str]:
    """The operations a run page offers, in its order."""
    return re.findall(r'<form method="post" action="/api/runs/[^"]+/([a-z-]+)"', page)


def text(page: str) -> str:
    """What a person reads of a page: its text, tags gone (a cell or a line apart by a space)."""
    inline = re.sub(r"</?(a|b|code|span|time)\b[^>]*>", "", page)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", inline))


# -- reading -------------------------------------------------------------------------------


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
    # A page's form gets a page that says so and what to do, not a bare "Forbidden"
    refused = open_site.call(f"/api/runs/{run_id}/cancel", form={"confirm": "yes"})
    assert refused.status == 403
    assert "Read-only" in refused.body and "CELERY_DURABLE_WEB_PASSWORD" in refused.body
    assert text(refused.body).count("Forbidden") == 0
    # And no page offers an operation
    assert forms(open_site.request(f"/runs/{run_id}")[1]) == []


def test_with_credentials_every_page_asks_and_operations_are_audited(signed_site: Site) -> None:
    run_id = finished(signed_site)
    challenged = signed_site.call("/", auth=False)
    assert challenged.status == 401
    assert challenged.headers["WWW-Authenticate"] == 'Basic realm="celery-durable", charset="UTF-8"'
    assert "CELERY_DURABLE_WEB_USER" in challenged.body
    assert signed_site.request(f"/api/runs/{run_id}", auth=False)[0] == 401
    assert signed_site.request("/")[0] == 200
    # No XSRF token: refused, nothing changed, and the page says what to do
    status, _ = signed_site.request(f"/api/runs/{run_id}/compensate", {}, xsrf=False)
    assert status == 403
    stale = signed_site.call(f"/api/runs/{run_id}/cancel", form={"confirm": "yes"}, xsrf=False)
    assert stale.status == 403 and "Reload the page" in stale.body
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
    _, page = open_site.request(f"/runs/{quoted(SCRIPT_ID)}")
    for html in (listing, page):
        assert "<script>alert(1)</script>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_pages_run_only_the_packages_own_script(open_site: Site) -> None:
    run_id = finished(open_site)
    answer = open_site.call(f"/runs/{run_id}")
    policy = answer.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    scripts = re.findall(r"<script[^>]*>", answer.body)
    assert len(scripts) == 1 and 'src="/static/live.js' in scripts[0]
    assert 'http-equiv="refresh"' not in answer.body  # it updates in place, never reloads
    assert not re.search(r"<[^>]+\son[a-z]+=", answer.body)  # no inline handler


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


ROW_KEYS = {
    "id", "graph", "graph_version", "status", "version", "created_at", "updated_at",
    "finished_at", "parent", "tags", "stuck", "at", "error", "duration",
}  # fmt: skip


def test_json_keeps_its_keys_and_links_each_node_commit_to_its_task_in_flower(
    open_site: Site,
) -> None:
    run_id = finished(open_site)
    page = json.loads(open_site.request("/api/runs")[1])
    assert set(page) == {"runs", "next", "counts", "graphs"}
    assert set(page["runs"][0]) == ROW_KEYS
    detail = json.loads(open_site.request(f"/api/runs/{run_id}?seq=2")[1])
    assert set(detail) == ROW_KEYS | {
        "finished", "drawn_version", "state", "nodes", "edges", "waiting_on", "waits_for",
        "held_back", "children", "timeline", "attempts", "offered", "stamp", "at",
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


# -- the list: where each run is, how long it took, its error, filters as the CLI spells them


def test_the_list_says_where_each_run_is_its_error_and_its_times(open_site: Site) -> None:
    # Given a run waiting for approval, one that failed, and one that succeeded
    durable = open_site.durable
    approval = define_approval(durable)
    flaky = define_flaky(durable, failures=5, attempts=2)
    with in_process_worker(durable):
        waiting = approval.delay()
        wait_for(lambda: waiting.status == Status.WAITING, 10)
        failed = flaky.delay()
        with pytest.raises(ExecutionFailed):
            failed.wait(timeout=10)
    done = finished(open_site)

    rows = {r["id"]: r for r in json.loads(open_site.request("/api/runs")[1])["runs"]}
    assert rows[waiting.id]["at"] == "approval before review"
    assert rows[failed.id]["error"] == {
        "type": "ConnectionError",
        "message": "gateway refused call 2",
        "node": "charge",
    }
    assert rows[done]["error"] is None and rows[done]["finished_at"] is not None
    assert 0 < rows[done]["duration"] < 10

    _, page = open_site.request("/")
    row = re.search(rf'<tr class="failed">.*?{failed.id}.*?</tr>', page, re.S)
    assert row is not None
    said = text(row.group(0))
    assert "charge: ConnectionError: gateway refused call 2" in said
    assert re.search(r"\d+s ago", said)  # relative times, as durable ls says them
    assert "approval before review" in text(page)


def test_filters_take_the_clis_spellings_and_refuse_unknown_values(open_site: Site) -> None:
    run_id = finished(open_site)
    # An ISO time typed in an address loses its "+" to a space: taken as meant
    for since in (
        "2h",
        "30m",
        "1d",
        "90s",
        "2020-01-01T00:00:00%2B00:00",
        "2020-01-01T00:00+00:00",
    ):
        listed = json.loads(open_site.request(f"/api/runs?since={since}")[1])["runs"]
        assert [r["id"] for r in listed] == [run_id], since
    future = urllib.parse.quote("2999-01-01T00:00:00+00:00")
    assert json.loads(open_site.request(f"/api/runs?since={future}")[1])["runs"] == []
    both = json.loads(open_site.request("/api/runs?status=failed&status=succeeded")[1])
    assert [r["id"] for r in both["runs"]] == [run_id]

    status, body = open_site.request("/api/runs?status=bogus")
    assert status == 400
    assert "no status 'bogus': use one of pending, running" in json.loads(body)["error"]
    page = open_site.call("/?status=bogus")
    assert page.status == 400 and escape("no status 'bogus'") in page.body
    status, body = open_site.request("/api/runs?since=yesterday")
    assert status == 400 and "like 90s, 15m, 2h, 7d" in json.loads(body)["error"]
    status, body = open_site.request("/api/runs?colour=red")
    assert status == 400 and "no filter 'colour'" in json.loads(body)["error"]


# -- a run's page: operations by status, confirmation, refusals from the answer itself


def test_operations_are_offered_by_status_and_match_the_engines_table() -> None:
    # Every operation the engine checks is offered exactly where its table allows it
    for status in Status:
        shown = offered(status, approval=True, compensable=True, other_versions=True)
        for name, allowed in ALLOWED.items():
            assert (name in shown) == (status in allowed), (status, name)
    assert offered(Status.SUCCEEDED, approval=False, compensable=False, other_versions=False) == (
        "restart",
        "fork",
    )
    # A run that waits for an event is not "resumed"; it is sent the event
    waiting = offered(Status.WAITING, approval=False, compensable=True, other_versions=False)
    assert "resume" not in waiting and "send-event" in waiting
    assert {"cancel", "compensate", "restart", "skip", "upgrade"} == DESTRUCTIVE
    assert set(BULK) <= set(OPERATIONS)


def test_a_run_page_offers_what_its_status_allows(signed_site: Site) -> None:
    durable = signed_site.durable
    approval = define_approval(durable)
    done = finished(signed_site)
    with in_process_worker(durable):
        waiting = approval.delay()
        wait_for(lambda: waiting.status == Status.WAITING, 10)

    page = signed_site.request(f"/runs/{done}")[1]
    assert forms(page) == ["restart", "fork", "compensate"]
    page = signed_site.request(f"/runs/{waiting.id}")[1]
    assert forms(page) == ["resume", "pause", "send-event", "patch", "restart", "fork", "cancel"]
    assert "Waits for approval before review: <b>resume</b> below approves it." in page
    for name in ("restart", "cancel"):  # destructive: the form carries its question
        form = re.search(rf'<form [^>]*id="op-{name}"[^>]*>', page)
        assert form is not None and "data-confirm=" in form.group(0), name
    resume = re.search(r'<form [^>]*id="op-resume"[^>]*>', page)
    assert resume is not None and "data-confirm" not in resume.group(0)


def test_a_destructive_operation_from_a_form_asks_first(signed_site: Site) -> None:
    run_id = finished(signed_site)
    path = f"/api/runs/{run_id}/compensate"
    # Without a script the form's answer is the question, and nothing changed
    asked = signed_site.call(path, form={"reason": "customer cancelled"})
    assert asked.status == 200 and "Its completed steps are undone, newest first." in asked.body
    assert 'name="confirm" value="yes"' in asked.body
    assert 'name="reason" value="customer cancelled"' in asked.body
    # A script that did not ask is told to
    scripted = signed_site.call(path, form={}, accept="application/json")
    assert scripted.status == 409 and "needs a confirmation" in scripted.json()["error"]
    assert signed_site.durable.get(run_id).status == Status.SUCCEEDED
    # Confirmed, it is done and the page comes back to the run, with no message in its address
    with in_process_worker(signed_site.durable):
        done = signed_site.call(path, form={"reason": "customer cancelled", "confirm": "yes"})
        assert done.status == 302 and done.headers["Location"] == f"/runs/{run_id}"
        wait_for(lambda: signed_site.durable.get(run_id).status == Status.COMPENSATED, 10)


def test_a_refusal_comes_in_the_servers_answer_and_a_crafted_link_shows_nothing(
    signed_site: Site,
) -> None:
    run_id = finished(signed_site)
    # A form without a script: the refusal is the answer's own page (409), not a redirect
    refused = signed_site.call(f"/api/runs/{run_id}/retry", form={"reason": "again"})
    assert refused.status == 409 and "Location" not in refused.headers
    assert "retry" in refused.body and "succeeded" in refused.body
    assert f'href="/runs/{run_id}"' in refused.body  # and the way back to the run
    # A script gets it as JSON, to show as the server said it
    scripted = signed_site.call(f"/api/runs/{run_id}/retry", form={}, accept="application/json")
    assert scripted.status == 409 and "succeeded" in scripted.json()["error"]
    # A link that carries a message shows none of it
    crafted = "?error=" + urllib.parse.quote("Your session expired: pay now") + "&done=cancel"
    page = signed_site.request(f"/runs/{run_id}{crafted}")[1]
    assert "pay now" not in page and "cancel: done" not in page


def test_a_script_gets_what_was_done_in_words(signed_site: Site) -> None:
    approval = define_approval(signed_site.durable)
    with in_process_worker(signed_site.durable):
        run = approval.delay()
        wait_for(lambda: run.status == Status.WAITING, 10)
        answer = signed_site.call(
            f"/api/runs/{run.id}/resume",
            form={"update": '{"note": "checked"}', "reason": "looks right"},
            accept="application/json",
        )
        assert answer.status == 200, answer.body
        assert answer.json()["said"].startswith("resume: done; the run is ")
        assert run.wait(timeout=10).note == "checked"


def test_the_json_stamp_moves_when_the_run_does(signed_site: Site) -> None:
    """What the page's script polls for: it redraws only when the stamp moved."""
    approval = define_approval(signed_site.durable)
    with in_process_worker(signed_site.durable):
        run = approval.delay()
        wait_for(lambda: run.status == Status.WAITING, 10)
        first = json.loads(signed_site.request(f"/api/runs/{run.id}")[1])["stamp"]
        assert json.loads(signed_site.request(f"/api/runs/{run.id}")[1])["stamp"] == first
        page = signed_site.request(f"/runs/{run.id}")[1]
        assert f'data-stamp="{first}"' in page
        run.update_state({"note": "from elsewhere"}, by="someone")
        moved = json.loads(signed_site.request(f"/api/runs/{run.id}")[1])["stamp"]
        assert moved != first


# -- retries, skipped branches, fan-outs --------------------------------------------------


def test_every_failed_attempt_is_in_the_timeline_with_its_error(open_site: Site) -> None:
    flaky = define_flaky(open_site.durable, failures=2, attempts=3)
    with in_process_worker(open_site.durable):
        run = flaky.delay()
        run.wait(timeout=10)
    detail = json.loads(open_site.request(f"/api/runs/{run.id}")[1])
    assert [(a["node"], a["attempt"], a["of"]) for a in detail["attempts"]] == [
        ("charge", 1, 3),
        ("charge", 2, 3),
    ]
    page = open_site.request(f"/runs/{run.id}")[1]
    said = text(page)
    first = said.index("attempt 1 of 3 failed: ConnectionError: gateway refused call 1")
    second = said.index("attempt 2 of 3 failed: ConnectionError: gateway refused call 2")
    assert first < second
    # In the order it happened: both failures come before the node's own commit
    rows = re.findall(r'<tr class="(attempt|node)">.*?<td>(\w+)</td>', page, re.S)
    assert [kind for kind, node in rows if node == "charge"] == ["attempt", "attempt", "node"]
    assert ">done · 2 retries<" in page  # and the drawing says it too


class Route(BaseModel):
    express: bool = False


def test_a_branch_not_taken_is_shown_skipped(open_site: Site) -> None:
    g = open_site.durable.graph("route", state=Route)

    @g.node
    def sort(route: Route) -> None:
        return None

    @g.node
    def truck(route: Route) -> None:
        return None

    @g.node
    def plane(route: Route) -> None:
        return None

    @g.node
    def unload(route: Route) -> None:
        return None

    g.entry(sort)
    g.branch(sort, lambda route: "plane" if route.express else "truck", [truck, plane])
    g.edge(plane, unload)
    with in_process_worker(open_site.durable):
        run = g.delay()
        run.wait(timeout=10)
    nodes = json.loads(open_site.request(f"/api/runs/{run.id}")[1])["nodes"]
    # plane was not chosen, and unload, which only plane leads to, was never going to run
    assert nodes == {"sort": "done", "truck": "done", "plane": "skipped", "unload": "skipped"}


def boxes(drawing: str) -> dict[str, tuple[float, float]]:
    return {
        name: (float(x), float(y))
        for name, x, y in re.findall(
            r'data-node="([^"]+)".*?<rect x="([\d.]+)" y="([\d.]+)"', drawing
        )
    }


@pytest.mark.parametrize("width", [12, 50])
def test_a_wide_fan_out_wraps_and_every_node_is_drawn_whole(width: int) -> None:
    names = [f"part{i:02d}" for i in range(width)]
    nodes = {"split": "done"} | {n: "done" for n in names} | {"merge": "pending"}
    nodes["part07"] = "failed"
    edges = [views.Edge("split", n, "edge") for n in names]
    edges += [views.Edge(n, "merge", "join") for n in names]
    drawing = svg.graph_svg(nodes, edges, "split")
    size = re.search(r'width="([\d.]+)" height="([\d.]+)"', drawing)
    assert size is not None
    full_w, full_h = float(size.group(1)), float(size.group(2))
    placed = boxes(drawing)
    assert set(placed) == set(nodes)
    for name, (x, y) in placed.items():  # inside the drawing, none clipped
        assert x >= 0 and y >= 0, name
        assert x + svg.BOX_W <= full_w and y + svg.BOX_H <= full_h, name
    columns = {x for name, (x, _) in placed.items() if name.startswith("part")}
    assert len(columns) == svg.COLS  # wrapped, as wide as a 6-way fan-out
    assert full_w <= 1200  # fits a 1280-pixel window
    assert f"{width} side by side: {width - 1} done, 1 failed" in drawing
    # One arrow into the group and one out of it, not one per node
    assert drawing.count("<line ") == 2


def test_the_legend_is_drawn_as_the_nodes_and_pending_is_not_waiting() -> None:
    legend = svg.legend()
    assert re.findall(r'<g class="node (\w+)">', legend) == list(svg.LEGEND)
    assert {"pending", "waiting", "skipped"} <= set(svg.LEGEND)
    css = STYLE.read_text()

    def fill(status: str) -> str:
        found = re.search(rf"g\.node\.{status} rect {{ fill: (#[0-9a-f]+)", css)
        assert found is not None, status
        return found.group(1)

    fills = {status: fill(status) for status in svg.LEGEND}
    assert len(set(fills.values())) == len(fills)  # every status its own colour


# -- bulk ---------------------------------------------------------------------------------


def bulk_graph(durable: Durable, broken: dict[str, bool]) -> Graph:
    g = durable.graph("flaky_web_bulk", state=Payment)

    @g.node(retry=RetryPolicy.never())
    def call(payment: Payment) -> dict[str, bool]:
        if broken["yes"]:
            raise ConnectionError("down")
        return {"paid": True}

    g.entry(call)
    return g


def test_200_failed_runs_are_retried_from_the_list_each_audited(signed_site: Site) -> None:
    durable = signed_site.durable
    broken = {"yes": True}
    g = bulk_graph(durable, broken)
    done = finished(signed_site)
    with in_process_worker(durable):
        runs = [g.delay() for _ in range(200)]
        wait_for(lambda: durable.status_counts().get("failed") == 200, 120)
        # The list's bulk form, "every run matching this filter": a dry run first
        selection = [
            ("all", "yes"), ("status", "failed"), ("graph", "flaky_web_bulk"), ("since", "1h"),
            ("operation", "retry"), ("reason", "gateway is back"),
        ]  # fmt: skip
        dry = signed_site.call("/bulk", form=selection)
        assert dry.status == 200, dry.body
        assert "Would retry 200 runs and refuse 0. Nothing has changed yet." in text(dry.body)
        assert durable.status_counts()["failed"] == 200
        assert 'name="apply" value="yes"' in dry.body
        # Then applied, from the dry run's own form
        broken["yes"] = False
        applied = signed_site.call("/bulk", form=[*selection, ("apply", "yes")])
        assert applied.status == 200, applied.body
        assert "retry: done on 200 runs, refused 0" in text(applied.body)
        wait_for(lambda: durable.status_counts().get("succeeded") == 201, 120)
    assert done not in applied.body
    for run in runs:
        retried = [cp for cp in run.history() if (cp.meta or {}).get("op") == "retry"]
        assert [(cp.meta["by"], cp.meta["reason"]) for cp in retried] == [
            ("ops", "gateway is back")
        ]


def test_ticked_runs_in_bulk_report_what_was_refused_and_why(signed_site: Site) -> None:
    durable = signed_site.durable
    g = bulk_graph(durable, {"yes": True})
    with in_process_worker(durable):
        failed = g.delay()
        wait_for(lambda: failed.status == Status.FAILED, 10)
    done = finished(signed_site)
    ticked = [("id", failed.id), ("id", done), ("id", "pruned-long-ago"), ("operation", "cancel")]
    report = signed_site.call("/bulk", form=[*ticked, ("apply", "yes")])
    assert report.status == 200, report.body
    said = text(report.body)
    assert "cancel: done on 1 run, refused 2" in said
    assert f"{done} cancel does not apply to a run that is succeeded" in said
    assert "pruned-long-ago no such run" in said
    assert failed.status == Status.CANCELLED and durable.get(done).status == Status.SUCCEEDED
    # And as JSON, for scripts
    answer = signed_site.call(
        "/api/bulk",
        json_body={"operation": "pause", "filters": {"status": "cancelled"}, "dry_run": True},
    )
    assert answer.status == 200 and answer.json()["refused"] == {
        failed.id: "pause does not apply to a run that is cancelled"
    }


def test_a_bulk_selection_must_select_something(signed_site: Site) -> None:
    nothing = signed_site.call("/bulk", form={"operation": "retry"})
    assert nothing.status == 400 and "no runs selected" in nothing.body
    everything = signed_site.call("/bulk", form={"operation": "retry", "all": "yes"})
    assert everything.status == 400 and "needs a filter" in everything.body
    unknown = signed_site.call("/bulk", form={"operation": "explode", "id": "x"})
    assert unknown.status == 400 and escape("no bulk operation 'explode'") in unknown.body
    bogus = signed_site.call("/bulk", form={"operation": "retry", "all": "yes", "status": "bogus"})
    assert bogus.status == 400 and escape("no status 'bogus'") in bogus.body


def test_bulk_is_refused_read_only(open_site: Site) -> None:
    run_id = finished(open_site)
    refused = open_site.call("/bulk", form={"operation": "cancel", "id": run_id, "apply": "yes"})
    assert refused.status == 403 and "Read-only" in refused.body
    assert open_site.durable.get(run_id).status == Status.SUCCEEDED


# -- an outage ----------------------------------------------------------------------------


def test_a_database_out_of_reach_gets_a_page_that_says_which_and_what_to_check() -> None:
    url = f"postgresql+psycopg://ops:hunter2@127.0.0.1:1/durable_{uuid.uuid4().hex[:6]}"
    durable = Durable(embedded_app(f"outage-{uuid.uuid4().hex[:8]}"), url)
    base, stop = serve_in_thread(WebConfig(durable))
    try:
        for path in ("/", "/runs/some-run"):
            with pytest.raises(urllib.error.HTTPError) as page:
                urllib.request.urlopen(base + path)
            body = page.value.read().decode()
            assert page.value.code == 503
            assert "127.0.0.1:1" in body and "CELERY_DURABLE_DATABASE_URL" in body
            assert "hunter2" not in body and "Traceback" not in body
        with pytest.raises(urllib.error.HTTPError) as api:
            urllib.request.urlopen(base + "/api/runs")
        answer = json.loads(api.value.read())
        assert api.value.code == 503 and "127.0.0.1:1" in answer["error"]
    finally:
        stop()
        durable.db.dispose()


def test_a_connection_lost_mid_request_is_said_the_same_way() -> None:
    """Past the first read (which Durable turns into DatabaseUnavailable) a lost connection
    reaches the page as the driver's error: the page still names the database, not its
    password, and what to check."""
    lost = OperationalError("SELECT 1", {}, ConnectionError("server closed the connection"))
    said = problems.shown(500, lost, "postgresql+psycopg://ops:hunter2@db.internal:5432/shop")
    assert said.status == 503 and said.title == "Database unavailable"
    assert said.message == (
        "The database at postgresql+psycopg://ops:***@db.internal:5432/shop is unreachable "
        "(server closed the connection)."
    )
    assert said.hint is not None and "CELERY_DURABLE_DATABASE_URL" in said.hint


# -- versions -----------------------------------------------------------------------------


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


# The web view is an operator surface on the public objects: what a user can import, and the
# engine's tables of which statuses each operation accepts (so a page cannot offer what the
# engine would refuse).
PUBLIC = {
    "celery_durable",
    "celery_durable.durable",
    "celery_durable.engine.execution",
    "celery_durable.engine.operations",
    "celery_durable.engine.versions",
    "celery_durable.errors",
    "celery_durable.model.tags",
    "celery_durable.render",
    "celery_durable.status",
}


def test_the_web_view_imports_only_public_modules() -> None:
    """Every module of celery_durable.web imports, from celery_durable, only the package
    itself (its re-exported names), the modules of the public objects (durable,
    engine.execution, errors, status), the status tables of the operations, what a tag may be
    (model.tags), render, and its own modules: it works through what a user can reach, never
    through the store or the task wire format."""
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
