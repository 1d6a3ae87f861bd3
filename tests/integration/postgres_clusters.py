"""Two PostgreSQL clusters of a test's own: a primary and a synchronous standby to fail over to.

Both run from the installed server binaries, on free loopback ports, in a temporary directory
owned by an unprivileged user (PostgreSQL refuses to run as root, and pytest's own temporary
directories are private to the user running the tests). The standby is a ``pg_basebackup -R``
of the primary, which waits for it on every commit (``synchronous_standby_names``): a commit
the primary acknowledges is on the standby too, so promoting it loses nothing a client was
told committed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

SERVER_USER = "postgres"
NEEDED = ("initdb", "pg_basebackup", "postgres")
READY_TIMEOUT = 30.0
# A test cluster need not survive the machine: fsync off only skips flushing the OS's cache,
# which a killed PostgreSQL process leaves intact.
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "fsync": "off",
    "max_connections": "200",
    "wal_level": "replica",
    "max_wal_senders": "4",
}


def server_binaries() -> Path | None:
    """The directory of ``initdb``, ``pg_basebackup`` and ``postgres``: ``pg_config``'s,
    else the newest ``/usr/lib/postgresql/*/bin``; None when none has them all."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, check=True)
            candidates.append(Path(out.stdout.decode().strip()))
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=lambda p: _version(p.parent.name), reverse=True)
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in NEEDED):
            return bindir
    return None


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Runner:
    """Runs the server's programs as ``SERVER_USER`` when this process is root (through
    ``setpriv``, which execs: the process started is the program itself), else as is."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.prefix: list[str] = []
        self.owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise RuntimeError(
                    f"PostgreSQL refuses to run as root and there is no {SERVER_USER!r} user "
                    f"to run it as: create one (useradd --system {SERVER_USER}), or run the "
                    "tests as an unprivileged user"
                ) from None
            self.owner = (user.pw_uid, user.pw_gid)
            self.prefix = [
                "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
            ]  # fmt: skip

    def command(self, program: str, *args: str) -> list[str]:
        return [*self.prefix, str(self.bindir / program), *args]

    def run(self, program: str, *args: str, cwd: Path) -> None:
        done = subprocess.run(self.command(program, *args), cwd=cwd, capture_output=True)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise RuntimeError(f"{program} {' '.join(args)} failed:\n{output}")

    def own(self, path: Path) -> None:
        if self.owner is not None:
            os.chown(path, *self.owner)


@dataclass
class Cluster:
    """One running ``postgres`` (the postmaster, started by this process) and its data."""

    name: str
    port: int
    data: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={SERVER_USER} dbname={dbname}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if not self.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not start:\n{self.output()}") from None
                time.sleep(0.05)

    def execute(self, sql: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(sql.encode())
            return cursor.fetchall() if cursor.description else []

    def crash(self) -> None:
        """SIGKILL the postmaster and every process it started, as a machine loss does: no
        shutdown, no word to the clients, whose sockets the kernel then closes."""
        if not self.alive():
            return
        os.kill(self.proc.pid, signal.SIGSTOP)  # forks nothing more while its children die
        for pid in (*_children(self.proc.pid), self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """An immediate shutdown (SIGQUIT), then whatever is left is killed."""
        if self.alive():
            self.proc.send_signal(signal.SIGQUIT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        self.crash()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after it.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


@dataclass
class Pair:
    """A primary and its synchronous standby, and the database a test uses on them."""

    primary: Cluster
    standby: Cluster
    dbname: str

    def url(self) -> str:
        """A SQLAlchemy URL naming both servers, the primary first, that only connects to the
        one accepting writes (libpq's ``target_session_attrs=read-write``).

        The hosts go as libpq's comma-separated ``host`` and ``port`` lists in the query:
        SQLAlchemy refuses libpq's ``user@h1:p1,h2:p2/db`` (it reads one port), and its own
        multi-host form (``?host=h1:p1&host=h2:p2``) is rewritten for the driver on the way
        to a pool but not where the URL is handed to libpq as a string.
        """
        ports = f"{self.primary.port},{self.standby.port}"
        return (
            f"postgresql+psycopg://{SERVER_USER}@/{self.dbname}"
            f"?host=127.0.0.1,127.0.0.1&port={ports}&target_session_attrs=read-write"
        )

    def promote(self) -> None:
        """Make the standby the primary, and wait until it accepts writes."""
        self.standby.execute("SELECT pg_promote(wait => true, wait_seconds => 30)")


def _start(runner: Runner, name: str, data: Path, settings: dict[str, str]) -> Cluster:
    port = free_port()
    options = {**SETTINGS, **settings, "port": str(port)}
    args: list[str] = ["-D", str(data)]
    for key, value in options.items():
        args += ["-c", f"{key}={value}"]
    log = data.parent / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            runner.command("postgres", *args), cwd=data, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    cluster = Cluster(name, port, data, proc, log)
    try:
        cluster.wait_ready()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_synchronous(primary: Cluster, timeout: float = READY_TIMEOUT) -> None:
    """Until the primary streams to the standby synchronously."""
    deadline = time.monotonic() + timeout
    query = "SELECT sync_state FROM pg_stat_replication"
    while primary.execute(query) != [("sync",)]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the standby never became synchronous:\n{primary.output()}")
        time.sleep(0.05)


@contextmanager
def primary_and_standby(bindir: Path, dbname: str = "durable") -> Iterator[Pair]:
    """Start a primary, a synchronous standby of it and an empty database ``dbname``; stop
    both and delete their files at exit."""
    runner = Runner(bindir)
    root = Path(tempfile.mkdtemp(prefix="durable-failover-"))
    runner.own(root)
    started: list[Cluster] = []
    try:
        primary_data, standby_data = root / "primary", root / "standby"
        runner.run(
            "initdb", "-D", str(primary_data), "-U", SERVER_USER, "--auth=trust", "-N", cwd=root
        )
        # Synchronous replication is the primary's setting only: once promoted, the standby
        # commits without waiting for a standby of its own.
        sync = {"synchronous_standby_names": "*"}
        started.append(_start(runner, "primary", primary_data, sync))
        primary = started[0]
        runner.run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", SERVER_USER,
            "-D", str(standby_data), "-R", "-X", "stream", "-c", "fast", cwd=root,
        )  # fmt: skip
        started.append(_start(runner, "standby", standby_data, {"synchronous_standby_names": ""}))
        _wait_synchronous(primary)
        primary.execute(f'CREATE DATABASE "{dbname}"')
        yield Pair(primary, started[1], dbname)
    finally:
        for cluster in reversed(started):
            with contextlib.suppress(Exception):
                cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
