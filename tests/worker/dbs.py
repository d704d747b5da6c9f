"""Throwaway databases for the worker and e2e tests, built with the project's migrations."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.core.db.migrate import upgrade
from app.core.db.session import get_engine


def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated, empty database: an SQLite file, or a fresh database on the session's PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'promptune.db'}"
    else:
        url = request.getfixturevalue("postgres_server").create_database()
    upgrade(url)
    yield url
    get_engine(url).dispose()  # the cluster itself is dropped at the end of the session
