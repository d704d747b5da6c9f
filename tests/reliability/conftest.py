"""Fixtures for the reliability tests: real redis-server / PostgreSQL (tests/services.py), a live uvicorn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.conftest import backbones_file  # noqa: F401 - pytest fixture
from tests.services import postgres_server, redis_server  # noqa: F401 - pytest fixtures
from tests.worker.dbs import database_url


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=[pytest.mark.postgres, pytest.mark.services])]
)
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated, empty database: an SQLite file (WAL + busy_timeout) or a fresh PostgreSQL database."""
    yield from database_url(request, tmp_path_factory)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
