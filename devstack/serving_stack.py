"""The serving benchmark's world: a real API (uvicorn, SQLite, a private redis-server) with backbones and
tuned models made for it, and the in-process references the HTTP figures are compared with.

Tuned models here are random-init SPT prompt sets saved as real checkpoints and registered as a worker
would (a row + the file in storage): the benchmark measures speed, not accuracy, so no training is needed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from app.core.db import repo
from app.core.db.migrate import upgrade
from app.core.db.session import session_scope
from app.core.storage import make_storage, model_key
from devstack.stack import Proc, free_port, start_api, temporary_redis, wait_ready
from models import build_method, load_backbone, save_checkpoint

# name -> backbone spec. "tiny": the zoo's architectures (random weights: speed does not depend on them);
# "vit-b": ViT-B-sized random weights.
BACKBONES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "vit": {"family": "timm", "arch": "vit_tiny_patch16_224", "weights": "random", "kind": "supervised",
                "model_kwargs": {"img_size": 32, "patch_size": 4, "embed_dim": 192, "depth": 4, "num_heads": 3}},
        "clip": {"family": "open_clip", "arch": "promptune-zoo-clip-tiny", "weights": "random", "kind": "clip",
                 "model_config": {"embed_dim": 128,
                                  "vision_cfg": {"image_size": 32, "layers": 4, "width": 192, "head_width": 64,
                                                 "patch_size": 4},
                                  "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2,
                                               "layers": 4}}},
    },
    "vit-b": {
        "vit": {"family": "timm", "arch": "vit_base_patch16_224", "weights": "random", "kind": "supervised"},
        "clip": {"family": "open_clip", "arch": "ViT-B-16", "weights": "random", "kind": "clip"},
    },
}  # fmt: skip
SPT_CONFIG = {"mode": "deep", "num_prompts": 10, "init": "xavier"}
CLASSES = [f"class {i}" for i in range(10)]


def image_bytes(size: int, seed: int = 0) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(size, size, 3, generator=generator) * 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def median_seconds(run: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclass
class Served:
    base_url: str
    key: str
    models: dict[str, list[str]]  # backbone name -> tuned model ids
    backbones: dict[str, dict[str, Any]]  # registry name -> spec
    proc: Proc

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def _tuned_models(
    root: Path, backbone_name: str, spec: dict[str, Any], count: int, tenant_id: str
) -> list[str]:
    """``count`` random-init SPT checkpoints on one backbone, stored and registered as a worker would."""
    backbone = load_backbone(_spec(spec))
    storage = make_storage(None, root)
    ids = []
    for seed in range(count):
        torch.manual_seed(seed)
        method: Any = build_method("spt", backbone, SPT_CONFIG, CLASSES)
        method.reset_parameters(seed)
        path = root / "tmp" / f"{backbone_name}-{seed}.safetensors"
        sha = save_checkpoint(method, path)
        with session_scope(f"sqlite:///{root / 'promptune.db'}") as session:
            row = repo.create_model(
                session=session, tenant_id=tenant_id, method="spt", backbone=backbone_name, classes=CLASSES,
                metrics={}, checkpoint_key="pending", checkpoint_sha256=sha,
            )  # fmt: skip
            row.checkpoint_key = model_key(tenant_id, row.id)
            key, model_id = row.checkpoint_key, row.id
        storage.put_file(key, path)
        ids.append(model_id)
    return ids


def _spec(values: dict[str, Any]) -> Any:
    from models import BackboneSpec

    return BackboneSpec.from_dict(values)


@contextlib.contextmanager
def served(
    root: Path, size: str, *, models_per_backbone: int, env: dict[str, str] | None = None
) -> Iterator[Served]:
    """The API on ``root`` with the ``size`` backbones, ``models_per_backbone`` tuned SPT models on the ViT."""
    specs = {f"{size}-{kind}": spec for kind, spec in BACKBONES[size].items()}
    (root / "backbones.json").write_text(json.dumps(specs))
    db_url = f"sqlite:///{root / 'promptune.db'}"
    upgrade(db_url)
    with session_scope(db_url) as session:
        tenant = repo.create_tenant(session=session, name="bench")
        _, key = repo.create_api_key(session=session, tenant_id=tenant.id)
        tenant_id = tenant.id
    vit_name = f"{size}-vit"
    models = {vit_name: _tuned_models(root, vit_name, specs[vit_name], models_per_backbone, tenant_id)}
    redis = temporary_redis()
    port = free_port()
    server_env = {
        **os.environ, "PROMPTUNE_DATA_DIR": str(root), "PROMPTUNE_DATABASE_URL": db_url,
        "PROMPTUNE_REDIS_URL": redis.url, "PROMPTUNE_BACKBONES_FILE": str(root / "backbones.json"),
        "PROMPTUNE_DEFAULT_BACKBONE": f"{size}-clip", "PROMPTUNE_INFERENCE_CACHE_SIZE": "32",
        "PROMPTUNE_MAX_PREDICT_IMAGES": "64", "HF_HUB_OFFLINE": "1", **(env or {}),
    }  # fmt: skip
    proc = start_api(server_env, port, root / "logs")
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, timeout=120, path="/healthz")
        yield Served(f"http://127.0.0.1:{port}", key, models, specs, proc)
    finally:
        proc.stop()
        redis.close()
        with contextlib.suppress(OSError):  # kept for a look after the temp folder is gone
            (Path(tempfile.gettempdir()) / "promptune-bench-api.log").write_bytes(
                (root / "logs" / "api.log").read_bytes()
            )
