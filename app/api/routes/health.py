"""Liveness (/healthz), readiness (/readyz: database, broker, storage, migrations) and /metrics."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from app.metrics import CONTENT_TYPE
from app.schemas import ReadyResponse

router = APIRouter(tags=["health"])
CHECK_TIMEOUT_SECONDS = 3.0


@router.get("/healthz", name="healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    """The process is alive (no dependencies checked)."""
    return {"status": "ok"}


def _check_database(request: Request) -> None:
    with request.app.state.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _check_broker(request: Request) -> None:
    import redis

    client = redis.Redis.from_url(
        request.app.state.settings.redis_url,
        socket_connect_timeout=CHECK_TIMEOUT_SECONDS,
        socket_timeout=CHECK_TIMEOUT_SECONDS,
    )
    try:
        if not client.ping():
            raise RuntimeError("PING failed")
    finally:
        client.close()


def _check_storage(request: Request) -> None:
    storage = request.app.state.storage
    key = f"health/{uuid.uuid4().hex}"
    payload = b"promptune-readyz"
    storage.put_bytes(key, payload)
    try:
        if storage.read_bytes(key) != payload:
            raise RuntimeError("storage returned different bytes")
    finally:
        storage.delete(key)


def _check_migrations(request: Request) -> None:
    from app.core.db.migrate import current_revision, head_revision

    with request.app.state.engine.connect() as conn:
        current = current_revision(conn)
    head = head_revision()
    if current != head:
        raise RuntimeError(f"database at revision {current}, code expects {head}")


CHECKS: dict[str, Callable[[Request], None]] = {
    "database": _check_database,
    "broker": _check_broker,
    "storage": _check_storage,
    "migrations": _check_migrations,
}


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "a dependency is unavailable"}},
    name="readyz",
    summary="Readiness of the database, broker and storage",
)
async def readyz(request: Request) -> JSONResponse:
    checks: dict[str, dict[str, object]] = {}
    for name, check in CHECKS.items():
        try:
            await run_in_threadpool(check, request)
            checks[name] = {"ok": True, "error": None}
        except Exception as exc:  # noqa: BLE001 - report every failure by component
            checks[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    ok = all(c["ok"] for c in checks.values())
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}}},
    name="metrics",
    summary="Prometheus metrics",
)
async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(request.app.state.metrics.render)
    return Response(body, media_type=CONTENT_TYPE)
