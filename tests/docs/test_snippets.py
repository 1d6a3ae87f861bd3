"""Every snippet of every documentation page runs and prints what the page says it prints.

One test per page under docs/, and one for the README (the rules are in
tests/docs/runner.py). Pages that need the
real services (front matter ``services: true``) are integration tests, like the others that
start worker processes; ``make test`` runs them all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs.runner import parse, run_page

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


def _param(page: Path) -> object:
    marks = [pytest.mark.integration] if parse(page).services else []
    return pytest.param(page, marks=marks, id=str(page.relative_to(REPO)))


@pytest.mark.parametrize("page", [_param(page) for page in PAGES])
def test_page(page: Path) -> None:
    run_page(page)


def test_every_page_is_found() -> None:
    """The pages the site is built from: a docs/ folder the tests could not see runs nothing."""
    assert DOCS / "index.md" in PAGES and DOCS / "quickstart.md" in PAGES
