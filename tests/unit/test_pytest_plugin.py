"""The pytest plugin: its fixtures work, and it changes nothing for a session that uses none
of them (a plain Celery project's tests, run with celery-durable installed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from pydantic import BaseModel

from celery_durable import Durable

PLAIN_PROJECT = """
from celery import Celery

app = Celery("plain", broker="memory://", backend="cache+memory://")
app.conf.task_always_eager = True


@app.task
def add(x, y):
    return x + y


def test_add():
    assert add.delay(2, 3).get() == 5
"""


class Count(BaseModel):
    n: int = 0


def test_the_fixtures_run_a_graph_embedded(durable_embedded: Durable, durable_worker) -> None:
    g = durable_embedded.graph("plugin", state=Count)

    @g.node
    def bump(state: Count) -> dict[str, int]:
        return {"n": state.n + 1}

    g.entry(bump)
    with durable_worker():
        assert g.delay(n=1).wait(timeout=10).n == 2


def test_a_plain_celery_project_passes_with_the_plugin_installed(tmp_path: Path) -> None:
    (tmp_path / "test_plain.py").write_text(textwrap.dedent(PLAIN_PROJECT))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    plugins = subprocess.run(
        [sys.executable, "-m", "pytest", "--trace-config", "-q", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "celery_durable.pytest_plugin" in plugins.stdout  # loaded, and harmless
