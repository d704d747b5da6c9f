"""A throwaway PostgreSQL cluster on loopback (``initdb`` + ``pg_ctl`` in a temp folder): tests, load runs.

The binaries come from ``/usr/lib/postgresql/<version>/bin`` (the newest there). When we are root the
cluster runs as the ``postgres`` user (initdb refuses root). Authentication is ``trust`` on 127.0.0.1;
``fsync`` is off: the data is disposable. The postmaster is stopped by its own pid (from
``postmaster.pid``) and the folder removed, at the latest at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from devstack.stack import free_port, wait_gone, wait_port


def pg_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb``, if any."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def as_postgres(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a command as the postgres user when we are root (initdb refuses root); raises on failure."""
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

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(sql)

    def create_database(self, name: str | None = None, template: str | None = None) -> str:
        """A fresh database (optionally a copy of ``template``); returns its SQLAlchemy URL."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[-1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def pid(self) -> int | None:
        pidfile = self.dir / "pgdata" / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError):
            return int(pidfile.read_text().splitlines()[0])
        return None

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster's own pid), then the folder goes."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
            wait_gone(pid)
        shutil.rmtree(self.dir, ignore_errors=True)


def _make_folders(folder: Path) -> tuple[Path, Path]:
    data, sock = folder / "pgdata", folder / "sock"
    data.mkdir()
    sock.mkdir()
    data.chmod(0o700)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for path in (folder, data, sock):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    return data, sock


def start_postgres() -> PostgresServer:
    """A new cluster in a temp folder on a free loopback port; raises RuntimeError, OSError, KeyError
    (no postgres user) or subprocess.CalledProcessError (its ``stderr`` says why) when it cannot start."""
    bindir = pg_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin")
    folder = Path(tempfile.mkdtemp(prefix="promptune-pg-"))
    server = PostgresServer(free_port(), folder, bindir)
    atexit.register(server.stop)
    try:
        data, sock = _make_folders(folder)
        initdb = [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"]
        as_postgres([*initdb, "--no-sync"])
        options = f"-p {server.port} -k {sock} -c listen_addresses=127.0.0.1"
        options += " -c fsync=off -c full_page_writes=off"
        pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(data / "pg.log"), "-w"]
        as_postgres([*pg_ctl, "-o", options, "start"])
        if not wait_port(server.port, 15):
            raise RuntimeError(f"PostgreSQL did not start on port {server.port}")
    except BaseException:
        server.stop()
        raise
    return server
