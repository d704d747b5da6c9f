"""The demo's last steps: a linear-probe baseline on the same split, the report through the SDK, what next.

The baseline is SPT with no prompts (only the classification head learns: a linear probe of the frozen
ViT), on the same dataset and seed, so the same train/val/test split; its learning rate is ``"auto"``
(chosen on the validation split), so the comparison does not favour the prompts by a badly chosen rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.core.status import JobStatus
from devstack.backbones import DEMO_ZOO_VIT
from devstack.demo_steps import DEMO_SPT_CONFIG, follow_job, say

DEMO_BASELINE_CONFIG = {**DEMO_SPT_CONFIG, "num_prompts": 0, "init": "xavier", "lr": "auto"}


def write_test_samples(folder: Path, per_class: int = 2) -> Path:
    """A few of the uploaded test images as files (``<folder>/<class>/<n>.png``) for the next steps' commands."""
    from devstack.sample_data import digit_images

    counts: dict[str, int] = {}
    for image in digit_images(resample="bilinear"):  # the same images as the uploaded zip
        if image.split != "test" or counts.get(image.label, 0) >= per_class:
            continue
        path = folder / image.label / f"{counts.get(image.label, 0)}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image.png)
        counts[image.label] = counts.get(image.label, 0) + 1
    return folder


def linear_probe_baseline(client: Any, spt_job: dict[str, Any]) -> dict[str, Any]:
    """Train the linear probe on the SPT job's dataset and seed; returns the finished job."""
    body = {
        "method": "spt",
        "backbone": DEMO_ZOO_VIT,
        "dataset_id": spt_job["dataset_id"],
        "config": DEMO_BASELINE_CONFIG,
        "seed": spt_job["seed"],
        "metadata": {"demo": "linear-probe baseline"},
    }
    response = client.post("/v1/jobs", json=body)
    if response.status_code != 201:
        raise RuntimeError(f"POST /v1/jobs -> {response.status_code}: {response.text[:500]}")
    job = response.json()
    say(f"baseline job {job['id']}: a linear probe (no prompts, lr chosen on validation) on the same split")
    job = follow_job(client, job["id"], echo=False)
    if job["status"] != JobStatus.SUCCEEDED:
        raise RuntimeError(f"baseline job {job['status']}: {job['error']}")
    return job


def report_through_the_sdk(base_url: str, key: str, model_id: str) -> dict[str, Any]:
    """The tuned model's evaluation report, fetched as a user would: with the Python SDK."""
    from promptune import Client

    with Client(base_url=base_url, api_key=key) as sdk:
        report = sdk.models.report(model_id)
    worst = sorted(report.per_class.items(), key=lambda item: item[1].f1)[:3]
    say(
        f"report (SDK: client.models.report): accuracy {report.accuracy:.1%}, macro-F1 {report.macro_f1:.3f} "
        f"on {report.num_samples} {report.split} images; hardest classes: "
        + ", ".join(f"{name} F1 {scores.f1:.2f}" for name, scores in worst)
    )
    return {"accuracy": report.accuracy, "macro_f1": report.macro_f1}


def print_next_steps(base_url: str, key: str, model_id: str, *, serving: bool) -> None:
    """What to do next with the SDK and the CLI, against a server that is (or can be) running."""
    say("next steps:")
    if not serving:
        say("  the demo's servers are stopped; everything it made stays in ./var. Serve it again with")
        say("    .venv/bin/promptune serve            # the API; finds the demo's zoo backbones by itself")
        say("    redis-server & .venv/bin/promptune worker   # only to train new jobs")
        base_url = "http://127.0.0.1:8000"
    say(f"  in a browser: {base_url}/ (the web console; sign in with the key below)")
    say(f"  export PROMPTUNE_BASE_URL={base_url} PROMPTUNE_API_KEY={key}")
    say("  from the shell:")
    say("    .venv/bin/promptune models list")
    say(f"    .venv/bin/promptune models report {model_id}")
    say(f"    .venv/bin/promptune predict {model_id} var/sample/digits-test/three/*.png")
    say(f"    .venv/bin/promptune models download {model_id} ./my-digits-model   # checkpoint, card, plots")
    say("    .venv/bin/promptune datasets upload path/to/folder   # then: jobs create ... --watch")
    say("  from Python:")
    say("    from promptune import Client")
    say("    client = Client()   # reads PROMPTUNE_BASE_URL / PROMPTUNE_API_KEY")
    say(f'    client.models.predict("{model_id}", ["var/sample/digits-test/three/0.png"])')
    say("  docs: docs/sdk.md (SDK and CLI), docs/reports.md (the report), /docs on the API (OpenAPI)")
