"""The local stack as child processes: a private redis-server, the API under uvicorn, Celery workers.

Used by ``promptune demo`` (devstack/demo.py) and the end-to-end tests. Every child runs in its own session
with its output in a log file, and is stopped by its own pid, never by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path


class Proc:
    """A child process with its output in a log file; stopped by its own pid, never by name."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name, self.log_path = name, log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        # Own session: a Ctrl-C in the terminal reaches only us, and we stop the children in order.
        self.popen = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env or os.environ),
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()


def free_port(preferred: int | None = None) -> int:
    if preferred:
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", preferred))
            return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_alive(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except Exception:  # noqa: BLE001 - anything means "not usable"
        return False


def start_redis(directory: Path) -> tuple[Proc, str]:
    """A private redis-server on a free loopback port (no persistence: the DB holds the job state)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError(
            "redis-server is not installed (apt-get install redis-server, or set PROMPTUNE_REDIS_URL)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [
        exe,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
        "--daemonize",
        "no",
    ]
    proc = Proc("redis", argv, directory / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not redis_alive(url):
        if not proc.alive() or time.monotonic() > deadline:
            proc.stop()
            raise RuntimeError(f"redis-server did not start:\n{proc.tail()}")
        time.sleep(0.05)
    return proc, url


def start_api(env: Mapping[str, str], port: int, log_dir: Path) -> Proc:
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    return Proc("api", argv, log_dir / "api.log", env)


def start_worker(
    env: Mapping[str, str], log_dir: Path, *, name: str = "worker", concurrency: int = 1
) -> Proc:
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "-Q",
        "jobs",
        f"--concurrency={concurrency}",
        "--loglevel=INFO",
        f"--hostname={name}@%h",
        "--without-mingle",
        "--without-gossip",
    ]
    return Proc(name, argv, log_dir / f"{name}.log", env)


def wait_ready(base_url: str, proc: Proc, timeout: float = 90.0) -> None:
    """Wait until ``/readyz`` answers 200 (database, broker, storage and migrations all fine)."""
    import httpx

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"the {proc.name} process exited:\n{proc.tail()}")
        try:
            response = httpx.get(f"{base_url}/readyz", timeout=5)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"the API was not ready after {timeout:.0f} s: {last}\n{proc.tail()}")
