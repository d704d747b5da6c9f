"""The local stack as child processes: a private redis-server, the API under uvicorn, Celery workers.

The one home of process launching for ``promptune demo`` (devstack/demo.py) and the tests
(tests/services.py, tests/e2e, tests/chaos, tests/reliability); PostgreSQL clusters are in
devstack/postgres.py. Every child runs in its own session with its output in a log file, listens on
127.0.0.1 only, and is stopped by its own pid (or its own process group), never by name.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
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

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Signal the child and everything it started (its own session, so its own process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()


def stop_all(procs: Iterable[Proc], timeout: float = 15.0) -> None:
    """SIGTERM every live one first (their shutdowns overlap), then wait for each in turn."""
    procs = list(procs)
    for proc in procs:
        if proc.alive():
            proc.popen.terminate()
    for proc in procs:
        proc.stop(timeout)


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if it is free on 127.0.0.1, else a free port the system picks."""
    if preferred:
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", preferred))
            return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
        time.sleep(0.02)
    return False


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Wait for process ``pid`` to exit (reaping it if it is our child); SIGKILL it after ``timeout``."""
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


def redis_alive(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except Exception:  # noqa: BLE001 - anything means "not usable"
        return False


def _redis_pid(url: str) -> int | None:
    """The process id the Redis at ``url`` reports, or None if it does not answer."""
    import redis

    try:
        info = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).info("server")
        return int(info["process_id"])
    except Exception:  # noqa: BLE001 - anything means "not ours, not yet"
        return None


class RedisServer:
    """A private redis-server on a fixed loopback port, with its folder and log in ``directory``.

    It can be stopped and started again on the same port. No persistence (``--save ""``,
    ``--appendonly no``): the database holds the job state, and a restart empties every queue (the worst
    case for a broker restart). ``temporary``: :meth:`close` also deletes ``directory``.
    """

    def __init__(self, directory: Path, port: int | None = None, *, temporary: bool = False) -> None:
        self.directory, self.port, self.temporary = directory, port or free_port(), temporary
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 10.0) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError(
                "redis-server is not installed (apt-get install redis-server, or set PROMPTUNE_REDIS_URL)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.directory), "--daemonize", "no"]
        self.proc = proc = Proc("redis", argv, self.directory / "redis.log")
        deadline = time.monotonic() + timeout
        while _redis_pid(self.url) != proc.pid:  # ours, not another server that holds the port
            if not proc.alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{proc.tail()}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Stop the server by its own pid (SIGTERM, then SIGKILL after 10 s); it can be started again."""
        if self.proc is not None:
            self.proc.stop(timeout=10)
            self.proc = None

    def close(self) -> None:
        """Stop for good; a temporary server's folder goes too."""
        self.stop()
        if self.temporary:
            shutil.rmtree(self.directory, ignore_errors=True)


def start_redis(directory: Path) -> tuple[Proc, str]:
    """A private redis-server on a free loopback port, its log in ``directory``; (process, URL)."""
    server = RedisServer(directory).start()
    assert server.proc is not None
    return server.proc, server.url


def temporary_redis() -> RedisServer:
    """A private redis-server in a new temp folder, closed (and the folder removed) at exit at the latest."""
    server = RedisServer(Path(tempfile.mkdtemp(prefix="promptune-redis-")), temporary=True)
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    atexit.register(server.close)
    return server


def start_api(
    env: Mapping[str, str],
    port: int,
    log_dir: Path,
    *,
    workers: int = 1,
    cwd: Path | None = None,
) -> Proc:
    """``uvicorn app.main:app`` on 127.0.0.1:``port`` with ``workers`` worker processes; log ``api.log``."""
    argv = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--workers", str(workers), "--log-level", "warning"]
    return Proc("api", argv, log_dir / "api.log", env, cwd)


def start_worker(
    env: Mapping[str, str],
    log_dir: Path,
    *,
    name: str = "worker",
    concurrency: int = 1,
    cwd: Path | None = None,
) -> Proc:
    """A Celery worker consuming the queues of the world sizes it hosts (``PROMPTUNE_WORKER_DEVICES`` in
    ``env``, default 1: the ``jobs`` queue); log ``<name>.log``."""
    from app.core.queue import worker_queues

    queues = ",".join(worker_queues(int(env.get("PROMPTUNE_WORKER_DEVICES", "1"))))
    argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", queues]
    argv += [f"--concurrency={concurrency}", "--loglevel=INFO", f"--hostname={name}@%h"]
    argv += ["--without-mingle", "--without-gossip"]
    return Proc(name, argv, log_dir / f"{name}.log", env, cwd)


def wait_ready(base_url: str, proc: Proc, timeout: float = 90.0, *, path: str = "/readyz") -> None:
    """Wait until ``path`` answers 200: ``/readyz`` (database, broker, storage and migrations all fine) or
    ``/healthz`` (the process serves). Fails early if ``proc`` exits."""
    import httpx

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"the {proc.name} process exited:\n{proc.tail()}")
        try:
            response = httpx.get(f"{base_url}{path}", timeout=5)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{base_url}{path} did not answer 200 after {timeout:.0f} s: {last}\n{proc.tail()}")
