"""Two guards on tuned models (issue 6's known holes), on SQLite and PostgreSQL.

- A checkpoint is verified (sha256, then its header) before the backbone it needs is loaded, so a tampered
  or torn file costs no backbone load and is refused with 409.
- A model that a queued or running job names in ``config.init_from`` cannot be deleted: 409
  ``model_in_use``, and neither the row nor the stored file goes away. Once the job is finished it can.
"""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi.testclient import TestClient

from app.core.db import repo
from app.core.db.session import session_scope
from app.core.db.tables import TunedModel
from app.core.settings import Settings
from tests.api.test_datasets import assert_error
from tests.api.test_models import add_model, backbones_file, image_files, zoo  # noqa: F401 - fixtures
from worker.state import JobStore


def _stored(settings: Settings, database_url: str, model_id: str) -> tuple[Any, str]:
    with session_scope(database_url) as session:
        row = session.get(TunedModel, model_id)
        assert row is not None
        return settings.data_dir / "storage" / row.checkpoint_key, row.checkpoint_sha256


def _set_sha(database_url: str, model_id: str, sha: str) -> None:
    with session_scope(database_url) as session:
        row = session.get(TunedModel, model_id)
        assert row is not None
        row.checkpoint_sha256 = sha


def test_checkpoint_is_verified_before_the_backbone_loads(
    app: Any,
    client: TestClient,
    headers_a: dict[str, str],
    settings: Settings,
    database_url: str,
    zoo: dict[str, Any],  # noqa: F811 - fixture
) -> None:
    model_id = add_model(settings, database_url, "tenant-a", "spt", zoo)
    path, sha = _stored(settings, database_url, model_id)
    good = path.read_bytes()
    predict_url, files = f"/v1/models/{model_id}/predict", image_files((200, 10, 10))
    backbones = app.state.inference.backbones

    tampered = bytearray(good)
    tampered[len(good) // 2] ^= 0x01  # same size, one bit
    path.write_bytes(bytes(tampered))
    assert_error(client.post(predict_url, headers=headers_a, files=files), 409, "checksum_mismatch")
    assert_error(client.get(f"/v1/models/{model_id}/checkpoint", headers=headers_a), 409, "checksum_mismatch")
    assert (backbones.misses, len(backbones)) == (0, 0)  # the backbone was never loaded

    torn = good[: len(good) - 7]  # a torn write whose sha256 the row records: the header check refuses it
    path.write_bytes(torn)
    _set_sha(database_url, model_id, hashlib.sha256(torn).hexdigest())
    assert_error(client.post(predict_url, headers=headers_a, files=files), 409, "invalid_checkpoint")
    assert (backbones.misses, len(backbones)) == (0, 0)

    path.write_bytes(good)
    _set_sha(database_url, model_id, sha)
    assert client.post(predict_url, headers=headers_a, files=files).status_code == 200
    assert (backbones.misses, len(backbones)) == (1, 1)


def _rpp_job(client: TestClient, headers: dict[str, str], database_url: str, model_id: str) -> str:
    with session_scope(database_url) as session:
        tenant = repo.get_tenant_by_name(session=session, name="tenant-a")
        assert tenant is not None
        dataset = repo.create_dataset(
            session=session, tenant_id=tenant.id, name="d", storage_key="datasets/x/y"
        )
        dataset_id = dataset.id
    body = {
        "method": "rpp",
        "backbone": "disk-clip",
        "dataset_id": dataset_id,
        "config": {"epochs": 1, "init_from": model_id},
    }
    response = client.post("/v1/jobs", headers=headers, json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_model_named_by_an_active_job_cannot_be_deleted(
    client: TestClient,
    headers_a: dict[str, str],
    settings: Settings,
    database_url: str,
    zoo: dict[str, Any],  # noqa: F811 - fixture
) -> None:
    model_id = add_model(settings, database_url, "tenant-a", "rpp", zoo)
    other_id = add_model(settings, database_url, "tenant-a", "rpp", zoo)
    path, _ = _stored(settings, database_url, model_id)
    job_id = _rpp_job(client, headers_a, database_url, model_id)
    url = f"/v1/models/{model_id}"

    error = assert_error(client.delete(url, headers=headers_a), 409, "model_in_use")  # queued
    assert error["param"] == "model_id"
    store = JobStore(database_url)
    claim = store.claim(job_id, owner="test-worker", lease_seconds=60)
    assert claim.lease is not None  # running now
    assert_error(client.delete(url, headers=headers_a), 409, "model_in_use")
    assert client.get(url, headers=headers_a).status_code == 200 and path.is_file()  # nothing deleted

    assert client.delete(f"/v1/models/{other_id}", headers=headers_a).status_code == 204  # not named: free
    assert store.finish(claim.lease, "cancelled", "cancelled_by_user", "test")
    assert client.delete(url, headers=headers_a).status_code == 204  # the job is over
    assert not path.exists()
    assert_error(client.get(url, headers=headers_a), 404, "not_found")
