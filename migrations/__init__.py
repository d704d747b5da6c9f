"""Alembic revisions of the service database. Run them through ``app.core.db.migrate`` (one entry point)."""
