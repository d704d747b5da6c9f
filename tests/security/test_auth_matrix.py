"""Authentication and tenant isolation on every /v1 route, enumerated from ``app.routes``.

Tenant B owns a real dataset (uploaded), a real queued job (created through the API), a real tuned
model (a checkpoint saved by ``models.save_checkpoint`` and put in the app's storage) and a real zero-shot
classifier (created through the API, its text features stored). Then:

- every (route, method) of the /v1 API answers 401 ``unauthorized`` to a missing, malformed, unknown,
  wrong-secret or revoked key, with its path ids filled with tenant B's real ids;
- tenant A's valid key on every route that takes an id (in the path, or in the body/form for job
  creation, classifier creation and zero-shot prediction) gets 404 ``not_found`` for every one of tenant
  B's ids;
- tenant B's rows, events and stored files are byte-for-byte the same afterwards, and nothing was
  enqueued on A's behalf. Tenant B's own key on the same GET routes gets 200 (the ids are real).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.core.db import repo
from app.core.db.session import session_scope
from app.core.db.tables import Classifier, Dataset, Job, JobEvent, TunedModel
from app.core.security import generate_key
from app.core.settings import Settings
from tests.api.helpers import auth, image_folder_zip, png_bytes
from tests.api.test_datasets import assert_error
from tests.api.test_model_reports import add_reported_model
from tests.tiny import tiny_vit_spec

ID_PARAMS = ("dataset_id", "job_id", "model_id", "classifier_id")
# Path parameters that name something every tenant shares (a registered method), not a tenant's object:
# they get a real value in every check, and the cross-tenant check has nothing to swap in them.
SHARED_PARAMS = {"name": "spt"}
PLOT_NAME = {"name": "training_curves"}  # /v1/models/{model_id}/plots/{name}.png
# /v1/datasets/{dataset_id}/samples/{index}/thumbnail: an image every dataset has, so only the dataset decides.
SAMPLE_INDEX = {"index": "0"}
ABSENT_ID = "00000000-0000-4000-8000-000000000000"
_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")


@pytest.fixture(scope="module")
def spt_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    from models import build_method, load_backbone, save_checkpoint

    method = build_method(
        "spt",
        load_backbone(tiny_vit_spec()),
        {"mode": "deep", "num_prompts": 2, "init": "xavier"},
        ["red", "blue"],
    )
    path = tmp_path_factory.mktemp("ckpt") / "spt.safetensors"
    return path, save_checkpoint(method, path)


def _walk(routes: list[Any], prefix: str = "") -> list[tuple[str, str]]:
    """(METHOD, path) of every APIRoute, descending into included routers and mounts.

    FastAPI >= 0.16x keeps included routers as one routing entry each (``original_router`` plus an
    include context holding the extra prefix); older versions flatten them. Both are handled.
    """
    ops: list[tuple[str, str]] = []
    for route in routes:
        if isinstance(route, APIRoute):
            ops.extend((method, prefix + route.path) for method in route.methods)
        elif hasattr(route, "original_router"):
            extra = getattr(getattr(route, "include_context", None), "prefix", "") or ""
            ops.extend(_walk(route.original_router.routes, prefix + extra))
        elif isinstance(getattr(route, "routes", None), list):  # a Mount
            ops.extend(_walk(route.routes, prefix + getattr(route, "path", "")))
    return ops


def v1_operations(app) -> list[tuple[str, str]]:
    """Every (METHOD, path template) of the /v1 API, from the app's routing table (not a hand list)."""
    ops = sorted({(m, p) for m, p in _walk(app.routes) if p.startswith("/v1")})
    documented = {
        (method.upper(), path)
        for path, item in app.openapi()["paths"].items()
        if path.startswith("/v1")
        for method in item
    }
    assert set(ops) == documented  # the routing table and the OpenAPI document agree
    return ops


def fill(template: str, ids: dict[str, str]) -> str:
    ids = {**SHARED_PARAMS, **SAMPLE_INDEX, **(PLOT_NAME if "/plots/" in template else {}), **ids}
    names = _PARAM.findall(template)
    unknown = [n for n in names if n not in ids]
    assert not unknown, f"{template}: no real id to fill {unknown}; teach this test the new parameter"
    return _PARAM.sub(lambda m: ids[m.group(1)], template)


def request_kwargs(method: str, template: str, body_ids: dict[str, str]) -> dict[str, Any]:
    """A well-formed request for each operation that takes a body, so a refusal is never a 422."""
    image = [("images", ("a.png", png_bytes(size=32), "image/png"))]
    if (method, template) == ("POST", "/v1/datasets"):
        return {"files": {"file": ("d.zip", image_folder_zip())}}
    if (method, template) == ("POST", "/v1/jobs"):
        return {"json": spt_job(body_ids["dataset_id"])}
    if (method, template) == ("POST", "/v1/models/{model_id}/predict"):
        return {"files": image}
    if (method, template) == ("POST", "/v1/predict/zero-shot"):
        return {"files": image, "data": {"classes": '["cat", "dog"]', "model_id": body_ids["model_id"]}}
    if (method, template) == ("POST", "/v1/classifiers"):
        return {"json": {"classes": ["cat", "dog"], "model_id": body_ids["model_id"]}}
    if (method, template) == ("POST", "/v1/classifiers/{classifier_id}/predict"):
        return {"files": image}
    return {}


def spt_job(dataset_id: str) -> dict[str, Any]:
    config = {"epochs": 1, "batch_size": 4, "lr": 0.01, "mode": "deep", "num_prompts": 2, "init": "random"}
    return {"method": "spt", "backbone": "tiny-vit", "dataset_id": dataset_id, "config": config}


def tenant_b_objects(
    client: TestClient,
    headers_b: dict[str, str],
    settings: Settings,
    database_url: str,
    checkpoint: tuple[Path, str],
) -> dict[str, str]:
    dataset = client.post("/v1/datasets", headers=headers_b, files={"file": ("b.zip", image_folder_zip())})
    assert dataset.status_code == 201, dataset.text
    job = client.post("/v1/jobs", headers=headers_b, json=spt_job(dataset.json()["id"]))
    assert job.status_code == 201, job.text
    with session_scope(database_url) as session:
        tenant = repo.get_tenant_by_name(session=session, name="tenant-b")
        assert tenant is not None
        repo.add_job_event(
            session=session, job_id=job.json()["id"], level="info", type="message", message="b"
        )
    # with its report, plots and card: the owner's GETs of the report routes answer 200
    model_id = add_reported_model(settings, database_url, "tenant-b", checkpoint)
    classifier = client.post(
        "/v1/classifiers", headers=headers_b, json={"classes": ["cat", "dog"], "backbone": "tiny-clip"}
    )
    assert classifier.status_code == 201, classifier.text
    return {
        "dataset_id": dataset.json()["id"],
        "job_id": job.json()["id"],
        "model_id": model_id,
        "classifier_id": classifier.json()["id"],
    }


def snapshot(database_url: str, tenant_name: str, storage_root: Path) -> dict[str, Any]:
    """Every column of the tenant's rows, its jobs' events, and the sha256 of every stored file."""

    def rows(session, table) -> list[dict[str, Any]]:
        query = select(table).where(table.tenant_id == tenant_id).order_by(table.id)
        return [{c.name: getattr(r, c.key) for c in table.__mapper__.columns} for r in session.scalars(query)]

    with session_scope(database_url) as session:
        tenant = repo.get_tenant_by_name(session=session, name=tenant_name)
        assert tenant is not None
        tenant_id = tenant.id
        tables = (Dataset, Job, TunedModel, Classifier)
        state: dict[str, Any] = {t.__tablename__: rows(session, t) for t in tables}
        job_ids = [j["id"] for j in state["jobs"]]
        events = session.scalars(select(JobEvent).where(JobEvent.job_id.in_(job_ids)).order_by(JobEvent.id))
        state["job_events"] = [(e.id, e.job_id, e.type, e.message) for e in events]
    files = sorted(p for p in storage_root.rglob("*") if p.is_file() and ".staging" not in p.parts)
    state["files"] = {
        str(p.relative_to(storage_root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    }
    return state


def bad_headers(key_b: str, revoked: str) -> dict[str, dict[str, str]]:
    secret_flip = key_b[:-1] + ("A" if key_b[-1] != "A" else "B")
    return {
        "missing": {},
        "empty": {"Authorization": ""},
        "basic scheme": {"Authorization": "Basic dXNlcjpwYXNz"},
        "bearer, no key": {"Authorization": "Bearer"},
        "bearer, blank key": {"Authorization": "Bearer    "},
        "not a key": {"Authorization": "Bearer not-a-key"},
        "key with junk appended": auth(key_b + "x"),
        "unknown prefix": auth(generate_key().key),
        "known prefix, wrong secret": auth(secret_flip),
        "revoked": auth(revoked),
    }


def revoked_key(database_url: str, tenant_name: str) -> str:
    with session_scope(database_url) as session:
        tenant = repo.get_tenant_by_name(session=session, name=tenant_name)
        assert tenant is not None
        row, key = repo.create_api_key(session=session, tenant_id=tenant.id)
        assert repo.revoke_api_key(session=session, tenant_id=tenant.id, prefix=row.prefix)
    return key


BODY_ID_OPERATIONS = [("POST", "/v1/jobs"), ("POST", "/v1/predict/zero-shot"), ("POST", "/v1/classifiers")]


def check_bad_keys(client: TestClient, operations, ids: dict[str, str], headers_by_label) -> int:
    """Every bad key on every operation: 401 ``unauthorized`` with the Bearer challenge."""
    count = 0
    for label, headers in headers_by_label.items():
        for method, template in operations:
            path = fill(template, ids)
            response = client.request(method, path, headers=headers, **request_kwargs(method, template, ids))
            assert response.status_code == 401, (label, method, path, response.text)
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer", (label, method, path)
            count += 1
    return count


def check_cross_tenant(
    client: TestClient, operations, ids_b: dict[str, str], headers_a: dict[str, str]
) -> int:
    """Tenant A's key with each of tenant B's ids in every id slot: 404, the same body as for an absent id."""
    count = 0
    for method, template in operations:
        accepts = ["application/json"] + (["text/event-stream"] if template.endswith("/events") else [])
        for object_id, accept in [(i, a) for i in ids_b.values() for a in accepts]:
            responses = []
            for slot_id in (object_id, ABSENT_ID):
                slots = dict.fromkeys(ID_PARAMS, slot_id)
                responses.append(
                    client.request(
                        method,
                        fill(template, slots),
                        headers={**headers_a, "Accept": accept},
                        **request_kwargs(method, template, slots),
                    )
                )
            assert_error(responses[0], 404, "not_found")
            # Indistinguishable from an id that exists nowhere: existence is not leaked.
            assert responses[0].json() == responses[1].json(), (method, template)
            count += 1
    return count


def test_auth_and_tenant_isolation_matrix(
    app,
    client: TestClient,
    settings: Settings,
    database_url: str,
    key_a: str,
    key_b: str,
    enqueued: list[str],
    spt_checkpoint: tuple[Path, str],
) -> None:
    headers_a, headers_b = auth(key_a), auth(key_b)
    ids_b = tenant_b_objects(client, headers_b, settings, database_url, spt_checkpoint)
    storage_root = settings.data_dir / "storage"
    before = snapshot(database_url, "tenant-b", storage_root)
    enqueued_before = list(enqueued)
    operations = v1_operations(app)
    assert len(operations) >= 15 and ("DELETE", "/v1/models/{model_id}") in operations
    id_operations = [(m, t) for m, t in operations if set(_PARAM.findall(t)) & set(ID_PARAMS)]
    assert set(BODY_ID_OPERATIONS) <= set(operations)

    bad = bad_headers(key_b, revoked_key(database_url, "tenant-b"))
    unauthorized = check_bad_keys(client, operations, ids_b, bad)
    cross_tenant = check_cross_tenant(client, id_operations + BODY_ID_OPERATIONS, ids_b, headers_a)

    # Nothing of tenant B changed, nothing ran for tenant A; B's own key still reaches every object.
    assert snapshot(database_url, "tenant-b", storage_root) == before
    assert enqueued == enqueued_before
    assert client.get("/v1/jobs", headers=headers_a).json()["data"] == []
    owner_gets = [t for m, t in id_operations if m == "GET"]
    for template in owner_gets:
        response = client.get(fill(template, ids_b), headers=headers_b)
        assert response.status_code == 200, (template, response.text)
    checkpoint = client.get(f"/v1/models/{ids_b['model_id']}/checkpoint", headers=headers_b)
    assert checkpoint.content == spt_checkpoint[0].read_bytes()
    print(
        f"\nauth matrix [{database_url.split(':')[0]}]: {len(operations)} operations; "
        f"{unauthorized} bad-key requests ({len(operations)} operations x {len(bad)} bad keys) -> 401; "
        f"{len(id_operations)} id operations + {len(BODY_ID_OPERATIONS)} body-id operations x {len(ids_b)} "
        f"tenant-B ids (+ SSE) -> {cross_tenant} cross-tenant requests, all 404; "
        f"{len(owner_gets)} owner GETs -> 200; tenant B unchanged"
    )
