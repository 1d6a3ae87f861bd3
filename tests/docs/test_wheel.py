"""The distribution as a user gets it: ``python -m build`` makes an sdist and, from it, a
wheel; the wheel installs into a fresh virtualenv (its dependencies from the package index)
and ``celery-durable demo`` runs from a directory outside the source tree, on the installed
package, not this checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def run(*command: str | Path, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout[-6000:]}"
    return done.stdout


def test_the_built_wheel_installs_and_runs_the_demo_outside_the_source_tree(
    tmp_path: Path,
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("CELERY")
    }
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--outdir", dist, REPO, cwd=REPO, env=env)
    wheels = sorted(dist.glob("celery_durable-*-py3-none-any.whl"))
    assert wheels and sorted(dist.glob("celery_durable-*.tar.gz")), sorted(dist.iterdir())

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path, env=env)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    run(python, "-m", "pip", "install", "--quiet", wheels[-1], cwd=tmp_path, env=env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    where = run(
        python,
        "-c",
        "import importlib.metadata as m, pathlib, celery_durable as c; "
        "p = pathlib.Path(c.__file__).parent; "
        "print(p); print((p / 'py.typed').exists()); "
        "print(m.metadata('celery-durable')['Summary'])",
        cwd=elsewhere,
        env=env,
    ).splitlines()
    assert Path(where[0]).is_relative_to(venv), where  # the wheel's package, not the checkout
    assert where[1] == "True"  # py.typed shipped
    assert where[2].startswith("Durable execution for Celery")

    out = run(bin_dir / "celery-durable", "demo", cwd=elsewhere, env=env)
    assert "celery-durable demo: SQLite at" in out
    assert "the card is declined, so the saga compensates" in out
    assert "approved by support@shop; final state:" in out
    assert "demo finished in" in out
