"""Security tests reuse the API fixtures (tests/api/conftest.py): a migrated database, an app, keys."""

from __future__ import annotations

from tests.api.conftest import (  # noqa: F401 - fixtures
    app,
    backbones_file,
    client,
    database_url,
    enqueued,
    headers_a,
    headers_b,
    key_a,
    key_b,
    migrated_postgres,
    migrated_sqlite_template,
    settings,
)
from tests.services import postgres_server, redis_server  # noqa: F401 - fixtures
