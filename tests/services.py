"""pytest fixtures for real throwaway services: a redis-server and a PostgreSQL cluster on loopback.

The launchers live in devstack/ (devstack/stack.py, devstack/postgres.py): each service gets a free port
and a temp folder and is stopped by its own pid at the end of the test session (and at interpreter exit).
A test needing a service that cannot be started here is skipped with the reason. No mocks.

Import the fixtures in a conftest.py: ``from tests.services import postgres_server, redis_server``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from devstack.postgres import PostgresServer, start_postgres
from devstack.stack import RedisServer, free_port, temporary_redis

# Re-exported for the test modules and scripts that import them from here.
__all__ = ["PostgresServer", "RedisServer", "free_port", "postgres_server", "redis_server", "start_postgres"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    try:
        server = temporary_redis()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"cannot start redis-server: {exc}")
    yield server
    server.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = start_postgres()
    except (RuntimeError, OSError, KeyError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        pytest.skip(f"cannot start PostgreSQL: {exc} {detail}".strip())
    yield server
    server.stop()
