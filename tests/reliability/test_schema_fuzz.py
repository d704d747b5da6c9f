"""Schemathesis over every operation of the OpenAPI document: 0 server errors, 0 schema violations.

A live uvicorn serves the app on SQLite and on PostgreSQL, with a real redis-server (so /readyz is
ready) and a world of real objects (tests/reliability/world.py: an uploaded dataset, SPT and RPP models
trained by the worker code, a queued job). See tests/reliability/fuzz.py for what is generated and
checked. CI runs ``PROMPTUNE_FUZZ_EXAMPLES`` (default 25) derandomized examples per operation; the full
run in docs/reliability.md sets it to 300.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import create_app
from tests.api.helpers import png_bytes
from tests.reliability import fuzz
from tests.reliability.fuzz import fuzz_app
from tests.reliability.live import live_server
from tests.reliability.world import World, build_world, world_settings
from tests.services import RedisServer

EXAMPLES = int(os.environ.get("PROMPTUNE_FUZZ_EXAMPLES", "25"))


def with_classifier_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """The world's classifier id for ``classifier_id`` path parameters, and a well-formed predict body."""
    id_values, fixed_bodies = fuzz._id_values, fuzz._fixed_bodies

    def ids(world: World) -> dict[str, list[str]]:
        return {**id_values(world), "classifier_id": [world.classifier_id] if world.classifier_id else []}

    def bodies(label: str, world: World) -> list[dict[str, Any]]:
        if label == "POST /v1/classifiers/{classifier_id}/predict":
            return [{"images": [png_bytes(size=32)], "top_k": "2"}]
        return fixed_bodies(label, world)

    monkeypatch.setattr(fuzz, "_id_values", ids)
    monkeypatch.setattr(fuzz, "_fixed_bodies", bodies)


def test_schemathesis_every_operation(
    db_url: str, redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = world_settings(tmp_path / "world", database_url=db_url, redis_url=redis_server.url)
    app = create_app(settings, enqueue=lambda _job_id, **_: None)
    openapi = app.openapi()
    documented = {f"{method.upper()} {path}" for path, item in openapi["paths"].items() for method in item}
    with live_server(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        world = build_world(client, settings, rpp=True, classifier=True)
        with_classifier_ids(monkeypatch)
        report = fuzz_app(openapi, world, base, EXAMPLES)
    print(f"\n{db_url.split(':')[0]}, {EXAMPLES} examples per operation: {report.summary()}")
    print(report.table())

    assert set(report.operations) == documented  # every operation of the document was fuzzed
    assert not report.failures, "\n".join(report.failures[:5])
    assert not report.transport_errors, report.transport_errors[:5]
    assert not [code for code in report.statuses if code >= 500]
    assert report.statuses[200] and report.statuses[201]  # real rows were reached, not only 4xx
