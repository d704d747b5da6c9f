"""A small, real service world for the fuzz, load and checkpoint tests (and scripts/loadtest.py).

Everything goes through the service's own code paths: the dataset is uploaded through the API, the jobs
are created through the API, and the tuned models are trained by the real worker entry point
(``worker.runner.run_job``, in this process) on tiny random-init backbones, which saves each checkpoint
with ``models.save_checkpoint``, puts it in the app's storage and records its sha256 in the database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from app.core.db import repo
from app.core.db.migrate import upgrade
from app.core.db.session import session_scope
from app.core.db.tables import Job
from app.core.settings import Settings
from tests.api.helpers import auth, image_folder_zip, png_bytes
from tests.tiny import TINY_CLIP_CONFIG

TINY_VIT_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}
SPT_CONFIG = {"epochs": 1, "batch_size": 4, "lr": 0.01, "mode": "deep", "num_prompts": 2, "init": "random"}
RPP_CONFIG = {"epochs": 1, "batch_size": 4, "lr": 0.01, "n_ctx": 2}
CLASSES = {"red": 4, "green": 4, "blue": 4}


class HttpClient(Protocol):
    """``httpx.Client`` or Starlette's ``TestClient``."""

    def get(self, url: str, **kwargs: Any) -> Any: ...

    def post(self, url: str, **kwargs: Any) -> Any: ...


@dataclass
class World:
    settings: Settings
    key: str
    dataset_id: str
    spt_model_id: str
    rpp_model_id: str | None = None
    job_ids: dict[str, str] = field(default_factory=dict)  # role -> id: spt, rpp, queued, init_from
    classifier_id: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return auth(self.key)


def write_backbones(path: Path) -> Path:
    """The tiny backbones every world uses (random weights: nothing to download)."""
    registry = {
        "tiny-vit": {
            "family": "timm",
            "arch": "vit_tiny_patch16_224",
            "weights": "random",
            "kind": "supervised",
            "model_kwargs": TINY_VIT_KWARGS,
        },
        "tiny-clip": {
            "family": "open_clip",
            "arch": "promptune-test-tiny-clip",
            "weights": "random",
            "kind": "clip",
            "model_config": TINY_CLIP_CONFIG,
        },
    }
    path.write_text(json.dumps(registry))
    return path


def world_settings(root: Path, *, database_url: str | None = None, redis_url: str | None = None) -> Settings:
    """Settings for a world under ``root`` (SQLite there unless ``database_url``), migrated to head."""
    root.mkdir(parents=True, exist_ok=True)
    url = database_url or f"sqlite:///{root / 'promptune.db'}"
    upgrade(url)
    return Settings(
        environment="test",
        data_dir=root / "data",
        database_url=url,
        backbones_file=write_backbones(root / "backbones.json"),
        redis_url=redis_url or "redis://127.0.0.1:9/0",
        default_backbone="tiny-clip",
        max_upload_bytes=2 * 1024 * 1024,
        max_member_bytes=1024 * 1024,
        max_uncompressed_bytes=8 * 1024 * 1024,
        max_archive_members=200,
        max_image_pixels=512 * 512,
        max_predict_images=4,
        max_concurrent_jobs_per_tenant=5,
        checkpoint_every_steps=0,
    )


def create_key(settings: Settings, tenant: str) -> str:
    with session_scope(settings.resolved_database_url) as session:
        row = repo.get_or_create_tenant(session=session, name=tenant)
        _, key = repo.create_api_key(session=session, tenant_id=row.id)
    return key


def upload_dataset(client: HttpClient, headers: dict[str, str]) -> str:
    zipped = image_folder_zip(CLASSES)
    response = client.post("/v1/datasets", headers=headers, files={"file": ("colors.zip", zipped)})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def create_job(
    client: HttpClient, headers: dict[str, str], dataset_id: str, method: str, config: dict[str, Any]
) -> str:
    backbone = "tiny-vit" if method == "spt" else "tiny-clip"
    body = {"method": method, "backbone": backbone, "dataset_id": dataset_id, "config": config, "seed": 0}
    response = client.post("/v1/jobs", headers=headers, json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def train(settings: Settings, job_id: str) -> str:
    """Run the job with the real worker code in this process; returns the tuned model's id."""
    from worker.runner import run_job

    outcome = run_job(job_id, settings=settings, owner="world")
    with session_scope(settings.resolved_database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert outcome.outcome == "succeeded" and job.model_id, (outcome, job.error_code, job.error_message)
        return str(job.model_id)


def build_world(
    client: HttpClient,
    settings: Settings,
    *,
    rpp: bool = False,
    queued_job: bool = True,
    tenant: str = "fuzz",
    classifier: bool = False,
) -> World:
    """A tenant with a dataset, a trained SPT model, optionally a trained RPP model, and queued jobs.

    The queued jobs: an SPT one, and with ``rpp`` an RPP one whose ``init_from`` names the RPP model.
    With ``classifier``, a zero-shot classifier (on tiny-clip) created through the API.
    """
    key = create_key(settings, tenant)
    headers = auth(key)
    dataset_id = upload_dataset(client, headers)
    jobs = {"spt": create_job(client, headers, dataset_id, "spt", SPT_CONFIG)}
    world = World(settings, key, dataset_id, spt_model_id=train(settings, jobs["spt"]), job_ids=jobs)
    if rpp:
        jobs["rpp"] = create_job(client, headers, dataset_id, "rpp", RPP_CONFIG)
        world.rpp_model_id = train(settings, jobs["rpp"])
    if queued_job:
        jobs["queued"] = create_job(client, headers, dataset_id, "spt", SPT_CONFIG)
        if world.rpp_model_id:  # a queued job that starts from the RPP model: deleting it must be refused
            config = {**RPP_CONFIG, "init_from": world.rpp_model_id}
            jobs["init_from"] = create_job(client, headers, dataset_id, "rpp", config)
    if classifier:
        body = {"classes": list(CLASSES), "backbone": "tiny-clip", "name": "colors"}
        response = client.post("/v1/classifiers", headers=headers, json=body)
        assert response.status_code == 201, response.text
        world.classifier_id = str(response.json()["id"])
    return world


def predict_files(count: int = 1, size: int = 32) -> list[tuple[str, tuple[str, bytes, str]]]:
    colors = [(220, 20, 20), (20, 200, 40), (30, 40, 220), (120, 120, 120)]
    return [
        ("images", (f"{i}.png", png_bytes(colors[i % len(colors)], size=size), "image/png"))
        for i in range(count)
    ]
