"""A bounded, closed-loop load generator on loopback (asyncio + httpx), and a uvicorn subprocess to aim it at.

Each phase sends ``requests`` requests to one endpoint from ``concurrency`` concurrent clients (each
sends its next request when the previous one is answered) and records every latency. An error is a
transport failure or any status other than the expected one. Used by scripts/loadtest.py (figures) and
tests/reliability/test_loadtest_smoke.py (0 errors at a small N; no timing assertions).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.core.settings import Settings
from devstack.stack import free_port, start_api, wait_ready
from tests.reliability.world import World, predict_files

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Target:
    name: str
    method: str
    path: str
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    data: dict[str, str] | None = None
    expect: int = 200


@dataclass
class PhaseResult:
    target: str
    concurrency: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int | str] = field(default_factory=Counter)
    errors: int = 0

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile of the latencies (ms)."""
        ordered = sorted(self.latencies_ms)
        return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]

    def row(self) -> str:
        return (
            f"| {self.target} | {self.requests} | {self.concurrency} | {self.percentile(50):.1f} | "
            f"{self.percentile(95):.1f} | {self.percentile(99):.1f} | {self.errors} "
            f"({100 * self.errors / self.requests:.2f} %) | {self.requests / self.seconds:.1f} |"
        )


HEADER = "| endpoint | requests | concurrency | p50 ms | p95 ms | p99 ms | errors | req/s |\n|---|---|---|---|---|---|---|---|"


def targets(world: World) -> list[Target]:
    """Job status, tuned SPT prediction, zero-shot CLIP prediction (and with an RPP model if the world has one)."""
    found = [
        Target("GET /v1/jobs/{id}", "GET", f"/v1/jobs/{world.job_ids['spt']}"),
        Target(
            "POST /v1/models/{id}/predict (SPT, 1 image)",
            "POST",
            f"/v1/models/{world.spt_model_id}/predict",
            files=predict_files(1),
        ),
        Target(
            "POST /v1/predict/zero-shot (CLIP, 3 classes, 1 image)",
            "POST",
            "/v1/predict/zero-shot",
            files=predict_files(1),
            data={"classes": '["red", "green", "blue"]'},
        ),
    ]
    if world.rpp_model_id:
        found.append(
            Target(
                "POST /v1/predict/zero-shot (RPP model, 1 image)",
                "POST",
                "/v1/predict/zero-shot",
                files=predict_files(1),
                data={"classes": '["red", "green", "blue"]', "model_id": world.rpp_model_id},
            )
        )
    return found


async def _client_loop(
    client: httpx.AsyncClient,
    target: Target,
    headers: dict[str, str],
    budget: Iterator[int],
    result: PhaseResult,
) -> None:
    for _ in budget:
        start = time.perf_counter()
        try:
            response = await client.request(
                target.method, target.path, headers=headers, files=target.files, data=target.data
            )
            outcome: int | str = response.status_code
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        result.latencies_ms.append(1000 * (time.perf_counter() - start))
        result.statuses[outcome] += 1
        result.errors += outcome != target.expect


async def run_phase(
    base_url: str,
    headers: dict[str, str],
    target: Target,
    *,
    requests: int,
    concurrency: int,
    timeout: float = 60,
) -> PhaseResult:
    """``requests`` requests to ``target`` from ``concurrency`` closed-loop clients sharing one budget."""
    budget = iter(range(requests))  # shared: each client takes the next ticket until none are left
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as client:
        for _ in range(min(concurrency, 4)):  # warm-up (model loads, connections); not counted
            await client.request(
                target.method, target.path, headers=headers, files=target.files, data=target.data
            )
        result = PhaseResult(target.name, concurrency, 0.0)
        start = time.perf_counter()
        await asyncio.gather(
            *(_client_loop(client, target, headers, budget, result) for _ in range(concurrency))
        )
        result.seconds = time.perf_counter() - start
    return result


def settings_env(settings: Settings) -> dict[str, str]:
    """The PROMPTUNE_* environment that reproduces ``settings`` in another process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTUNE_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"PROMPTUNE_{name.upper()}"] = str(value)
    env["PYTHONPATH"] = str(REPO)
    return env


@contextmanager
def uvicorn_process(settings: Settings, *, workers: int = 1, start_timeout: float = 60) -> Iterator[str]:
    """``uvicorn app.main:app`` in its own process on 127.0.0.1:<free port>; yields the base URL.

    Started by devstack (its log: ``<data_dir>/logs/api.log``), ready once ``/healthz`` answers 200.
    """
    port = free_port()
    api = start_api(settings_env(settings), port, Path(settings.data_dir) / "logs", workers=workers, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, api, timeout=start_timeout, path="/healthz")
        yield base
    finally:
        api.stop(timeout=10)


def run_all(base_url: str, world: World, *, requests: dict[str, int], concurrency: int) -> list[PhaseResult]:
    """One phase per target; ``requests`` maps a target name prefix ("GET", "POST") to its request count."""
    results = []
    for target in targets(world):
        count = requests.get(target.method, 100)
        results.append(
            asyncio.run(run_phase(base_url, world.headers, target, requests=count, concurrency=concurrency))
        )
    return results


def as_dict(result: PhaseResult) -> dict[str, Any]:
    return {
        "endpoint": result.target,
        "requests": result.requests,
        "concurrency": result.concurrency,
        "p50_ms": round(result.percentile(50), 2),
        "p95_ms": round(result.percentile(95), 2),
        "p99_ms": round(result.percentile(99), 2),
        "errors": result.errors,
        "statuses": {str(k): v for k, v in result.statuses.items()},
        "req_per_s": round(result.requests / result.seconds, 1),
    }
