"""Runs the snippets of a documentation page, so that no example in the docs rots.

What a page's fenced code blocks mean to the runner:

- ```` ```python ````: run, in the order of the page, in one namespace per page (a module of
  its own, in one Python process for the page, started at its first Python block with the
  shell's environment and directory of that moment), with the page's directory as the
  working directory and on ``sys.path``.
- ```` ```python title="shop.py" ````: written to that file (not run), so later blocks can
  import it and console blocks can run ``celery -A shop ...``.
- ```` ```console ````: each line starting with ``$ `` is a command, run by bash in the page's
  directory; a command line ending in ``\\`` goes on over the next lines. The lines after a
  command, up to the next command, are its expected output (stdout and stderr together, as a
  terminal shows them). An expected line that is exactly ``...`` matches any number of lines;
  ``...`` within a line matches any text on that line. Trailing spaces and trailing blank lines
  do not count. A command must exit 0, unless its expected output ends with a line ``[N]``
  (as in cram): then it must exit N. Commands of a page share one shell's state: what one
  exports, or the directory it changes to, the next sees.
- A command ending in `` &`` starts in the background (its own process group, output to a log
  the runner shows when the page fails) and has no expected output; the runner stops it by its
  process group at the end of the page (SIGTERM, then SIGKILL after 10 s).
- ```` ```text ```` and data (``yaml``, ``toml``, ``json``, ``ini``, ``html``, ``sql``): shown,
  not run. Shell blocks (``sh``, ``bash``, ``shell``) and blocks without a language are
  refused: write ``console`` (run) or ``text`` (not run), so nothing looks tested that is not.

Every page runs in a fresh empty temporary directory, with the checkout under test on
``PYTHONPATH`` after it, the test interpreter's scripts directory first on ``PATH``, and
with ``CELERY_DURABLE_DATABASE_URL`` and ``CELERY_BROKER_URL`` unset: examples use the
SQLite file of that directory and the in-memory broker (``celery_durable.testing``), and
``CELERY_DURABLE_TEST_PG`` unset too (so the pytest plugin's fixtures use SQLite). A page
that needs the real services says so in its front matter::

    ---
    services: true
    databases: [shop]
    ---

``services: true`` gives the page libpq's ``PGHOST``, ``PGPORT`` and ``PGUSER`` of the test server
(``CELERY_DURABLE_TEST_PG``), so ``createdb`` and a ``postgresql+psycopg://localhost/...`` URL
reach it. Each database named in ``databases`` must not exist when the page starts (the page
is refused, and nothing is dropped, when one does); the page creates it as a reader would, and
the runner drops it at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

UNSET = ("CELERY_DURABLE_DATABASE_URL", "CELERY_BROKER_URL")
# The test suite's PostgreSQL, which the pytest plugin's fixtures use when it is set: a page
# without services runs its own tests on SQLite.
SERVICES_ONLY = ("CELERY_DURABLE_TEST_PG",)
RUN = {"python", "py", "console"}
SHOWN = {"text", "yaml", "toml", "json", "ini", "html", "sql", "promql", "dockerfile"}
COMMAND_TIMEOUT = 180.0
BLOCK_TIMEOUT = 180.0
STOP_GRACE = 10.0
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<info>[^`]*)$")
TITLE = re.compile(r'title="(?P<title>[^"]+)"')
DEFAULT_ADMIN = "postgresql://root@127.0.0.1:5432/postgres"
REPO = Path(__file__).resolve().parents[2]


class SnippetFailed(AssertionError):
    """A snippet of a page did not do what the page says; the message says where and why."""


@dataclass(frozen=True)
class Block:
    """One fenced code block: its language, title (a file name) and text, and where it is."""

    language: str
    title: str | None
    text: str
    line: int

    def where(self, page: Path) -> str:
        return f"{page}:{self.line} ({self.language}{' ' + self.title if self.title else ''})"


@dataclass(frozen=True)
class Command:
    """A ``$`` line of a console block (continuations joined) and the output it must print."""

    command: str
    expected: list[str]
    line: int

    @property
    def background(self) -> bool:
        return self.command.rstrip().endswith("&") and not self.command.rstrip().endswith("&&")


@dataclass
class Page:
    """A page's front matter and blocks, parsed."""

    path: Path
    services: bool = False
    databases: list[str] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)


def parse(path: Path) -> Page:
    """The page's front matter and every fenced block, top-level or indented (tabs, notes)."""
    lines = path.read_text().splitlines()
    page = Page(path)
    start = 0
    if lines and lines[0].strip() == "---":
        end = lines.index("---", 1)
        meta = yaml.safe_load("\n".join(lines[1:end])) or {}
        page.services = bool(meta.get("services", False))
        page.databases = list(meta.get("databases", []))
        start = end + 1
    i = start
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        indent, ticks, info = opened["indent"], opened["ticks"], opened["info"].strip()
        language = info.split()[0].lower() if info.split() else ""
        title = found["title"] if (found := TITLE.search(info)) else None
        body: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != ticks:
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        page.blocks.append(Block(language, title, "\n".join(body) + "\n", i + 1))
        i = j + 1
    return page


def commands(block: Block) -> list[Command]:
    """The commands of a console block with their expected output."""
    found: list[Command] = []
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            if lines[i].strip():
                raise SnippetFailed(
                    f"line {block.line + 1 + i}: output before any command: {lines[i]!r}"
                )
            i += 1
            continue
        number = block.line + 1 + i
        parts = [lines[i][2:]]
        while parts[-1].endswith("\\") and i + 1 < len(lines):
            i += 1
            parts.append(lines[i])
        i += 1
        expected: list[str] = []
        while i < len(lines) and not lines[i].startswith("$ "):
            expected.append(lines[i])
            i += 1
        found.append(Command("\n".join(parts), expected, number))
    return found


def matches(expected: list[str], output: str) -> bool:
    """Whether ``output`` is what ``expected`` says, with its ``...`` wildcards."""
    pattern = ""
    for line in _trimmed(expected):
        if line.strip() == "...":
            pattern += r"(?:[^\n]*\n)*?"
        else:
            pattern += r"[^\n]*?".join(re.escape(part) for part in line.split("...")) + r"\n"
    text = "".join(line + "\n" for line in _trimmed(output.splitlines()))
    return re.fullmatch(pattern, text) is not None


def _trimmed(lines: list[str]) -> list[str]:
    kept = [line.rstrip() for line in lines]
    while kept and not kept[-1]:
        kept.pop()
    return kept


# The Python process of a page: reads blocks as JSON lines on one pipe, runs each in the page's
# module, and answers on another with null or the traceback.
DRIVER = textwrap.dedent(
    """
    import json, os, sys, traceback, types
    requests, answers = os.fdopen(int(sys.argv[1])), os.fdopen(int(sys.argv[2]), "w")
    module = types.ModuleType("docs_page")
    sys.modules["docs_page"] = module
    sys.path.insert(0, os.getcwd())
    for request in requests:
        block = json.loads(request)
        try:
            exec(compile(block["code"], block["name"], "exec"), module.__dict__)
            answer = None
        except BaseException:
            answer = traceback.format_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        answers.write(json.dumps(answer) + "\\n")
        answers.flush()
    """
)


class PythonProcess:
    """The page's Python process, started at its first Python block."""

    def __init__(self, cwd: Path, env: dict[str, str], log: Path) -> None:
        to_driver, self._requests = os.pipe()
        self._answers, from_driver = os.pipe()
        self.log = log
        self._out = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(to_driver), str(from_driver)],
            cwd=cwd,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            pass_fds=(to_driver, from_driver),
            start_new_session=True,
        )
        os.close(to_driver)
        os.close(from_driver)
        self.requests = os.fdopen(self._requests, "w")
        self.answers = os.fdopen(self._answers)

    def run(self, code: str, name: str) -> str | None:
        """Runs one block; None, or the traceback it raised."""
        self.requests.write(json.dumps({"code": code, "name": name}) + "\n")
        self.requests.flush()
        answer = _read_line(self.answers, BLOCK_TIMEOUT)
        if answer is None:
            return f"no answer within {BLOCK_TIMEOUT} s, or the process died"
        result: str | None = json.loads(answer)
        return result

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.requests.close()
        _stop_group(self.process)
        self.answers.close()
        self._out.close()


def _read_line(stream: object, timeout: float) -> str | None:
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)  # type: ignore[arg-type]
    try:
        if not selector.select(timeout):
            return None
        line: str = stream.readline()  # type: ignore[attr-defined]
        return line or None
    finally:
        selector.close()


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group, SIGKILL after STOP_GRACE: only what the runner started."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(STOP_GRACE)


class Shell:
    """The page's shell state (environment and directory), carried from command to command."""

    def __init__(self, cwd: Path, env: dict[str, str], scratch: Path) -> None:
        self.cwd = cwd
        self.env = env
        self.scratch = scratch
        self.background: list[tuple[subprocess.Popen[bytes], Path]] = []

    def run(self, command: Command) -> tuple[int, str]:
        """Runs a foreground command; its exit status and output."""
        env_file, dir_file = self.scratch / "env", self.scratch / "pwd"
        script = (
            f"{command.command}\n"
            f'__status=$?; env -0 > "{env_file}"; pwd > "{dir_file}"; exit $__status\n'
        )
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=COMMAND_TIMEOUT,
            start_new_session=True,
        )
        if env_file.exists():
            pairs = env_file.read_bytes().decode().split("\0")
            self.env = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
            self.cwd = Path(dir_file.read_text().strip())
            env_file.unlink()
        return done.returncode, done.stdout.decode(errors="replace")

    def start(self, command: Command) -> None:
        """Starts a background command in a process group of its own."""
        log = self.scratch / f"background-{len(self.background)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["bash", "-c", f"exec {command.command.rstrip()[:-1]}"],
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.background.append((process, log))

    def stop(self) -> None:
        for process, _ in self.background:
            _stop_group(process)

    def logs(self) -> str:
        return "".join(
            f"\n--- background command {process.args[-1]!r} (exit {process.poll()}):\n"
            + log.read_text(errors="replace")[-4000:]
            for process, log in self.background
        )


def run_page(path: Path) -> None:
    """Runs every snippet of the page at ``path``; raises SnippetFailed at the first that
    does not do what the page says."""
    page = parse(path)
    refused = [b for b in page.blocks if b.language not in RUN | SHOWN]
    if refused:
        raise SnippetFailed(
            "blocks neither run nor shown (write ```console to run commands, ```text to show "
            "them): " + ", ".join(b.where(path) for b in refused)
        )
    with tempfile.TemporaryDirectory(prefix="docs-page-") as workdir, _scratch() as scratch:
        cwd = Path(workdir)
        unset = UNSET if page.services else UNSET + SERVICES_ONLY
        env = {k: v for k, v in os.environ.items() if k not in unset}
        # The page's directory, then the checkout under test (its celery_durable, examples/).
        path = [str(cwd), str(REPO), env.get("PYTHONPATH")]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, path))
        # The interpreter running the tests first on PATH: its python, celery and
        # celery-durable are the ones a reader who installed the package has, activated or not.
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join(filter(None, [bin_dir, env.get("PATH")]))
        with _databases(page, env):
            _run_blocks(page, cwd, env, scratch)


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="docs-runner-") as scratch:
        yield Path(scratch)


def _run_blocks(page: Page, cwd: Path, env: dict[str, str], scratch: Path) -> None:
    shell = Shell(cwd, env, scratch)
    python: PythonProcess | None = None
    try:
        for block in page.blocks:
            if block.language not in RUN:
                continue
            if block.title:
                (shell.cwd / block.title).write_text(block.text)
            elif block.language == "console":
                _run_console(page, block, shell)
            else:
                if python is None:
                    python = PythonProcess(shell.cwd, dict(shell.env), scratch / "python.log")
                failure = python.run(block.text, f"{page.path}:{block.line}")
                if failure is not None:
                    raise SnippetFailed(
                        f"{block.where(page.path)} raised:\n{failure}\n--- its output:\n"
                        f"{python.log.read_text(errors='replace')[-4000:]}{shell.logs()}"
                    )
    finally:
        if python is not None:
            python.stop()
        shell.stop()


def _run_console(page: Page, block: Block, shell: Shell) -> None:
    for command in commands(block):
        where = f"{page.path}:{command.line}"
        if command.background:
            if any(line.strip() for line in command.expected):
                raise SnippetFailed(f"{where}: a background command has no output to expect")
            shell.start(command)
            continue
        status, output = shell.run(command)
        expected, exit_status = _exit_status(command.expected)
        if status != exit_status or not matches(expected, output):
            raise SnippetFailed(
                f"{where}: $ {command.command}\n"
                f"exit status {status}; expected output:\n"
                + "\n".join(command.expected)
                + f"\n--- got:\n{output}{shell.logs()}"
            )


def _exit_status(expected: list[str]) -> tuple[list[str], int]:
    """The expected output without its ``[N]`` line, and the exit status it says (else 0)."""
    kept = _trimmed(expected)
    if kept and (found := re.fullmatch(r"\[(\d+)\]", kept[-1].strip())):
        return kept[:-1], int(found[1])
    return kept, 0


@contextlib.contextmanager
def _databases(page: Page, env: dict[str, str]) -> Iterator[None]:
    """The services a page asks for: libpq's variables for the test server, and the databases
    the page creates, refused when they exist, dropped after."""
    if not page.services:
        yield
        return
    import psycopg
    from sqlalchemy.engine import make_url

    admin = os.environ.get("CELERY_DURABLE_TEST_PG", DEFAULT_ADMIN)
    url = make_url(admin)
    env.update(
        {
            "PGHOST": url.host or "127.0.0.1",
            "PGPORT": str(url.port or 5432),
            "PGUSER": url.username or "postgres",
        }
    )
    dsn = admin.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        taken = [
            name
            for name in page.databases
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        ]
    if taken:
        raise SnippetFailed(
            f"{page.path}: the page creates the databases {taken}, which exist on the test "
            f"server ({url.render_as_string(hide_password=True)}); drop them, or run elsewhere"
        )
    try:
        yield
    finally:
        time.sleep(0.1)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for name in page.databases:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
