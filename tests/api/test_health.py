"""/healthz, /readyz (each dependency, with a real redis-server) and /metrics."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import text

from app.core.db.session import get_engine
from app.core.settings import Settings
from app.main import create_app
from tests.api.helpers import image_folder_zip
from tests.services import RedisServer


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_reports_the_failing_broker(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["broker"]["ok"] is False and body["checks"]["broker"]["error"]
    assert {k: v["ok"] for k, v in body["checks"].items()} == {
        "database": True,
        "broker": False,
        "storage": True,
        "migrations": True,
    }


def test_readyz_ok_with_real_redis(settings: Settings, redis_server: RedisServer) -> None:
    app = create_app(
        settings.model_copy(update={"redis_url": redis_server.url}), enqueue=lambda _job_id, **_: None
    )
    with TestClient(app) as client:
        response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"
    assert not any((settings.data_dir / "storage" / "health").glob("*"))  # the probe object was deleted


def test_readyz_detects_migrations_behind(
    settings: Settings, redis_server: RedisServer, database_url: str
) -> None:
    with get_engine(database_url).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'old'"))
    app = create_app(
        settings.model_copy(update={"redis_url": redis_server.url}), enqueue=lambda _job_id, **_: None
    )
    with TestClient(app) as client:
        body = client.get("/readyz").json()
    assert body["checks"]["migrations"]["ok"] is False and "old" in body["checks"]["migrations"]["error"]


def test_metrics(client: TestClient, headers_a: dict[str, str]) -> None:
    dataset = client.post(
        "/v1/datasets", headers=headers_a, files={"file": ("d.zip", image_folder_zip())}
    ).json()
    client.post(
        "/v1/jobs",
        headers=headers_a,
        json={"method": "spt", "backbone": "tiny-vit", "dataset_id": dataset["id"]},
    )
    client.get("/v1/datasets/nope", headers=headers_a)
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    body = response.text
    assert 'promptune_http_requests_total{method="POST",route="/v1/datasets",status="201"} 1.0' in body
    assert (
        'promptune_http_requests_total{method="GET",route="/v1/datasets/{dataset_id}",status="404"} 1.0'
        in body
    )
    assert 'promptune_http_request_duration_seconds_count{method="POST",route="/v1/jobs"} 1.0' in body
    assert 'promptune_jobs{status="queued"} 1.0' in body and 'promptune_jobs{status="running"} 0.0' in body
