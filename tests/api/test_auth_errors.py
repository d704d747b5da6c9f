"""Authentication on every /v1 route, the error shape everywhere, and the API-key lifecycle."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.core.db import repo
from app.core.db.session import session_scope
from app.core.db.tables import ApiKey
from app.core.security import generate_key, hash_key, parse_prefix, verify_key
from tests.api.helpers import auth
from tests.api.test_datasets import assert_error

FAKE_ID = "00000000-0000-0000-0000-000000000000"


def v1_routes(app) -> list[tuple[str, str]]:
    """Every (method, path) of the /v1 API, enumerated from the OpenAPI document."""
    out: list[tuple[str, str]] = []
    for path, operations in app.openapi()["paths"].items():
        if path.startswith("/v1"):
            concrete = (
                path.replace("{dataset_id}", FAKE_ID)
                .replace("{job_id}", FAKE_ID)
                .replace("{model_id}", FAKE_ID)
            )
            out.extend((method.upper(), concrete) for method in operations)
    return out


def test_every_v1_route_requires_a_key(app, client: TestClient, key_a: str, database_url: str) -> None:
    routes = v1_routes(app)
    assert len(routes) >= 15
    revoked = generate_key()
    with session_scope(database_url) as session:
        tenant = repo.get_tenant_by_name(session=session, name="tenant-a")
        assert tenant is not None
        row, revoked_key = repo.create_api_key(session=session, tenant_id=tenant.id)
        assert repo.revoke_api_key(session=session, tenant_id=tenant.id, prefix=row.prefix)
    bad_headers = [
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-key"},
        auth(revoked.key),  # well-formed, unknown prefix
        auth(key_a[:-1] + ("A" if key_a[-1] != "A" else "B")),  # known prefix, wrong secret
        auth(revoked_key),
    ]
    for method, path in routes:
        for headers in bad_headers:
            response = client.request(method, path, headers=headers)
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"


def test_valid_key_and_last_used(client: TestClient, key_a: str, database_url: str) -> None:
    assert client.get("/v1/datasets", headers=auth(key_a)).status_code == 200
    with session_scope(database_url) as session:
        row = session.query(ApiKey).filter_by(prefix=parse_prefix(key_a)).one()
        assert row.last_used_at is not None
        assert row.key_sha256 == hash_key(key_a) and key_a not in (row.prefix, row.key_sha256)


def test_key_format_and_verify() -> None:
    new = generate_key()
    assert new.key.startswith(f"ptk_{new.prefix}_") and len(new.key.split("_", 2)[2]) == 43
    assert parse_prefix(new.key) == new.prefix
    assert verify_key(new.key, new.sha256)
    assert not verify_key(new.key, None)
    assert not verify_key(new.key + "x", new.sha256)
    assert parse_prefix("ptk_zz_short") is None


def test_error_shapes(app, client: TestClient, headers_a: dict[str, str]) -> None:
    assert_error(client.get("/no/such/route"), 404, "not_found")
    assert_error(client.put("/v1/datasets", headers=headers_a), 405, "method_not_allowed")
    error = assert_error(
        client.post("/v1/jobs", headers=headers_a, json={"method": "spt"}), 422, "invalid_request"
    )
    assert error["param"] in ("backbone", "dataset_id")
    assert_error(
        client.post(
            "/v1/jobs",
            headers=headers_a,
            content=b"{not json",
        ),
        422,
        "invalid_request",
    )
    assert_error(client.get("/v1/jobs", params={"limit": 0}, headers=headers_a), 422, "invalid_request")


def test_unhandled_errors_hide_the_traceback(settings, enqueued) -> None:
    from app.main import create_app

    app = create_app(settings, enqueue=lambda job_id, **_: enqueued.append(job_id))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert_error(response, 500, "internal")
    assert "secret" not in response.text and "Traceback" not in response.text


def test_openapi_documents_the_contract(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/v1/datasets",
        "/v1/jobs",
        "/v1/jobs/{job_id}/events",
        "/v1/models/{model_id}/predict",
        "/v1/predict/zero-shot",
        "/v1/backbones",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths
    upload = paths["/v1/datasets"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["required"] == ["file"]
    job_create = spec["components"]["schemas"]["JobCreate"]
    assert "tenant_id" not in job_create["properties"] and "status" not in job_create["properties"]
    public = spec["components"]["schemas"]["DatasetPublic"]["properties"]
    assert "storage_key" not in public and "tenant_id" not in public


@pytest.mark.parametrize("name", ["dup"])
def test_create_tenant_names_are_unique(database_url: str, name: str) -> None:
    from sqlalchemy.exc import IntegrityError

    with session_scope(database_url) as session:
        repo.create_tenant(session=session, name=name)
    with pytest.raises(IntegrityError), session_scope(database_url) as session:
        repo.create_tenant(session=session, name=name)
    with session_scope(database_url) as session:
        assert repo.get_or_create_tenant(session=session, name=name).name == name
