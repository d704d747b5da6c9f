"""API test fixtures: a migrated database (SQLite, and PostgreSQL from tests/services.py), an app, keys.

Every API test runs on both databases: ``database_url`` is parametrised over sqlite and postgresql
(the latter marked ``postgres``; it is skipped only if no PostgreSQL server can be started here).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.core.db.migrate import upgrade
from app.core.db.session import get_engine
from app.core.db.tables import Base
from app.core.settings import Settings
from app.main import create_app
from tests.api.helpers import auth, create_key
from tests.services import PostgresServer, postgres_server, redis_server  # noqa: F401 - fixtures
from tests.tiny import TINY_CLIP_CONFIG


@pytest.fixture(scope="session")
def migrated_postgres(request: pytest.FixtureRequest) -> str:
    """One PostgreSQL database migrated once per session; tests empty its tables before they run."""
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database()
    upgrade(url)
    return url


def _truncate_all(url: str) -> None:
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with get_engine(url).begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture(scope="session")
def migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite file migrated once; each test gets a copy."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    get_engine(url).dispose()  # closes the last connection: the WAL is checkpointed into the file
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database at the Alembic head: a fresh SQLite file, or the session's PostgreSQL database, emptied."""
    if request.param == "sqlite":
        path = tmp_path / "api.db"
        shutil.copyfile(request.getfixturevalue("migrated_sqlite_template"), path)
        url = f"sqlite:///{path}"
        yield url
        get_engine(url).dispose()
    else:
        url = request.getfixturevalue("migrated_postgres")
        _truncate_all(url)
        yield url


@pytest.fixture
def backbones_file(tmp_path: Path) -> Path:
    path = tmp_path / "backbones.json"
    path.write_text(
        json.dumps(
            {
                "tiny-vit": {
                    "family": "timm",
                    "arch": "vit_tiny_patch16_224",
                    "weights": "random",
                    "kind": "supervised",
                    "model_kwargs": {
                        "img_size": 32,
                        "patch_size": 8,
                        "embed_dim": 64,
                        "depth": 2,
                        "num_heads": 2,
                    },
                },
                "tiny-clip": {
                    "family": "open_clip",
                    "arch": "promptune-test-tiny-clip",
                    "weights": "random",
                    "kind": "clip",
                    "model_config": TINY_CLIP_CONFIG,
                },
                "missing-vit": {
                    "family": "timm",
                    "arch": "vit_tiny_patch16_224",
                    "weights": str(tmp_path / "nowhere.safetensors"),
                    "kind": "supervised",
                },
            }
        )
    )
    return path


@pytest.fixture
def settings(tmp_path: Path, database_url: str, backbones_file: Path) -> Settings:
    return Settings(
        environment="test",
        data_dir=tmp_path / "data",
        database_url=database_url,
        backbones_file=backbones_file,
        redis_url="redis://127.0.0.1:9/0",  # nothing listens: the broker check must fail cleanly
        max_upload_bytes=2 * 1024 * 1024,
        max_member_bytes=1024 * 1024,
        max_uncompressed_bytes=8 * 1024 * 1024,
        max_archive_members=200,
        max_image_pixels=512 * 512,
        max_predict_images=4,
        max_concurrent_jobs_per_tenant=5,
    )


@pytest.fixture
def enqueued() -> list[str]:
    return []


@pytest.fixture
def app(settings: Settings, enqueued: list[str]):
    return create_app(settings, enqueue=lambda job_id, **_: enqueued.append(job_id))


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def key_a(database_url: str) -> str:
    return create_key(database_url, "tenant-a")


@pytest.fixture
def key_b(database_url: str) -> str:
    return create_key(database_url, "tenant-b")


@pytest.fixture
def headers_a(key_a: str) -> dict[str, str]:
    return auth(key_a)


@pytest.fixture
def headers_b(key_b: str) -> dict[str, str]:
    return auth(key_b)
