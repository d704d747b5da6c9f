"""``/readyz`` against real components: a redis-server, a PostgreSQL cluster and the local storage folder.

Each component is broken for real (the redis-server process is stopped; the storage folder is replaced by
a plain file, since root ignores chmod; the PostgreSQL postmaster is stopped) and then repaired. ``/readyz``
must answer 503 naming exactly the broken component, then 200 again; ``/healthz`` must stay 200. The test
prints the time from fault to the first 503 and from repair to the first 200 (polled, bounded loops).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from app.core.db.migrate import upgrade
from app.core.settings import Settings
from app.main import create_app
from devstack.postgres import PostgresServer, start_postgres
from devstack.postgres import as_postgres as _as_postgres
from devstack.stack import RedisServer
from tests.reliability.live import live_server

pytestmark = [pytest.mark.services, pytest.mark.postgres]
POLLS = 200  # x 0.05 s sleep: a bound on the wait, not a latency target


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path).start()  # on a fixed port: this test stops and restarts it
    yield server
    server.close()


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    try:
        server = start_postgres()  # our own cluster: this test stops it
    except (RuntimeError, OSError, KeyError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot start PostgreSQL: {exc}")
    yield server
    server.stop()


def _pg_ctl(server: PostgresServer, action: str) -> None:
    data = server.dir / "pgdata"
    options = f"-p {server.port} -k {server.dir / 'sock'} -c listen_addresses=127.0.0.1 -c fsync=off"
    args = [str(server.bindir / "pg_ctl"), "-D", str(data), "-l", str(data / "pg.log"), "-w", "-m", "fast"]
    _as_postgres([*args, "-o", options, action] if action == "start" else [*args, action])


def _poll(base: str, want: int) -> tuple[float, dict[str, object]]:
    """Poll /readyz until it answers ``want``; checks /healthz on every round. Returns (seconds, body)."""
    start = time.monotonic()
    with httpx.Client(base_url=base, timeout=30) as client:
        for _ in range(POLLS):
            assert client.get("/healthz").status_code == 200
            response = client.get("/readyz")
            if response.status_code == want:
                return time.monotonic() - start, response.json()
            time.sleep(0.05)
    raise AssertionError(f"/readyz never answered {want} in {POLLS} polls")


def _failed(body: dict[str, object]) -> set[str]:
    checks = body["checks"]
    assert isinstance(checks, dict)
    return {name for name, check in checks.items() if not check["ok"]}


def _fault_and_repair(
    base: str, name: str, fault: Callable[[], None], repair: Callable[[], None], expect: set[str]
) -> tuple[float, float]:
    fault()
    to_503, body = _poll(base, 503)
    assert _failed(body) == expect, body
    checks = body["checks"]
    assert isinstance(checks, dict) and all(checks[c]["error"] for c in expect), body
    repair()
    to_200, body = _poll(base, 200)
    assert _failed(body) == set()
    print(f"[readyz {name}] fault->503 {to_503 * 1000:.0f} ms, repair->200 {to_200 * 1000:.0f} ms")
    return to_503, to_200


def test_readyz_names_the_failed_component_and_recovers(
    tmp_path: Path, redis: RedisServer, postgres: PostgresServer, backbones_file: Path
) -> None:
    url = postgres.create_database()
    upgrade(url)
    settings = Settings(
        environment="test",
        data_dir=tmp_path / "data",
        database_url=url,
        backbones_file=backbones_file,
        redis_url=redis.url,
    )
    app = create_app(settings, enqueue=lambda _job_id, **_: None)
    storage_root = Path(app.state.storage.root)
    aside = tmp_path / "storage-aside"

    def break_storage() -> None:
        storage_root.mkdir(parents=True, exist_ok=True)
        storage_root.rename(aside)
        storage_root.write_bytes(b"not a folder")

    def repair_storage() -> None:
        storage_root.unlink()
        aside.rename(storage_root)

    print()
    with live_server(app) as base:
        _poll(base, 200)
        _fault_and_repair(base, "broker", redis.stop, redis.start, {"broker"})
        _fault_and_repair(base, "storage", break_storage, repair_storage, {"storage"})
        _fault_and_repair(
            base,
            "database",
            lambda: _pg_ctl(postgres, "stop"),
            lambda: _pg_ctl(postgres, "start"),
            {"database", "migrations"},
        )
    app.state.engine.dispose()
