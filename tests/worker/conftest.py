"""Fixtures for the worker tests: a migrated database (SQLite file or a real PostgreSQL) and job rows."""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.db.session import session_scope
from app.core.db.tables import Dataset, Job, Tenant
from app.core.storage import Storage
from devstack.sample_data import CLASS_NAMES
from tests.services import postgres_server, redis_server  # noqa: F401 - pytest fixtures
from tests.worker.dbs import database_url


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=[pytest.mark.postgres, pytest.mark.services])]
)
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from database_url(request, tmp_path_factory)


_names = itertools.count()


@pytest.fixture
def tenant_id(db_url: str) -> str:
    with session_scope(db_url) as s:
        tenant = Tenant(name=f"tenant-{next(_names)}")
        s.add(tenant)
        s.flush()
        return tenant.id


@pytest.fixture
def make_job(db_url: str, tenant_id: str) -> Callable[..., str]:
    def make(**values: Any) -> str:
        fields: dict[str, Any] = {
            "tenant_id": tenant_id,
            "method": "spt",
            "backbone": "tiny-vit",
            "config": {},
            "max_attempts": 3,
        }
        fields.update(values)
        with session_scope(db_url) as s:
            job = Job(**fields)
            s.add(job)
            s.flush()
            return job.id

    return make


@pytest.fixture
def make_dataset(db_url: str, tenant_id: str) -> Callable[..., str]:
    def make(storage_key: str, classes: list[str], **values: Any) -> str:
        with session_scope(db_url) as s:
            row = Dataset(
                tenant_id=tenant_id,
                name="d",
                storage_key=storage_key,
                classes=classes,
                num_classes=len(classes),
                **values,
            )
            s.add(row)
            s.flush()
            return row.id

    return make


def job_row(db_url: str, job_id: str) -> Job:
    with session_scope(db_url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo backbones (seeded random tiny ViT + CLIP written to disk with sha256) and their registry."""
    from devstack.backbones import ensure_demo_backbones

    return ensure_demo_backbones(tmp_path_factory.mktemp("zoo"))


def write_digits_dataset(
    storage: Storage, prefix: str, *, per_class: int, classes: int = 10, corrupt: bool = False
) -> list[str]:
    """The canonical stored layout (images/<n>.png + manifest.jsonl) of a digits subset; returns the classes."""
    from devstack.sample_data import digit_images

    items = [d for d in digit_images(per_class=per_class) if d.label in CLASS_NAMES[:classes]]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "dataset"  # put_dir may move this folder into the storage
        (root / "images").mkdir(parents=True)
        lines = []
        for n, item in enumerate(items):
            (root / "images" / f"{n}.png").write_bytes(b"not a png" if corrupt else item.png)
            lines.append(json.dumps({"path": f"images/{n}.png", "label": item.label, "split": item.split}))
        (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
        storage.put_dir(prefix, root)
    return sorted({item.label for item in items})
