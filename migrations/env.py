"""Alembic environment: the URL comes from app.core.settings (or an explicit sqlalchemy.url override).

render_as_batch makes ALTER TABLE work on SQLite (move-and-copy); compare_type catches column type drift.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from app.core.db.tables import Base
from app.core.settings import get_settings

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        compare_type=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    url = _url()
    if url.startswith("sqlite"):
        from app.core.db.session import make_engine

        engine = make_engine(url)  # creates the parent folder and applies the SQLite pragmas
    else:
        engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
