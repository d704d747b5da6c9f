"""Overload through the real app: a full prediction queue answers 503 with Retry-After, and every request
it accepted is answered (the engine's own behaviour is tested in tests/serving)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import torch
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.serving.engine import InferenceEngine, make_run_batch
from tests.api.test_datasets import assert_error
from tests.api.test_models import add_model, backbones_file, image_files, zoo  # noqa: F401 - fixtures


def test_a_full_queue_answers_503_with_retry_after(
    app: Any,
    client: TestClient,
    headers_a: dict[str, str],
    settings: Settings,
    database_url: str,
    zoo: dict[str, Any],  # noqa: F811
) -> None:
    model_id = add_model(settings, database_url, "tenant-a", "spt", zoo)
    url, files = f"/v1/models/{model_id}/predict", image_files((255, 0, 0))
    assert client.post(url, headers=headers_a, files=files).status_code == 200  # loads the model

    gate, run = threading.Event(), make_run_batch(torch.device("cpu"), "float32")

    def held(items: Any) -> list[torch.Tensor]:
        assert gate.wait(30)
        return run(items)

    limits = settings.model_copy(update={"inference_max_queue_images": 2, "inference_max_batch_images": 1})
    app.state.serving = InferenceEngine(limits, run_batch=held)
    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(client.post, url, headers=headers_a, files=files) for _ in range(8)]
            # The refusals come back at once, while the accepted requests wait at the gate.
            early = [f.result() for _, f in zip(range(5), as_completed(futures, timeout=20), strict=False)]
            assert all(r.status_code == 503 for r in early), [r.status_code for r in early]
            gate.set()
            responses = [future.result(timeout=30) for future in futures]
    finally:
        gate.set()
        app.state.serving.close()
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 3 + [503] * 5, codes  # one in the forward, two queued; the rest refused
    for response in responses:
        if response.status_code == 503:
            assert_error(response, 503, "overloaded")
            assert int(response.headers["retry-after"]) >= 1
        else:
            assert response.json()["predictions"][0]["label"]
