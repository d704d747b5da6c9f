"""Real throwaway services for tests: redis-server and a PostgreSQL cluster as subprocesses on loopback.

Each service gets a free port and a temp folder, and is stopped by its own PID at the end of the test
session (and at interpreter exit). PostgreSQL runs as the ``postgres`` user (root cannot run initdb), via
``initdb``/``pg_ctl`` from ``/usr/lib/postgresql/<version>/bin``. Tests needing a service that cannot be
started here are skipped with the reason. No mocks.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
        time.sleep(0.02)
    return False


@dataclass
class RedisServer:
    port: int
    pid: int
    dir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        _wait_gone(self.pid)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_redis() -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    folder = Path(tempfile.mkdtemp(prefix="promptune-redis-"))
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
            "--logfile",
            str(folder / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if not _wait_port(port, 10):
        proc.kill()
        raise RuntimeError(f"redis-server did not start on port {port}")
    server = RedisServer(port, proc.pid, folder)
    atexit.register(server.stop)
    return server


def _pg_bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _as_postgres(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a command as the postgres user when we are root (initdb refuses root)."""
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        return subprocess.run(
            args, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], capture_output=True, text=True, check=True
        )
    return subprocess.run(args, capture_output=True, text=True, check=True)


@dataclass
class PostgresServer:
    port: int
    dir: Path
    bindir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None, template: str | None = None) -> str:
        """A fresh database (optionally a copy of ``template``); returns its SQLAlchemy URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        sql = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(sql)
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[-1]
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def pid(self) -> int | None:
        pidfile = self.dir / "pgdata" / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError):
            return int(pidfile.read_text().splitlines()[0])
        return None

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)  # fast shutdown
            _wait_gone(pid)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_postgres() -> PostgresServer:
    bindir = _pg_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin")
    folder = Path(tempfile.mkdtemp(prefix="promptune-pg-"))
    data, sock = folder / "pgdata", folder / "sock"
    data.mkdir()
    sock.mkdir()
    data.chmod(0o700)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for path in (folder, data, sock):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    port = free_port()
    _as_postgres(
        [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]
    )
    options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    _as_postgres(
        [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(data / "pg.log"), "-w", "-o", options, "start"]
    )
    server = PostgresServer(port, folder, bindir)
    atexit.register(server.stop)
    if not _wait_port(port, 15):
        server.stop()
        raise RuntimeError(f"PostgreSQL did not start on port {port}")
    return server


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# ---- pytest fixtures (import them in a conftest.py: `from tests.services import redis_server, postgres_server`)
@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    try:
        server = start_redis()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"cannot start redis-server: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = start_postgres()
    except (RuntimeError, OSError, KeyError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        pytest.skip(f"cannot start PostgreSQL: {exc} {detail}".strip())
    yield server
    server.stop()
