"""Tags where operators meet them: `durable ls --tag k=v` (several: all of them), `show`, a
bulk operation's `--tag` selection, and the web view's list filter (spelled as the CLI
spells it), run page and JSON; a badly spelled tag is a clear error everywhere."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from html import escape

import pytest

from celery_durable import Durable, Graph, Status
from tests.unit import cli_app
from tests.unit.test_web import Site, site, text

C42 = {"customer": "c-42"}


@pytest.fixture
def tickets(durable: Durable) -> Graph:
    """Three runs, none run by a worker: t-1 and t-3 for customer c-42, t-3 in prod."""
    g = cli_app.define(durable)
    g.apply_async(kwargs={"title": "printer"}, execution_id="t-1", tags=C42)
    g.apply_async(kwargs={"title": "phone"}, execution_id="t-2", tags={"customer": "c-7"})
    g.apply_async(kwargs={"title": "desk"}, execution_id="t-3", tags={**C42, "env": "prod"})
    return g


@pytest.fixture
def signed_site(durable: Durable, tickets: Graph) -> Iterator[Site]:
    yield from site(durable, "ops", "s3cret")


def listed(output: str) -> list[str]:
    """The ids of `durable ls`'s table."""
    return [line.split()[0] for line in output.splitlines()[2:]]


# -- the command line -------------------------------------------------------------------------


def test_ls_finds_runs_by_every_tag_given_and_shows_them(durable: Durable, tickets: Graph) -> None:
    one = cli_app.invoke(durable, "ls", "--tag", "customer=c-42")
    assert one.exit_code == 0, one.output
    assert listed(one.stdout) == ["t-3", "t-1"]
    assert one.stdout.splitlines()[0].split()[-1] == "TAGS"
    assert "customer=c-42,env=prod" in one.stdout

    both = cli_app.invoke(durable, "ls", "--tag", "customer=c-42", "--tag", "env=prod", "--json")
    assert both.exit_code == 0, both.output
    assert [(r["id"], r["tags"]) for r in json.loads(both.stdout)] == [
        ("t-3", {"customer": "c-42", "env": "prod"})
    ]

    shown = cli_app.invoke(durable, "show", "t-3")
    assert "tags: customer=c-42 env=prod" in shown.stdout


def test_a_badly_spelled_tag_is_a_usage_error_that_says_how_to_write_it(
    durable: Durable, tickets: Graph
) -> None:
    bad = cli_app.invoke(durable, "ls", "--tag", "customer")
    assert bad.exit_code == 2
    assert "Invalid value for '--tag': 'customer' is not a tag: write KEY=VALUE" in bad.output
    clash = cli_app.invoke(durable, "cancel", "--tag", "customer=a", "--tag", "customer=b")
    assert clash.exit_code == 2 and "give customer once" in clash.output
    long = cli_app.invoke(durable, "ls", "--tag", "k" * 65 + "=v")
    assert long.exit_code == 2 and "is not 1 to 64 characters" in long.output


def test_a_bulk_operation_takes_a_tag_selection(durable: Durable, tickets: Graph) -> None:
    dry = cli_app.invoke(durable, "cancel", "--tag", "customer=c-42", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "cancel would be applied to 2 of 2 selected runs" in dry.stdout
    assert {"t-1", "t-3"} == {line.split()[-1] for line in dry.stdout.splitlines()[1:]}

    done = cli_app.invoke(durable, "cancel", "--tag", "customer=c-42", "--tag", "env=prod")
    assert done.exit_code == 0, done.output
    assert "cancel: done for 1 of 1 selected runs" in done.stdout
    assert durable.get("t-3").status == Status.CANCELLED
    assert durable.get("t-1").status != Status.CANCELLED

    none = cli_app.invoke(durable, "cancel", "--tag", "customer=c-404")
    assert none.exit_code == 1 and "no run matches --tag customer=c-404" in none.output


# -- the web view -----------------------------------------------------------------------------


def test_the_web_list_filters_by_tags_spelled_as_the_cli_spells_them(signed_site: Site) -> None:
    def found(query: str) -> list[str]:
        status, body = signed_site.request(f"/api/runs?{query}")
        assert status == 200, body
        return [run["id"] for run in json.loads(body)["runs"]]

    assert found("tag=customer%3Dc-42") == ["t-3", "t-1"]
    assert found("tag=customer=c-42&tag=env=prod") == ["t-3"]
    assert found("tag=customer=c-404") == []
    rows = json.loads(signed_site.request("/api/runs?tag=env=prod")[1])["runs"]
    assert rows[0]["tags"] == {"customer": "c-42", "env": "prod"}

    status, body = signed_site.request("/api/runs?tag=customer")
    assert status == 400
    assert "tag: 'customer' is not a tag: write KEY=VALUE" in json.loads(body)["error"]

    page = signed_site.call("/?tag=customer%3Dc-42")
    assert page.status == 200
    assert 'name="tag" placeholder="customer=c-42" size="14" value="customer=c-42"' in page.body
    # The bulk form keeps the filter, so "every run matching this filter" means these runs.
    assert '<input type="hidden" name="tag" value="customer=c-42">' in page.body
    assert 'href="/?tag=env%3Dprod"' in page.body  # a run's tag lists every run tagged so


def test_the_run_page_shows_its_tags_and_bulk_selects_by_them(signed_site: Site) -> None:
    page = signed_site.call("/runs/t-3")
    assert "Tags customer=c-42 env=prod" in text(page.body)
    link = "/?tag=" + urllib.parse.quote("customer=c-42", safe="")
    assert f'href="{escape(link)}"' in page.body
    assert json.loads(signed_site.request("/api/runs/t-3")[1])["tags"] == {
        "customer": "c-42",
        "env": "prod",
    }

    form = [("all", "yes"), ("tag", "customer=c-42"), ("operation", "cancel")]
    dry = signed_site.call("/bulk", form=form)
    assert dry.status == 200, dry.body
    assert "Would cancel 2 runs and refuse 0. Nothing has changed yet." in text(dry.body)
    answer = signed_site.call(
        "/api/bulk",
        json_body={"operation": "cancel", "filters": {"tag": ["customer=c-42", "env=prod"]}},
    )
    assert answer.status == 200 and answer.json()["done"] == ["t-3"]
    bad = signed_site.call("/bulk", form=[("all", "yes"), ("tag", "=x"), ("operation", "cancel")])
    assert bad.status == 400 and escape("'=x' is not a tag") in bad.body
