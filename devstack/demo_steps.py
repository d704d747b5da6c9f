"""The demo's walkthrough through the REST API: upload digits, tune SPT, predict, zero-shot colours.

Every call goes through the public API with the demo tenant's key, as a client would make it.
``follow_job`` (print a job's events until it ends) is reused by the end-to-end tests.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

from app.core.status import TERMINAL_STATUSES, JobStatus
from devstack.backbones import DEMO_ZOO_CLIP, DEMO_ZOO_VIT

# On the zoo's MAE ViT (demo profile): deep prompts from a prototype init (SPT's "random": prompts start
# as tokens sampled from the training images' own tokens). lr, weight decay and warm-up are SPT's defaults
# for an MAE ViT (0.1, 1e-4, 1 epoch: models/spt/config.py TRAIN_DEFAULTS, which this measurement set):
# on the demo profile (bilinear digits) MAE ViT 54 % test vs supervised ViT 39 %; lr 0.03 gave 46 %.
DEMO_SPT_CONFIG = {
    "epochs": 10,
    "batch_size": 64,
    "mode": "deep",
    "num_prompts": 8,
    "init": "random",
}
# Zero-shot colour naming with the zoo's CLIP: colour is what the tiny CLIP learns first (docs/zoo.md).
COLOUR_TEST_SEED = 7  # a world seed no zoo pretraining stream uses for these images
COLOUR_IMAGES = 128  # 16 per colour, sent 64 per request (the default PROMPTUNE_MAX_PREDICT_IMAGES)


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def spt_on_digits(client: Any, archive: Path) -> dict[str, Any]:
    """Upload the digits zip, run the SPT job while printing its events; returns the finished job."""
    with open(archive, "rb") as fh:
        dataset = _ok(
            client.post(
                "/v1/datasets",
                files={"file": ("digits.zip", fh, "application/zip")},
                data={"name": "digits"},
            )
        )
    say(
        f"uploaded the digits dataset: {dataset['num_images']} images, {dataset['num_classes']} classes, "
        f"splits {dataset['splits']}"
    )
    body = {
        "method": "spt",
        "backbone": DEMO_ZOO_VIT,
        "dataset_id": dataset["id"],
        "config": DEMO_SPT_CONFIG,
        "seed": 0,
    }
    job = _ok(client.post("/v1/jobs", json=body))
    say(f"started SPT job {job['id']} (deep prompts, prototype init) on {DEMO_ZOO_VIT}")
    job = follow_job(client, job["id"])
    if job["status"] != JobStatus.SUCCEEDED:
        raise RuntimeError(f"job {job['status']}: {job['error']}")
    metrics = job["metrics"]
    say(
        f"job succeeded: model {job['model_id']}; val accuracy {metrics.get('val_acc', 0):.1%}, "
        f"test accuracy {metrics.get('test_acc', 0):.1%} ({metrics.get('num_test')} test images)"
    )
    return job


def predict_digits(client: Any, job: dict[str, Any]) -> None:
    """One test image per digit through ``/v1/models/{id}/predict``."""
    from devstack.sample_data import digit_images

    first_of_class: dict[str, Any] = {}
    for d in digit_images(resample="bilinear"):  # the same images as the uploaded zip
        if d.split == "test":
            first_of_class.setdefault(d.label, d)
    samples = list(first_of_class.values())
    files = [("images", (f"{n}.png", io.BytesIO(d.png), "image/png")) for n, d in enumerate(samples)]
    response = client.post(f"/v1/models/{job['model_id']}/predict", files=files, data={"top_k": "3"})
    predictions = _ok(response)["predictions"]
    say("predictions on a few test images (truth -> predicted, probability):")
    right = 0
    for sample, pred in zip(samples, predictions, strict=True):
        ok = pred["label"] == sample.label
        right += ok
        say(f"  {sample.label:>6} -> {pred['label']:<6} {pred['score']:.2f}  {'ok' if ok else 'wrong'}")
    say(
        f"{right}/{len(samples)} right here; test accuracy over the whole test split: "
        f"{job['metrics'].get('test_acc', 0):.1%}"
    )


def write_colour_images(folder: Path, n: int = COLOUR_IMAGES) -> list[tuple[str, Path]]:
    """World images of one coloured object each, balanced over the 8 colours: ``(colour, png path)``."""
    from PIL import Image

    from models.zoo.tasks import build_task

    task = build_task("colour", seed=COLOUR_TEST_SEED, sizes={"test": n})
    images, labels = task.split("test")
    out = []
    for i, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        name = task.class_names[label]
        path = folder / name / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        out.append((name, path))
    return out


def zero_shot_colours(client: Any, folder: Path) -> float:
    """Classify world colour images zero-shot with the zoo CLIP through ``/v1/predict/zero-shot``."""
    import json

    from models.zoo.world import COLOUR_NAMES, SHAPES

    samples = write_colour_images(folder)
    say(f"wrote {len(samples)} world images of coloured shapes to {folder} (16 per colour)")
    classes = list(COLOUR_NAMES)
    templates = [f"{{}} {shape}" for shape in SHAPES]  # "red circle", "red star", ... averaged per class
    right = 0
    for start in range(0, len(samples), 64):
        batch = samples[start : start + 64]
        files = [("images", (p.name, p.read_bytes(), "image/png")) for _, p in batch]
        form = {
            "classes": json.dumps(classes),
            "templates": json.dumps(templates),
            "backbone": DEMO_ZOO_CLIP,
            "top_k": "3",
        }
        predictions = _ok(client.post("/v1/predict/zero-shot", files=files, data=form))["predictions"]
        right += sum(p["label"] == truth for (truth, _), p in zip(batch, predictions, strict=True))
    accuracy = right / len(samples)
    say(
        f"zero-shot colour naming with {DEMO_ZOO_CLIP} (classes {', '.join(classes)}; no training): "
        f"{right}/{len(samples)} = {accuracy:.1%} (chance {1 / len(classes):.1%})"
    )
    return accuracy


def follow_job(client: Any, job_id: str, *, timeout: float = 900.0, echo: bool = True) -> dict[str, Any]:
    """Print the job's events as they arrive until it is terminal; returns the final job."""
    deadline = time.monotonic() + timeout
    after, shown = 0, -1
    while True:
        for event in _ok(client.get(f"/v1/jobs/{job_id}/events", params={"after": after}))["data"]:
            after = max(after, event["id"])
            progress = (event.get("data") or {}).get("progress")
            if isinstance(progress, int | float):  # progress events: one line per 10 %
                if int(progress * 10) <= shown:
                    continue
                shown = int(progress * 10)
            if echo:
                say(f"  [{event['type']}] {_describe(event)}")
        job = _ok(client.get(f"/v1/jobs/{job_id}"))
        if job["status"] in TERMINAL_STATUSES:
            return dict(job)
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f} s")
        time.sleep(0.5)


def _describe(event: dict[str, Any]) -> str:
    data = event.get("data") or {}
    if event["type"] == "metrics":
        parts = [
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in data.items()
            if k in ("train_loss", "val_acc", "val_loss")
        ]
        return f"epoch {data.get('epoch')}: " + ", ".join(parts)
    if "step" in data and "total_steps" in data:
        loss = f", loss {data['loss']:.3f}" if isinstance(data.get("loss"), float) else ""
        return f"step {data['step']}/{data['total_steps']} ({data.get('progress', 0):.0%}){loss}"
    return str(event["message"])


def _ok(response: Any) -> Any:
    if response.status_code >= 400:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path} -> {response.status_code}: "
            f"{response.text[:500]}"
        )
    return response.json()
