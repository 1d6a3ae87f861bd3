"""The pytest plugin: its fixtures work, and it changes nothing for a session that uses none
of them (a plain Celery project's tests, run with celery-durable installed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from celery import Celery
from pydantic import BaseModel

from celery_durable import Durable
from celery_durable.testing import in_process_worker

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


# Built at import, as the README's first example is: a real broker (nothing listens on port 1
# here), the default database, nothing set in the environment.
imported_app = Celery("imported", broker="amqp://guest:guest@127.0.0.1:1//")
imported = Durable(imported_app)
imported_graph = imported.graph("imported", state=Count)


@imported_graph.node
def bump_imported(state: Count) -> dict[str, int]:
    return {"n": state.n + 1}


imported_graph.entry(bump_imported)


def test_the_fixtures_run_a_graph_embedded(durable_embedded: Durable, durable_worker) -> None:
    g = durable_embedded.graph("plugin", state=Count)

    @g.node
    def bump(state: Count) -> dict[str, int]:
        return {"n": state.n + 1}

    g.entry(bump)
    with durable_worker():
        assert g.delay(n=1).wait(timeout=10).n == 2


def test_durable_embed_runs_an_app_built_at_import_in_a_tenth_of_a_second(
    durable_embed: Callable[[Durable], Durable],
) -> None:
    durable = durable_embed(imported)
    started = time.monotonic()
    with in_process_worker(durable):
        assert imported_graph.delay(n=1).wait(timeout=10).n == 2
    # About 0.1 s; over 2 s when the in-memory broker polls once a second, as by default.
    assert time.monotonic() - started < 1.5
    assert durable.list()[0].status == "succeeded"  # in the test's database


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
