"""The serving engine on real tiny models: shared forwards, isolation, a bounded queue, deadlines."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch

from app.core.settings import Settings
from app.serving.engine import InferenceEngine, Overloaded, make_run_batch
from app.serving.lane import DeadlineExceeded
from models import Backbone, build_method, load_backbone
from tests.tiny import tiny_vit_spec

Items = Sequence[tuple[Any, torch.Tensor]]


@pytest.fixture(scope="module")
def vit() -> Backbone:
    torch.manual_seed(0)
    return load_backbone(tiny_vit_spec())


def spt(vit: Backbone, seed: int, classes: int = 3) -> Any:
    torch.manual_seed(seed)
    method = build_method("spt", vit, {"mode": "deep", "num_prompts": 2}, [f"c{i}" for i in range(classes)])
    method.reset_parameters(seed)
    return method.eval()


class Poisoned(torch.nn.Module):
    """A target whose forward always fails (a broken model)."""

    class_names = ["x"]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("poisoned model")


class Recorder:
    """The real batched forward, recording each call's request count; optionally held at a gate."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[int] = []
        self.gate = gate
        self.run = make_run_batch(torch.device("cpu"), "float32")

    def __call__(self, items: Items) -> list[torch.Tensor]:
        self.calls.append(len(items))
        if self.gate is not None:
            assert self.gate.wait(30)
        return self.run(items)


def settings(**values: Any) -> Settings:
    base = {"inference_max_wait_ms": 50.0, "inference_timeout_seconds": 30.0}
    return Settings(environment="test", **{**base, **values})


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def run(engine: InferenceEngine, requests: list[tuple[Any, torch.Tensor, str]]) -> list[Any]:
    async def main() -> list[Any]:
        calls = [
            engine.logits(backbone="vit", target=t, images=x, tenant_id=tenant) for t, x, tenant in requests
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    return asyncio.run(main())


@pytest.fixture
def engines() -> Iterator[list[InferenceEngine]]:
    made: list[InferenceEngine] = []
    yield made
    for engine in made:
        engine.close()


def test_requests_for_different_models_share_forwards(vit: Backbone, images: torch.Tensor, engines) -> None:
    recorder = Recorder()
    engine = InferenceEngine(settings(), run_batch=recorder)
    engines.append(engine)
    models = [spt(vit, seed, classes=2 + seed % 3) for seed in range(6)]
    results = run(engine, [(m, images, "t") for m in models])
    for model, logits in zip(models, results, strict=True):
        with torch.no_grad():
            assert torch.allclose(logits, model(images), atol=1e-5)
    assert sum(recorder.calls) == 6 and len(recorder.calls) < 6  # batched: fewer calls than requests


def test_a_poisoned_request_fails_alone(vit: Backbone, images: torch.Tensor, engines) -> None:
    engine = InferenceEngine(settings(), run_batch=Recorder())
    engines.append(engine)
    good = [spt(vit, seed) for seed in range(4)]
    requests = (
        [(m, images, "t") for m in good[:2]]
        + [(Poisoned(), images, "t")]
        + [(m, images, "t") for m in good[2:]]
    )
    results = run(engine, requests)
    assert isinstance(results[2], RuntimeError) and "poisoned" in str(results[2])
    for model, logits in zip(good, results[:2] + results[3:], strict=True):
        with torch.no_grad():
            assert torch.allclose(logits, model(images), atol=1e-5)


def test_overload_is_refused_with_retry_after_and_loses_no_accepted_request(
    vit: Backbone, images: torch.Tensor, engines
) -> None:
    gate = threading.Event()
    engine = InferenceEngine(
        settings(inference_max_queue_images=6, inference_max_batch_images=2), run_batch=Recorder(gate)
    )
    engines.append(engine)
    model = spt(vit, 0)

    async def main() -> list[Any]:
        tasks = [
            asyncio.ensure_future(engine.logits(backbone="vit", target=model, images=images, tenant_id="t"))
        ]
        await asyncio.sleep(0.2)  # the first request is in the (held) forward; the queue is empty
        tasks += [
            asyncio.ensure_future(engine.logits(backbone="vit", target=model, images=images, tenant_id="t"))
            for _ in range(5)
        ]
        await asyncio.sleep(0.2)
        threading.Timer(0.5, gate.set).start()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    refused = [r for r in results if isinstance(r, Overloaded)]
    accepted = [r for r in results if isinstance(r, torch.Tensor)]
    assert len(refused) == 2 and len(accepted) == 4  # 1 running + 3 queued (6 images) accepted
    assert all(r.status == 503 and r.code == "overloaded" and r.retry_after >= 1 for r in refused)
    with torch.no_grad():
        assert all(torch.allclose(r, model(images), atol=1e-5) for r in accepted)


def test_one_tenant_cannot_take_the_whole_queue(vit: Backbone, images: torch.Tensor, engines) -> None:
    gate = threading.Event()
    engine = InferenceEngine(
        settings(inference_max_tenant_images=4, inference_max_batch_images=2), run_batch=Recorder(gate)
    )
    engines.append(engine)
    model = spt(vit, 0)
    threading.Timer(0.5, gate.set).start()
    results = run(engine, [(model, images, "greedy")] * 3 + [(model, images, "other")])
    assert [type(r).__name__ for r in results].count("Overloaded") == 1
    refused = next(r for r in results if isinstance(r, Overloaded))
    assert (refused.status, refused.code) == (429, "rate_limited")
    assert isinstance(results[3], torch.Tensor)  # the other tenant is served


def test_a_request_past_its_deadline_is_refused(vit: Backbone, images: torch.Tensor, engines) -> None:
    gate = threading.Event()
    engine = InferenceEngine(
        settings(inference_timeout_seconds=0.3, inference_max_batch_images=2), run_batch=Recorder(gate)
    )
    engines.append(engine)
    model = spt(vit, 0)
    threading.Timer(1.0, gate.set).start()
    results = run(engine, [(model, images, "t")] * 3)
    assert any(isinstance(r, DeadlineExceeded) for r in results)


def test_many_requests_for_one_model_batch_together(vit: Backbone, engines) -> None:
    # Requests are told apart by identity: equal-looking requests (same model, same image) once broke the lane.
    recorder = Recorder()
    engine = InferenceEngine(settings(), run_batch=recorder)
    engines.append(engine)
    model, image = spt(vit, 0), torch.zeros(1, 3, 32, 32)
    results = run(engine, [(model, image, "t")] * 8)
    with torch.no_grad():
        expected = model(image)
    assert all(isinstance(r, torch.Tensor) and torch.allclose(r, expected, atol=1e-5) for r in results)
    assert len(recorder.calls) < 8
    assert all(lane._thread.is_alive() for lane in engine.lanes().values())
