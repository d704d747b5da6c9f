"""Alembic: upgrade head / downgrade base / upgrade again on SQLite and PostgreSQL; no drift from the tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app.core.db.migrate import current_revision, downgrade, head_revision, upgrade
from app.core.db.session import get_engine
from app.core.db.tables import Base
from tests.services import PostgresServer, postgres_server  # noqa: F401 - fixture

TABLES = {"tenants", "api_keys", "datasets", "jobs", "job_events", "tuned_models"}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


def test_upgrade_downgrade_roundtrip(empty_url: str) -> None:
    engine = get_engine(empty_url)
    upgrade(empty_url)
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
    assert TABLES <= set(inspect(engine).get_table_names())

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == [], diff  # the migration creates exactly what app/core/db/tables.py declares

    downgrade(empty_url, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(empty_url)
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
    engine.dispose()


def test_alembic_cli_config_points_at_the_package() -> None:
    ini = Path(__file__).resolve().parents[2] / "alembic.ini"
    assert "script_location = %(here)s/migrations" in ini.read_text()
