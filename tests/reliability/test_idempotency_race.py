"""50 concurrent ``POST /v1/jobs`` with one Idempotency-Key against a live uvicorn server → exactly 1 job.

Runs on SQLite (WAL) and on a real PostgreSQL. The requests go over loopback TCP from 50 threads that
start together on a barrier, so the server sees them interleaved across its thread pool.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.core.db import repo
from app.core.db.session import make_engine, session_scope
from app.core.db.tables import Job
from app.core.settings import Settings
from app.main import create_app
from tests.api.helpers import auth, create_key
from tests.reliability.live import live_server

CLIENTS = 50
HANG_BOUND_S = 10.0  # a hang bound, not a latency target: a healthy server answers all 50 in ~1 s


def _job_body(dataset_id: str) -> dict[str, Any]:
    config = {"epochs": 2, "batch_size": 4, "lr": 0.01, "mode": "deep", "num_prompts": 2, "init": "random"}
    return {
        "method": "spt",
        "backbone": "tiny-vit",
        "dataset_id": dataset_id,
        "config": config,
        "seed": 7,
        "metadata": {"note": "race"},
    }


def _fire(url: str, headers: dict[str, str], body: dict[str, Any]) -> list[httpx.Response | BaseException]:
    results: list[httpx.Response | BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(CLIENTS)

    def post() -> None:
        with httpx.Client(timeout=HANG_BOUND_S) as client:
            barrier.wait(timeout=60)
            try:
                outcome: httpx.Response | BaseException = client.post(url, headers=headers, json=body)
            except httpx.HTTPError as exc:
                outcome = exc
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=post) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def test_concurrent_idempotent_posts_create_one_job(
    db_url: str, tmp_path: Path, backbones_file: Path
) -> None:
    key = create_key(db_url, "tenant-race")
    with session_scope(db_url) as session:
        tenant = repo.get_tenant_by_name(session=session, name="tenant-race")
        assert tenant is not None
        dataset = repo.create_dataset(
            session=session, tenant_id=tenant.id, name="d", storage_key="datasets/r/d"
        )
        tenant_id, dataset_id = tenant.id, dataset.id
    settings = Settings(
        environment="test",
        data_dir=tmp_path / "data",
        database_url=db_url,
        backbones_file=backbones_file,
        redis_url="redis://127.0.0.1:9/0",
        max_concurrent_jobs_per_tenant=100,
    )
    enqueued: list[str] = []
    app = create_app(settings, enqueue=lambda job_id, **_: enqueued.append(job_id))
    headers = {**auth(key), "Idempotency-Key": "one-key-for-fifty"}
    with live_server(app) as base:
        results = _fire(f"{base}/v1/jobs", headers, _job_body(dataset_id))

    errors = [r for r in results if isinstance(r, BaseException)]
    responses = [r for r in results if isinstance(r, httpx.Response)]
    statuses = sorted(r.status_code for r in responses)
    created = statuses.count(201)
    bodies = [r.json() for r in responses if r.status_code in (200, 201)]
    identical = sum(b == bodies[0] for b in bodies) if bodies else 0
    engine = make_engine(db_url)  # its own pool: the app's pool may be the thing that is stuck
    with engine.connect() as conn:
        rows = conn.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id))
    engine.dispose()
    print(
        f"\n[idempotency race {db_url.split(':')[0]}] requests={CLIENTS} transport_errors={len(errors)} "
        f"created(201)={created}/{CLIENTS} replayed(200)={statuses.count(200)} "
        f"other={[s for s in statuses if s not in (200, 201)]} identical={identical}/{CLIENTS} "
        f"job_rows={rows} enqueued={len(enqueued)}"
    )
    assert errors == []
    assert statuses == [200] * (CLIENTS - 1) + [201], [r.text for r in responses if r.status_code >= 300]
    assert identical == CLIENTS
    assert rows == 1
    assert enqueued == [bodies[0]["id"]]


pytestmark = pytest.mark.services
