"""The web view in a real headless Chromium (Debian's chromium and chromium-driver, driven by
selenium): list -> open a run -> node statuses -> sign in -> compensate a saga -> the
compensation checkpoints appear; a run id with <script> in it renders as text; an operation
without credentials changes nothing. Saves a screenshot of the run page (``artifacts/``)."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from celery_durable import Durable, Saga, Status
from celery_durable.testing import in_process_worker
from celery_durable.web.app import WebConfig, serve_in_thread
from tests.unit.test_web import SCRIPT_ID, define

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
USER, PASSWORD = "ops", "s3cret"

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
        "--disable-dev-shm-usage", "--window-size=1280,1100", f"--user-data-dir={tmp_path}",
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


def test_an_operator_compensates_a_saga_in_the_browser(
    browser: webdriver.Chrome, shop: tuple[str, Saga], durable_embedded: Durable
) -> None:
    url, trip = shop
    with in_process_worker(durable_embedded):
        run = trip.apply_async(execution_id="trip-1")
        run.wait(timeout=10)
        trip.apply_async(execution_id=SCRIPT_ID).wait(timeout=10)
        # Without credentials: asked to sign in, and an operation changes nothing.
        request = urllib.request.Request(f"{url}/api/runs/trip-1/compensate", data=b"{}")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        assert refused.value.code in (401, 403)
        assert run.status == Status.SUCCEEDED

        with pytest.raises(urllib.error.HTTPError) as challenged:
            urllib.request.urlopen(url + "/")
        assert challenged.value.code == 401  # every page asks for credentials, as a challenge
        assert challenged.value.headers["WWW-Authenticate"].startswith("Basic realm=")
        browser.get(url + "/")
        assert "trip-1" not in browser.page_source  # the browser asks; nothing is shown
        sign_in(browser, url)
        browser.get(url + "/")
        link = browser.find_element(By.LINK_TEXT, "trip-1")
        link.click()
        nodes = {
            g.get_attribute("data-node"): g.get_attribute("data-status")
            for g in browser.find_elements(By.CSS_SELECTOR, "svg.graph g.node")
        }
        assert nodes == {"flight": "done", "hotel": "done"}
        form = browser.find_element(By.ID, "op-compensate")
        form.find_element(By.NAME, "reason").send_keys("customer cancelled")
        form.find_element(By.TAG_NAME, "button").click()
        WebDriverWait(browser, 10).until(
            expected_conditions.presence_of_element_located((By.ID, "done"))
        )
        WebDriverWait(browser, 10).until(
            lambda b: len(b.find_elements(By.CSS_SELECTOR, "tr.compensation")) == 2 or b.refresh()
        )
        kinds = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "td.kind")]
        assert kinds[-2:] == ["compensation", "compensation"]
        assert "compensate by ops: customer cancelled" in browser.page_source
        ARTIFACTS.mkdir(exist_ok=True)
        browser.find_element(By.TAG_NAME, "body").screenshot(str(ARTIFACTS / "run-page.png"))
        assert (ARTIFACTS / "run-page.png").stat().st_size > 10_000

        browser.get(url + "/runs/" + urllib.parse.quote(SCRIPT_ID, safe=""))
        assert browser.find_element(By.CSS_SELECTOR, "h1.run-id").text == SCRIPT_ID
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018  (the script never ran)
