"""List endpoints: the ``{data, has_more, next_cursor}`` envelope, cursor paging, filters, operation ids."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

from app.core.db import repo
from app.core.db.session import session_scope
from tests.api.test_datasets import assert_error
from tests.api.test_jobs import dataset_id, set_status, spt_job  # noqa: F401 - fixture


def _create_jobs(
    client: TestClient, headers: dict[str, str], database_url: str, ds: str, n: int
) -> list[str]:
    ids = []
    for seed in range(n):
        job = client.post("/v1/jobs", headers=headers, json={**spt_job(ds), "seed": seed}).json()
        set_status(database_url, job["id"], "succeeded")  # stays under the per-tenant active-job cap
        ids.append(job["id"])
    return ids


def _walk(client: TestClient, headers: dict[str, str], path: str, **params: Any) -> list[dict[str, Any]]:
    """Every page of ``path`` by following next_cursor."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = client.get(path, params=query, headers=headers).json()
        items.extend(page["data"])
        assert page["has_more"] == (page["next_cursor"] is not None)
        if not page["has_more"]:
            return items
        cursor = page["next_cursor"]


def test_cursor_pages_do_not_shift_when_new_rows_arrive(
    client: TestClient,
    headers_a: dict[str, str],
    database_url: str,
    dataset_id: str,  # noqa: F811
) -> None:
    created = _create_jobs(client, headers_a, database_url, dataset_id, 5)
    first = client.get("/v1/jobs", params={"limit": 2}, headers=headers_a).json()
    assert [j["id"] for j in first["data"]] == created[::-1][:2]  # newest first
    assert first["has_more"] is True
    newer = _create_jobs(client, headers_a, database_url, dataset_id, 1)  # arrives between two pages
    rest = _walk(client, headers_a, "/v1/jobs", limit=2, cursor=first["next_cursor"])
    assert [j["id"] for j in rest] == created[::-1][2:]  # neither repeated nor skipped
    every = _walk(client, headers_a, "/v1/jobs", limit=2)
    assert [j["id"] for j in every] == [*newer, *created[::-1]]
    # offset still works for v1 clients
    by_offset = client.get("/v1/jobs", params={"limit": 2, "offset": 2}, headers=headers_a).json()
    assert [j["id"] for j in by_offset["data"]] == [created[3], created[2]]


def test_job_filters(
    client: TestClient,
    headers_a: dict[str, str],
    database_url: str,
    dataset_id: str,  # noqa: F811
) -> None:
    done = _create_jobs(client, headers_a, database_url, dataset_id, 2)
    queued = client.post("/v1/jobs", headers=headers_a, json=spt_job(dataset_id)).json()

    def ids(**params: Any) -> set[str]:
        return {j["id"] for j in _walk(client, headers_a, "/v1/jobs", **params)}

    assert ids(status="queued") == {queued["id"]}
    assert ids(status="succeeded") == set(done)
    assert ids(method="spt", dataset_id=dataset_id) == {*done, queued["id"]}
    assert ids(method="rpp") == set()
    assert ids(backbone="tiny-vit", status="succeeded") == set(done)
    assert ids(dataset_id="no-such-dataset") == set()


def test_model_filters_and_pages(client: TestClient, headers_a: dict[str, str], database_url: str) -> None:
    with session_scope(database_url) as session:
        tenant = repo.get_or_create_tenant(session=session, name="tenant-a")
        for i, method in enumerate(["spt", "spt", "rpp"]):
            repo.create_model(
                session=session,
                tenant_id=tenant.id,
                method=method,
                backbone=f"bb-{i % 2}",
                classes=["a", "b"],
                metrics={},
                checkpoint_key=f"models/x/{i}.safetensors",
                checkpoint_sha256="0" * 64,
            )
    assert len(_walk(client, headers_a, "/v1/models", limit=1)) == 3
    assert {m["method"] for m in _walk(client, headers_a, "/v1/models", method="spt")} == {"spt"}
    assert len(_walk(client, headers_a, "/v1/models", backbone="bb-0")) == 2


def test_bad_cursors_are_400(
    client: TestClient,
    headers_a: dict[str, str],
    dataset_id: str,  # noqa: F811
) -> None:
    for path in ("/v1/jobs", "/v1/datasets", "/v1/models", "/v1/classifiers"):
        for cursor in ("not-a-cursor", "e30", "WyJ4IiwgMV0"):  # garbage, "{}", ["x", 1]
            error = assert_error(
                client.get(path, params={"cursor": cursor}, headers=headers_a), 400, "invalid_cursor"
            )
            assert error["param"] == "cursor"
    page = client.get("/v1/datasets", params={"limit": 1}, headers=headers_a).json()
    assert page["has_more"] is False and page["next_cursor"] is None and len(page["data"]) == 1
    both = client.get("/v1/datasets", params={"cursor": "x", "offset": 1}, headers=headers_a)
    assert assert_error(both, 400, "invalid_query")["param"] == "offset"


def test_event_pages_follow_the_cursor(
    client: TestClient,
    headers_a: dict[str, str],
    database_url: str,
    dataset_id: str,  # noqa: F811
) -> None:
    job = client.post("/v1/jobs", headers=headers_a, json=spt_job(dataset_id)).json()
    with session_scope(database_url) as session:
        for step in range(4):
            repo.add_job_event(session=session, job_id=job["id"], message=f"step {step}")
    url = f"/v1/jobs/{job['id']}/events"
    seen, cursor = [], None
    while True:
        page = client.get(
            url, params={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=headers_a
        )
        body = page.json()
        seen.extend(e["message"] for e in body["data"])
        if not body["has_more"]:
            break
        cursor = body["next_cursor"]
    assert seen == ["job queued", "step 0", "step 1", "step 2", "step 3"]
    assert_error(client.get(url, params={"cursor": "-1"}, headers=headers_a), 400, "invalid_cursor")


def test_operation_ids_are_stable_names(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operations = [op for path in spec["paths"].values() for op in path.values()]
    ids = [op["operationId"] for op in operations]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z][a-z_]*[a-z]", i) and "_v1_" not in i for i in ids), ids
    assert {"create_job", "list_jobs", "list_job_events", "predict_with_model"} <= set(ids)
    assert all(op.get("summary") for op in operations)
    listing = spec["paths"]["/v1/jobs"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    page = spec["components"]["schemas"][listing["$ref"].rsplit("/", 1)[1]]
    assert set(page["properties"]) == {"data", "has_more", "next_cursor"}
