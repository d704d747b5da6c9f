"""Jobs: create (config validation, idempotency incl. concurrency), list/get, cancel, events + SSE."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.db import repo
from app.core.db.session import session_scope
from app.core.db.tables import Job
from tests.api.helpers import image_folder_zip
from tests.api.test_datasets import assert_error


@pytest.fixture
def dataset_id(client: TestClient, headers_a: dict[str, str]) -> str:
    response = client.post("/v1/datasets", headers=headers_a, files={"file": ("d.zip", image_folder_zip())})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def spt_job(dataset_id: str, **config: Any) -> dict[str, Any]:
    return {
        "method": "spt",
        "backbone": "tiny-vit",
        "dataset_id": dataset_id,
        "config": {
            "epochs": 2,
            "batch_size": 4,
            "lr": 0.01,
            "mode": "deep",
            "num_prompts": 2,
            "init": "random",
            **config,
        },
        "seed": 7,
        "metadata": {"note": "test"},
    }


def set_status(database_url: str, job_id: str, status: str) -> None:
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status = status


def test_create_get_list(
    client: TestClient, headers_a: dict[str, str], dataset_id: str, enqueued: list[str]
) -> None:
    response = client.post("/v1/jobs", headers=headers_a, json=spt_job(dataset_id))
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued" and job["progress"] == 0.0 and job["error"] is None
    assert job["seed"] == 7 and job["metadata"] == {"note": "test"} and job["attempts"] == 0
    assert job["config"]["num_prompts"] == 2 and job["model_id"] is None
    assert "tenant_id" not in job and "idempotency_key" not in job and "lease_owner" not in job
    assert enqueued == [job["id"]]
    assert client.get(f"/v1/jobs/{job['id']}", headers=headers_a).json() == job
    assert [j["id"] for j in client.get("/v1/jobs", headers=headers_a).json()["data"]] == [job["id"]]
    assert client.get("/v1/jobs", params={"status": "running"}, headers=headers_a).json()["data"] == []
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=headers_a).json()["data"]
    assert [e["type"] for e in events] == ["status"] and events[0]["data"] == {"status": "queued"}


def test_rpp_job(client: TestClient, headers_a: dict[str, str], dataset_id: str) -> None:
    body = {
        "method": "rpp",
        "backbone": "tiny-clip",
        "dataset_id": dataset_id,
        "config": {
            "epochs": 1,
            "design": "qkv",
            "n_ctx": 2,
            "depth": 1,
            "num_sampled_classes": 2,
            "kd_weight": 0.5,
            "kd_temperature": 2.0,
            "teacher": "tiny-clip",
        },
    }
    response = client.post("/v1/jobs", headers=headers_a, json=body)
    assert response.status_code == 201, response.text


def test_broker_down_keeps_job_queued(
    app, client: TestClient, headers_a: dict[str, str], dataset_id: str
) -> None:
    def broken(job_id: str, **_: object) -> None:
        raise ConnectionError("broker down")

    app.state.enqueue = broken
    response = client.post("/v1/jobs", headers=headers_a, json=spt_job(dataset_id))
    assert response.status_code == 201 and response.json()["status"] == "queued"


@pytest.mark.parametrize(
    ("change", "status", "code", "param"),
    [
        ({"backbone": "no-such-backbone"}, 422, "unknown_backbone", "backbone"),
        ({"backbone": "tiny-clip"}, 422, "invalid_backbone", "backbone"),
        ({"config": {"epochs": 1, "bogus": 1}}, 422, "invalid_config", "config.bogus"),
        ({"config": {"epochs": 0}}, 422, "invalid_config", "config.epochs"),
        ({"config": {"epochs": 100000}}, 422, "invalid_config", "config.epochs"),
        ({"config": {"mode": "sideways"}}, 422, "invalid_config", "config.mode"),
        ({"config": {"init": "zeros"}}, 422, "invalid_config", "config.init"),
        ({"config": {"design": "qkv"}}, 422, "invalid_config", "config.design"),
        ({"config": {"lr": -1}}, 422, "invalid_config", "config.lr"),
        ({"config": {"val_fraction": 2}}, 422, "invalid_config", "config.val_fraction"),
        ({"dataset_id": "00000000-0000-0000-0000-000000000000"}, 404, "not_found", "dataset_id"),
        ({"method": "lora"}, 422, "invalid_request", "method"),
        ({"tenant_id": "x"}, 422, "invalid_request", "tenant_id"),
        ({"status": "succeeded"}, 422, "invalid_request", "status"),
        ({"attempts": 0}, 422, "invalid_request", "attempts"),
    ],
)
def test_create_refusals(
    client: TestClient,
    headers_a: dict[str, str],
    dataset_id: str,
    change: dict[str, Any],
    status: int,
    code: str,
    param: str,
) -> None:
    body = {**spt_job(dataset_id), **change}
    error = assert_error(client.post("/v1/jobs", headers=headers_a, json=body), status, code)
    assert error["param"] == param
    if code == "unknown_backbone":
        assert "tiny-vit" in error["message"] and "tiny-clip" in error["message"]
    assert client.get("/v1/jobs", headers=headers_a).json()["data"] == []


@pytest.mark.parametrize(
    ("config", "code", "param"),
    [
        ({"design": "diagonal"}, "invalid_config", "config.design"),
        ({"n_ctx": -1}, "invalid_config", "config.n_ctx"),
        ({"kd_temperature": 0}, "invalid_config", "config.kd_temperature"),
        ({"teacher": "nope"}, "unknown_backbone", "config.teacher"),
        ({"teacher": "tiny-vit"}, "invalid_config", "config.teacher"),
        ({"mode": "deep"}, "invalid_config", "config.mode"),
        ({"init_from": "00000000-0000-0000-0000-000000000000"}, "not_found", "config.init_from"),
    ],
)
def test_rpp_config_refusals(
    client: TestClient,
    headers_a: dict[str, str],
    dataset_id: str,
    config: dict[str, Any],
    code: str,
    param: str,
) -> None:
    body = {"method": "rpp", "backbone": "tiny-clip", "dataset_id": dataset_id, "config": config}
    error = assert_error(
        client.post("/v1/jobs", headers=headers_a, json=body), 404 if code == "not_found" else 422, code
    )
    assert error["param"] == param


def test_idempotency(
    client: TestClient, headers_a: dict[str, str], dataset_id: str, enqueued: list[str]
) -> None:
    headers = {**headers_a, "Idempotency-Key": "abc-123"}
    first = client.post("/v1/jobs", headers=headers, json=spt_job(dataset_id))
    again = client.post("/v1/jobs", headers=headers, json=spt_job(dataset_id))
    assert first.status_code == 201 and again.status_code == 200
    assert again.json() == first.json()
    assert enqueued == [first.json()["id"]]
    conflict = client.post("/v1/jobs", headers=headers, json=spt_job(dataset_id, epochs=3))
    assert_error(conflict, 409, "idempotency_conflict")
    assert len(client.get("/v1/jobs", headers=headers_a).json()["data"]) == 1


def test_idempotency_key_is_per_tenant(
    client: TestClient, headers_a: dict[str, str], headers_b: dict[str, str], dataset_id: str
) -> None:
    client.post("/v1/jobs", headers={**headers_a, "Idempotency-Key": "k"}, json=spt_job(dataset_id))
    # Tenant B cannot see A's dataset: its identical request is a 404, not A's job.
    response = client.post(
        "/v1/jobs", headers={**headers_b, "Idempotency-Key": "k"}, json=spt_job(dataset_id)
    )
    assert_error(response, 404, "not_found")


def test_concurrent_idempotent_creates_yield_one_job(
    client: TestClient, headers_a: dict[str, str], dataset_id: str, enqueued: list[str]
) -> None:
    headers = {**headers_a, "Idempotency-Key": "race"}
    results: list[Any] = []
    barrier = threading.Barrier(8)

    def post() -> None:
        barrier.wait()
        results.append(client.post("/v1/jobs", headers=headers, json=spt_job(dataset_id)))

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code in (200, 201) for r in results), [r.text for r in results]
    assert sum(r.status_code == 201 for r in results) == 1
    assert len({r.json()["id"] for r in results}) == 1
    assert len(client.get("/v1/jobs", headers=headers_a).json()["data"]) == 1
    assert len(enqueued) == 1


def test_concurrent_repo_creates_race_on_the_constraint(database_url: str, key_a: str) -> None:
    with session_scope(database_url) as session:
        tenant = repo.get_tenant_by_name(session=session, name="tenant-a")
        assert tenant is not None
        dataset = repo.create_dataset(
            session=session, tenant_id=tenant.id, name="d", storage_key="datasets/x/y"
        )
        tenant_id, ds_id = tenant.id, dataset.id
    ids: list[tuple[str, bool]] = []
    barrier = threading.Barrier(6)

    def create() -> None:
        barrier.wait()
        with session_scope(database_url) as session:
            job, created = repo.create_job(
                session=session,
                tenant_id=tenant_id,
                method="spt",
                backbone="tiny-vit",
                dataset_id=ds_id,
                config={},
                seed=0,
                metadata={},
                max_attempts=3,
                idempotency_key="same",
            )
            ids.append((job.id, created))

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 6 and len({i for i, _ in ids}) == 1 and sum(c for _, c in ids) == 1


def test_isolation(
    client: TestClient, headers_a: dict[str, str], headers_b: dict[str, str], dataset_id: str
) -> None:
    job = client.post("/v1/jobs", headers=headers_a, json=spt_job(dataset_id)).json()
    for method, path in [
        ("get", f"/v1/jobs/{job['id']}"),
        ("get", f"/v1/jobs/{job['id']}/events"),
        ("post", f"/v1/jobs/{job['id']}/cancel"),
    ]:
        assert_error(client.request(method, path, headers=headers_b), 404, "not_found")
    assert client.get("/v1/jobs", headers=headers_b).json()["data"] == []
    assert client.get(f"/v1/jobs/{job['id']}", headers=headers_a).json()["status"] == "queued"


def test_cancel(client: TestClient, headers_a: dict[str, str], dataset_id: str, database_url: str) -> None:
    queued = client.post("/v1/jobs", headers=headers_a, json=spt_job(dataset_id)).json()
    cancelled = client.post(f"/v1/jobs/{queued['id']}/cancel", headers=headers_a)
    assert cancelled.status_code == 200
    body = cancelled.json()
    assert body["status"] == "cancelled" and body["finished_at"] is not None
    assert body["error"]["code"] == "cancelled_by_user"
    assert_error(
        client.post(f"/v1/jobs/{queued['id']}/cancel", headers=headers_a), 409, "job_not_cancellable"
    )

    running = client.post("/v1/jobs", headers=headers_a, json=spt_job(dataset_id)).json()
    set_status(database_url, running["id"], "running")
    response = client.post(f"/v1/jobs/{running['id']}/cancel", headers=headers_a)
    assert response.status_code == 200 and response.json()["status"] == "running"
    with session_scope(database_url) as session:
        row = session.get(Job, running["id"])
        assert row is not None and row.cancel_requested is True

    done = client.post("/v1/jobs", headers=headers_a, json=spt_job(dataset_id)).json()
    set_status(database_url, done["id"], "succeeded")
    assert_error(client.post(f"/v1/jobs/{done['id']}/cancel", headers=headers_a), 409, "job_not_cancellable")


def test_concurrent_job_cap(
    client: TestClient, headers_a: dict[str, str], dataset_id: str, settings: Any
) -> None:
    for _ in range(settings.max_concurrent_jobs_per_tenant):
        assert client.post("/v1/jobs", headers=headers_a, json=spt_job(dataset_id)).status_code == 201
    assert_error(client.post("/v1/jobs", headers=headers_a, json=spt_job(dataset_id)), 429, "too_many_jobs")


def test_events_after_and_sse(
    client: TestClient, headers_a: dict[str, str], dataset_id: str, database_url: str
) -> None:
    job = client.post("/v1/jobs", headers=headers_a, json=spt_job(dataset_id)).json()
    with session_scope(database_url) as session:
        for step in range(3):
            repo.add_job_event(
                session=session, job_id=job["id"], type="metrics", message=f"step {step}", data={"step": step}
            )
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=headers_a).json()["data"]
    assert [e["message"] for e in events] == ["job queued", "step 0", "step 1", "step 2"]
    after = client.get(
        f"/v1/jobs/{job['id']}/events", params={"after": events[1]["id"]}, headers=headers_a
    ).json()
    assert [e["message"] for e in after["data"]] == ["step 1", "step 2"]
    assert after["has_more"] is False and after["next_cursor"] is None

    set_status(database_url, job["id"], "succeeded")  # terminal: the stream drains and ends
    sse_headers = {**headers_a, "Accept": "text/event-stream", "Last-Event-ID": str(events[1]["id"])}
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=sse_headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    blocks = [b for b in text.split("\n\n") if b.strip()]
    assert len(blocks) == 2
    assert blocks[0].startswith(f"id: {events[2]['id']}\nevent: metrics\ndata: ")
    assert '"step 2"' in blocks[1]


def test_a_backbone_that_cannot_load_is_refused_at_create(
    client: TestClient, headers_a: dict[str, str], dataset_id: str, enqueued: list[str]
) -> None:
    # The catalogue's MoCo-v3 ViT is a local file nobody downloaded here: the job would only fail in the
    # worker, so the API says so at once.
    body = {**spt_job(dataset_id), "backbone": "vit-b-16-mocov3"}
    error = assert_error(client.post("/v1/jobs", headers=headers_a, json=body), 409, "backbone_unavailable")
    assert error["param"] == "backbone" and "GET /v1/backbones" in error["message"]
    assert client.get("/v1/jobs", headers=headers_a).json()["data"] == [] and enqueued == []


def test_lr_auto_needs_a_validation_split(
    client: TestClient, headers_a: dict[str, str], dataset_id: str
) -> None:
    no_val = spt_job(dataset_id, lr="auto", val_fraction=0)
    error = assert_error(client.post("/v1/jobs", headers=headers_a, json=no_val), 422, "invalid_config")
    assert error["param"] == "config.lr" and "validation" in error["message"]
    carved = client.post("/v1/jobs", headers=headers_a, json=spt_job(dataset_id, lr="auto", val_fraction=0.2))
    assert carved.status_code == 201, carved.text


def test_world_size_routes_the_job_and_is_validated(
    app, client: TestClient, headers_a: dict[str, str], dataset_id: str
) -> None:
    sent: list[tuple[str, int]] = []
    app.state.enqueue = lambda job_id, *, world_size=1: sent.append((job_id, world_size))
    two = client.post("/v1/jobs", headers=headers_a, json=spt_job(dataset_id, world_size=2))
    one = client.post("/v1/jobs", headers=headers_a, json=spt_job(dataset_id))
    assert two.status_code == one.status_code == 201, (two.text, one.text)
    assert sent == [(two.json()["id"], 2), (one.json()["id"], 1)]
    assert two.json()["config"]["world_size"] == 2
    for bad in (0, 1.5, True, "2", 100_000):
        response = client.post("/v1/jobs", headers=headers_a, json=spt_job(dataset_id, world_size=bad))
        assert assert_error(response, 422, "invalid_config")["param"] == "config.world_size", bad
    assert len(sent) == 2  # nothing refused was enqueued


def test_world_size_is_in_every_method_config_schema(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    configs = {name: schema for name, schema in schemas.items() if name.endswith("JobConfig")}
    assert {"SptJobConfig", "RppJobConfig"} <= set(configs)
    for name, schema in configs.items():
        field = schema["properties"]["world_size"]
        assert field["minimum"] == 1 and field["default"] == 1, name
