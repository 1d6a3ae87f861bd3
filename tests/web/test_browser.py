"""The web view in a real headless Chromium (Debian's chromium and chromium-driver, driven by
selenium), signed in as a person signs in: the credentials in the address, which the browser
sends only when the server challenges it, and keeps for the site. Nothing here adds a header.

An operator approves a waiting run while its page follows it (typing is never wiped, the page
never reloads), compensates a saga after confirming, reads every failed attempt, and reads a
12-way and a 50-way fan-out at a narrow and a wide window. The screenshots in docs/ are taken
here."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from celery_durable import Durable, ExecutionFailed, Saga, Status
from celery_durable.testing import in_process_worker
from celery_durable.web.app import WebConfig, serve_in_thread
from tests.unit.test_web import (
    SCRIPT_ID,
    define,
    define_approval,
    define_fan_out,
    define_flaky,
)
from tests.waiting import wait_for

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
DOCS = Path(__file__).resolve().parents[2] / "docs"
USER, PASSWORD = "ops", "s3cret"
WIDE, NARROW = 1280, 700

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run)"
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--window-size={WIDE},1000", f"--user-data-dir={tmp_path}",
        "--force-device-scale-factor=1", "--hide-scrollbars",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(DRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shop(durable_embedded: Durable) -> Iterator[tuple[str, Saga]]:
    trip = define(durable_embedded)
    url, stop = serve_in_thread(WebConfig(durable_embedded, USER, PASSWORD))
    try:
        yield url, trip
    finally:
        stop()


def sign_in(browser: webdriver.Chrome, url: str) -> None:
    """Sign in as a person does without a dialog: the credentials in the address. The browser
    sends them only when the server challenges it (a 401 with WWW-Authenticate), then keeps
    them for the realm, so later pages, forms and scripts go signed in with nothing added."""
    parts = urllib.parse.urlsplit(url)
    signed = parts._replace(netloc=f"{USER}:{PASSWORD}@{parts.netloc}")
    browser.get(urllib.parse.urlunsplit(signed) + "/")
    browser.get(url + "/")  # and on, at addresses without them
    assert f"signed in as {USER}" in browser.find_element(By.TAG_NAME, "header").text


def open_run(browser: webdriver.Chrome, url: str, execution_id: str, query: str = "") -> None:
    browser.get(f"{url}/runs/{urllib.parse.quote(execution_id, safe='')}{query}")
    browser.execute_script("window.samePage = 'never reloaded'")


def still_same_page(browser: webdriver.Chrome) -> bool:
    return bool(browser.execute_script("return window.samePage === 'never reloaded'"))


def until(
    browser: webdriver.Chrome, check: Callable[[webdriver.Chrome], Any], s: float = 15
) -> Any:
    """``check`` holds; an element the page redrew meanwhile is looked up again."""
    wait = WebDriverWait(browser, s, 0.1, ignored_exceptions=[StaleElementReferenceException])
    return wait.until(check)


# Read in one step, in the page: the live update may redraw between two WebDriver calls.
STATUS = "return document.getElementById('status').textContent"
NODES = (
    "return Object.fromEntries(Array.from(document.querySelectorAll('svg.graph g.node'),"
    " (g) => [g.dataset.node, g.dataset.status]))"
)
LIVE_TEXT = "return document.querySelector(arguments[0]).textContent"


def status_of(browser: webdriver.Chrome) -> str:
    return str(browser.execute_script(STATUS))


def drawn(browser: webdriver.Chrome) -> dict[str, str]:
    return dict(browser.execute_script(NODES))


def text_of(browser: webdriver.Chrome, selector: str) -> str:
    return str(browser.execute_script(LIVE_TEXT, selector))


def shoot(browser: webdriver.Chrome, name: str) -> Path:
    """The whole page, as tall as it is, saved in docs/."""
    width = browser.get_window_size()["width"]
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(width, min(int(height) + 100, 4000))
    path = DOCS / name
    try:
        browser.find_element(By.TAG_NAME, "body").screenshot(str(path))
    finally:
        browser.set_window_size(width, 1000)
    assert path.stat().st_size > 10_000
    return path


def test_an_operator_approves_a_waiting_run_while_its_page_follows_it(
    browser: webdriver.Chrome, shop: tuple[str, Saga], durable_embedded: Durable
) -> None:
    url, _ = shop
    approval = define_approval(durable_embedded)
    with in_process_worker(durable_embedded):
        run = approval.delay()
        wait_for(lambda: run.status == Status.WAITING, 10)
        sign_in(browser, url)
        open_run(browser, url, run.id)
        assert status_of(browser) == "waiting"
        assert "Waits for approval before review" in browser.find_element(By.ID, "waits").text
        until(browser, lambda b: "Live:" in b.find_element(By.ID, "live").text)

        # While the operator types the approval's update, someone else patches the run
        field = browser.find_element(By.CSS_SELECTOR, "#op-resume input[name=update]")
        field.click()
        field.send_keys('{"note": "che')
        run.update_state({"note": "from the desk"}, by="desk", reason="customer called")
        timeline = "[data-live=timeline]"
        until(browser, lambda b: "patch by desk: customer called" in text_of(b, timeline))
        assert "from the desk" in text_of(browser, "#state")

        # The page moved in place: the same page, the typing and the cursor where they were
        assert still_same_page(browser)
        assert field.get_attribute("value") == '{"note": "che'
        assert browser.switch_to.active_element == field
        field.send_keys('cked"}')
        browser.find_element(By.CSS_SELECTOR, "#op-resume input[name=reason]").send_keys(
            "weighed and checked"
        )
        shoot(browser, "web-waiting.png")

        # Approved, the run moves on, and the page follows it there
        browser.find_element(By.CSS_SELECTOR, "#op-resume button").click()
        until(browser, lambda b: status_of(b) == "succeeded")
        outcome = browser.find_element(By.ID, "outcome")
        assert outcome.text.startswith("resume: done; the run is ")
        assert drawn(browser) == {"weigh": "done", "review": "done", "ship": "done"}
        assert "resume by ops: weighed and checked" in text_of(browser, timeline)
        assert still_same_page(browser)
        assert run.wait(timeout=10).note == "checked"
        # A succeeded run is not resumed: its form went when the run moved on
        assert browser.find_elements(By.ID, "op-resume") == []


def test_an_operator_compensates_a_saga_after_confirming(
    browser: webdriver.Chrome, shop: tuple[str, Saga], durable_embedded: Durable
) -> None:
    url, trip = shop
    with in_process_worker(durable_embedded):
        run = trip.apply_async(execution_id="trip-1")
        run.wait(timeout=10)
        trip.apply_async(execution_id=SCRIPT_ID).wait(timeout=10)
        # Without credentials: asked to sign in, and an operation changes nothing
        request = urllib.request.Request(f"{url}/api/runs/trip-1/compensate", data=b"{}")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        assert refused.value.code in (401, 403)
        with pytest.raises(urllib.error.HTTPError) as challenged:
            urllib.request.urlopen(url + "/")
        assert challenged.value.code == 401  # every page asks for credentials, as a challenge
        assert challenged.value.headers["WWW-Authenticate"].startswith("Basic realm=")
        browser.get(url + "/")
        assert "trip-1" not in browser.page_source  # the browser asks; nothing is shown

        sign_in(browser, url)
        browser.find_element(By.LINK_TEXT, "trip-1").click()
        browser.execute_script("window.samePage = 'never reloaded'")
        assert drawn(browser) == {"flight": "done", "hotel": "done"}
        form = browser.find_element(By.ID, "op-compensate")
        form.find_element(By.NAME, "reason").send_keys("customer cancelled")

        # Asked first; kept as it is, nothing happens
        form.find_element(By.TAG_NAME, "button").click()
        dialog = browser.find_element(By.ID, "confirm")
        until(browser, lambda b: dialog.is_displayed())
        assert "completed steps are undone" in dialog.text
        dialog.find_element(By.CSS_SELECTOR, "button.no").click()
        assert not dialog.is_displayed()
        assert run.status == Status.SUCCEEDED

        # Confirmed, it is done, and the page shows the compensation as it happens
        form.find_element(By.TAG_NAME, "button").click()
        until(browser, lambda b: dialog.is_displayed())
        dialog.find_element(By.CSS_SELECTOR, "button.yes").click()
        until(browser, lambda b: status_of(b) == "compensated")
        kinds = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "td.kind")]
        assert kinds[-2:] == ["compensation", "compensation"]
        assert "compensate by ops: customer cancelled" in browser.page_source
        assert drawn(browser) == {"flight": "undone", "hotel": "undone"}
        assert still_same_page(browser)
        shoot(browser, "run-page.png")

        browser.get(url + "/runs/" + urllib.parse.quote(SCRIPT_ID, safe=""))
        assert browser.find_element(By.CSS_SELECTOR, "h1.run-id").text == SCRIPT_ID
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018  (the script never ran)


def test_a_refusal_is_the_servers_own_answer_and_a_crafted_link_shows_none(
    browser: webdriver.Chrome, shop: tuple[str, Saga], durable_embedded: Durable
) -> None:
    url, _ = shop
    approval = define_approval(durable_embedded)
    with in_process_worker(durable_embedded):
        run = approval.delay()
        wait_for(lambda: run.status == Status.WAITING, 10)
    sign_in(browser, url)
    crafted = "?error=" + urllib.parse.quote("Your session expired: call +1 555 0100")
    open_run(browser, url, run.id, crafted)
    assert status_of(browser) == "waiting"
    assert "session expired" not in browser.find_element(By.TAG_NAME, "body").text
    form = browser.find_element(By.ID, "op-patch")
    form.find_element(By.NAME, "patch").send_keys("note = checked")
    form.find_element(By.TAG_NAME, "button").click()
    outcome = browser.find_element(By.ID, "outcome")
    until(browser, lambda b: outcome.is_displayed())
    assert "patch is not JSON" in outcome.text
    assert "error" in str(outcome.get_attribute("class"))
    assert still_same_page(browser) and "error=" in browser.current_url  # the link did nothing
    assert run.status == Status.WAITING


def test_the_list_and_a_failed_run_with_every_attempt(
    browser: webdriver.Chrome, shop: tuple[str, Saga], durable_embedded: Durable
) -> None:
    url, trip = shop
    approval = define_approval(durable_embedded)
    flaky = define_flaky(durable_embedded, failures=5, attempts=3)
    with in_process_worker(durable_embedded):
        trip.apply_async(execution_id="trip-7").wait(timeout=10)
        waiting = approval.apply_async(execution_id="parcel-12")
        wait_for(lambda: waiting.status == Status.WAITING, 10)
        failed = flaky.apply_async(execution_id="payment-3")
        with pytest.raises(ExecutionFailed):
            failed.wait(timeout=15)
    sign_in(browser, url)
    rows = {
        row.find_element(By.CSS_SELECTOR, "a.run").text: row
        for row in browser.find_elements(By.CSS_SELECTOR, "table.runs tbody tr")
    }
    assert set(rows) == {"trip-7", "parcel-12", "payment-3"}
    assert "approval before review" in rows["parcel-12"].text
    assert "charge: ConnectionError: gateway refused call 3" in rows["payment-3"].text
    assert " ago" in rows["trip-7"].text
    shoot(browser, "web-runs.png")

    rows["payment-3"].find_element(By.CSS_SELECTOR, "a.run").click()
    attempts = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "tr.attempt td.said")]
    assert attempts == [
        f"attempt {n} of 3 failed: ConnectionError: gateway refused call {n}" for n in (1, 2, 3)
    ]
    assert drawn(browser)["charge"] == "failed"
    assert "failed · 3 attempts" in browser.find_element(By.CSS_SELECTOR, "svg.graph").text
    offered = [
        f.get_attribute("data-op") for f in browser.find_elements(By.CSS_SELECTOR, "form.op")
    ]
    assert "retry" in offered and "resume" not in offered
    shoot(browser, "web-failed-retries.png")


def fill(element: WebElement) -> str:
    return str(element.value_of_css_property("fill"))


def inside(inner: dict[str, float], outer: dict[str, float]) -> bool:
    return (
        inner["left"] >= outer["left"] - 0.5
        and inner["right"] <= outer["right"] + 0.5
        and inner["top"] >= outer["top"] - 0.5
        and inner["bottom"] <= outer["bottom"] + 0.5
    )


RECT = (
    "const r = arguments[0].getBoundingClientRect();"
    "return {left: r.left, right: r.right, top: r.top, bottom: r.bottom};"
)


def test_a_12_way_fan_out_in_a_narrow_window_keeps_the_failed_node_in_view(
    browser: webdriver.Chrome, shop: tuple[str, Saga], durable_embedded: Durable
) -> None:
    url, _ = shop
    fan = define_fan_out(durable_embedded, 12, failing="part05")
    approval = define_approval(durable_embedded)
    with in_process_worker(durable_embedded):
        run = fan.delay()
        with pytest.raises(ExecutionFailed):
            run.wait(timeout=15)
        waiting = approval.delay()
        wait_for(lambda: waiting.status == Status.WAITING, 10)
    browser.set_window_size(NARROW, 1000)
    sign_in(browser, url)
    open_run(browser, url, run.id)
    nodes = drawn(browser)
    assert nodes["part05"] == "failed" and nodes["merge"] == "pending" and len(nodes) == 14

    # Every node drawn whole inside the drawing; the drawing scrolls inside its box, and the
    # failed node is scrolled into view
    graph = browser.find_element(By.CSS_SELECTOR, "svg.graph")
    whole = browser.execute_script(RECT, graph)
    for rect in browser.find_elements(By.CSS_SELECTOR, "svg.graph g.node rect"):
        assert inside(browser.execute_script(RECT, rect), whole)
    box = browser.find_element(By.ID, "graph")
    assert browser.execute_script("return arguments[0].scrollWidth > arguments[0].clientWidth", box)
    failed = browser.find_element(By.CSS_SELECTOR, 'g.node[data-node="part05"] rect')
    assert inside(browser.execute_script(RECT, failed), browser.execute_script(RECT, box))

    # The legend's colours are the drawing's, and pending is not waiting
    swatches = {
        str(key.text): fill(key.find_element(By.CSS_SELECTOR, "rect"))
        for key in browser.find_elements(By.CSS_SELECTOR, "#legend .key")
    }
    for status in ("done", "failed", "pending"):
        node = browser.find_element(By.CSS_SELECTOR, f"svg.graph g.node.{status} rect")
        assert fill(node) == swatches[status], status
    assert swatches["pending"] != swatches["waiting"]
    open_run(browser, url, waiting.id)
    review = browser.find_element(By.CSS_SELECTOR, 'g.node[data-node="review"] rect')
    assert fill(review) == swatches["waiting"]
    ship = browser.find_element(By.CSS_SELECTOR, 'g.node[data-node="ship"] rect')
    assert fill(ship) == swatches["pending"] != fill(review)


def test_a_50_way_fan_out_fits_a_wide_window(
    browser: webdriver.Chrome, shop: tuple[str, Saga], durable_embedded: Durable
) -> None:
    url, _ = shop
    fan = define_fan_out(durable_embedded, 50, failing="part37")
    with in_process_worker(durable_embedded):
        run = fan.delay()
        with pytest.raises(ExecutionFailed):
            run.wait(timeout=30)
    sign_in(browser, url)
    open_run(browser, url, run.id)
    nodes = drawn(browser)
    assert len(nodes) == 52 and nodes["part37"] == "failed"
    box = browser.find_element(By.ID, "graph")
    assert browser.execute_script(
        "return arguments[0].scrollWidth <= arguments[0].clientWidth", box
    )  # no sideways scroll at all
    seen = browser.execute_script(RECT, box)
    for rect in browser.find_elements(By.CSS_SELECTOR, "svg.graph g.node rect"):
        assert inside(browser.execute_script(RECT, rect), {**seen, "bottom": 1e9})
    assert "50 side by side" in browser.find_element(By.CSS_SELECTOR, "svg.graph").text
    shoot(browser, "web-fan-out-50.png")
