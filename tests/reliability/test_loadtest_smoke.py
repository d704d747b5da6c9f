"""A small-N run of the load generator behind scripts/loadtest.py: every request answered, 0 errors.

Same machinery as the script (a world trained by the worker code, ``uvicorn app.main:app`` in a
subprocess on SQLite, closed-loop clients), with few requests. No timing is asserted; the figures in
docs/reliability.md come from the script.
"""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.main import create_app
from tests.reliability.load import HEADER, run_all, targets, uvicorn_process
from tests.reliability.world import build_world, world_settings

STATUS_REQUESTS, PREDICT_REQUESTS, CONCURRENCY = 100, 20, 4


def test_loadtest_smoke(tmp_path: Path) -> None:
    settings = world_settings(tmp_path / "world")
    with TestClient(create_app(settings, enqueue=lambda _job_id, **_: None)) as client:
        world = build_world(client, settings, rpp=True, queued_job=False, tenant="load")
    requests = {"GET": STATUS_REQUESTS, "POST": PREDICT_REQUESTS}
    with uvicorn_process(settings) as base:
        results = run_all(base, world, requests=requests, concurrency=CONCURRENCY)
    print(f"\n{HEADER}\n" + "\n".join(r.row() for r in results))

    assert [r.target for r in results] == [t.name for t in targets(world)]
    for result in results:
        expected = STATUS_REQUESTS if result.target.startswith("GET") else PREDICT_REQUESTS
        assert result.requests == expected
        assert result.errors == 0, result.statuses
        assert result.statuses == {200: expected}
