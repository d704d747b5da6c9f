"""``promptune demo``: the whole service on one machine, end to end, through its REST API.

On the embedded default (SQLite under ``data_dir``, a redis-server started on a free loopback port
unless ``PROMPTUNE_REDIS_URL`` answers, the API under uvicorn and one Celery worker as
subprocesses) it migrates the database, writes two small demo backbones (a timm ViT and an
open_clip CLIP; RANDOM init for now, a later release ships pretrained ones), builds the bundled
digits dataset, creates a tenant and key, uploads the dataset, trains an SPT job while printing its
events, and predicts a few test images. ``--once`` stops everything after that; otherwise the stack
keeps serving until Ctrl-C.

The helpers (:class:`Proc`, :func:`start_redis`, :func:`start_api`, :func:`start_worker`,
:func:`ensure_demo_backbones`) are reused by the end-to-end tests.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.settings import get_settings

# Small enough to train in well under a minute on 2 CPU cores (digits are 32 px, 16 patches).
DEMO_VIT = {
    "family": "timm",
    "arch": "vit_tiny_patch16_224",
    "kind": "supervised",
    "model_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2},
}
DEMO_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
# A random frozen backbone needs a large learning rate for its head; ~67 % test accuracy after 10 epochs.
DEMO_SPT_CONFIG = {
    "epochs": 10,
    "batch_size": 64,
    "lr": 0.1,
    "weight_decay": 0.0001,
    "warmup_epochs": 1,
    "mode": "deep",
    "num_prompts": 8,
    "init": "random",
}
ZOO_VERSION = 1  # bump to rebuild the demo backbones


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


# ---- processes ---------------------------------------------------------------------------------
class Proc:
    """A child process with its output in a log file; stopped by its own pid, never by name."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name, self.log_path = name, log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        # Own session: a Ctrl-C in the terminal reaches only us, and we stop the children in order.
        self.popen = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env or os.environ),
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()


def free_port(preferred: int | None = None) -> int:
    if preferred:
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", preferred))
            return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_alive(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except Exception:  # noqa: BLE001 - anything means "not usable"
        return False


def start_redis(directory: Path) -> tuple[Proc, str]:
    """A private redis-server on a free loopback port (no persistence: the DB holds the job state)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError(
            "redis-server is not installed (apt-get install redis-server, or set PROMPTUNE_REDIS_URL)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [
        exe,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
        "--daemonize",
        "no",
    ]
    proc = Proc("redis", argv, directory / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not redis_alive(url):
        if not proc.alive() or time.monotonic() > deadline:
            proc.stop()
            raise RuntimeError(f"redis-server did not start:\n{proc.tail()}")
        time.sleep(0.05)
    return proc, url


def start_api(env: Mapping[str, str], port: int, log_dir: Path) -> Proc:
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    return Proc("api", argv, log_dir / "api.log", env)


def start_worker(
    env: Mapping[str, str], log_dir: Path, *, name: str = "worker", concurrency: int = 1
) -> Proc:
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "-Q",
        "jobs",
        f"--concurrency={concurrency}",
        "--loglevel=INFO",
        f"--hostname={name}@%h",
        "--without-mingle",
        "--without-gossip",
    ]
    return Proc(name, argv, log_dir / f"{name}.log", env)


def wait_ready(base_url: str, proc: Proc, timeout: float = 90.0) -> None:
    """Wait until ``/readyz`` answers 200 (database, broker, storage and migrations all fine)."""
    import httpx

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"the {proc.name} process exited:\n{proc.tail()}")
        try:
            response = httpx.get(f"{base_url}/readyz", timeout=5)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"the API was not ready after {timeout:.0f} s: {last}\n{proc.tail()}")


# ---- demo backbones --------------------------------------------------------------------------------
def ensure_demo_backbones(zoo_dir: Path) -> Path:
    """Write ``demo-vit`` and ``demo-clip`` (seeded random init) and their registry; reuse if intact."""
    from models.backbones.weights import sha256_file

    zoo_dir = zoo_dir.resolve()
    registry_path, version_path = zoo_dir / "backbones.json", zoo_dir / "zoo-version"
    with contextlib.suppress(OSError, ValueError, KeyError):
        if version_path.read_text().strip() == str(ZOO_VERSION):
            registry = json.loads(registry_path.read_text())
            vit, clip = registry["demo-vit"], registry["demo-clip"]
            clip_weights = Path(clip["weights"].removeprefix("local-dir:")) / "open_clip_model.safetensors"
            if sha256_file(vit["weights"]) == vit["sha256"] and sha256_file(clip_weights) == clip["sha256"]:
                return registry_path
    registry = build_demo_backbones(zoo_dir)
    zoo_dir.mkdir(parents=True, exist_ok=True)
    registry_path.write_text(json.dumps(registry, indent=2, sort_keys=True))
    version_path.write_text(str(ZOO_VERSION))
    return registry_path


def build_demo_backbones(zoo_dir: Path) -> dict[str, Any]:
    """Seeded random-init backbones written with the models library's save helpers (sha256 recorded)."""
    import torch

    from models import BackboneSpec, load_backbone, save_clip_local_dir, save_timm_weights

    torch.manual_seed(0)
    vit = load_backbone(BackboneSpec.from_dict({**DEMO_VIT, "weights": "random"}))
    vit_path = zoo_dir / "demo-vit.safetensors"
    vit_sha = save_timm_weights(vit.model, vit_path)
    torch.manual_seed(0)
    clip_spec = {"family": "open_clip", "arch": "promptune-demo-clip", "kind": "clip"}
    clip = load_backbone(
        BackboneSpec.from_dict({**clip_spec, "weights": "random", "model_config": DEMO_CLIP_CONFIG})
    )
    clip_sha = save_clip_local_dir(clip.model, DEMO_CLIP_CONFIG, zoo_dir / "demo-clip")
    return {
        "demo-vit": {**DEMO_VIT, "weights": str(vit_path), "sha256": vit_sha},
        "demo-clip": {**clip_spec, "weights": f"local-dir:{zoo_dir / 'demo-clip'}", "sha256": clip_sha},
    }


# ---- the demo itself ---------------------------------------------------------------------------------
TERMINAL = ("succeeded", "failed", "cancelled")


def run_demo(*, once: bool, port: int = 8000) -> int:
    settings = get_settings()
    data_dir = Path(settings.data_dir).resolve()
    log_dir = data_dir / "logs"
    procs: list[Proc] = []
    try:
        started = time.monotonic()
        say(f"data under {data_dir} (SQLite database, storage, logs in {log_dir})")
        redis_url = settings.redis_url
        if not redis_alive(redis_url):
            proc, redis_url = start_redis(data_dir / "redis")
            procs.append(proc)
            say(f"started redis-server on {redis_url}")
        else:
            say(f"using the running Redis at {redis_url}")

        database_url = settings.resolved_database_url
        from app.cli import migrate_database

        migrate_database(database_url)
        say("database migrated")
        registry = ensure_demo_backbones(data_dir / "zoo")
        say(f"demo backbones 'demo-vit' (timm ViT) and 'demo-clip' (open_clip CLIP) registered in {registry}")
        say(
            "NOTE: these demo backbones are RANDOMLY initialised (no pretrained weights ship yet; a later release"
        )
        say("      replaces them), so the accuracy below shows the pipeline working, not what SPT reaches.")

        env = {
            **os.environ,
            "PROMPTUNE_DATA_DIR": str(data_dir),
            "PROMPTUNE_DATABASE_URL": database_url,
            "PROMPTUNE_REDIS_URL": redis_url,
            "PROMPTUNE_BACKBONES_FILE": str(registry),
            "PROMPTUNE_DEFAULT_BACKBONE": "demo-clip",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        port = free_port(port)
        base_url = f"http://127.0.0.1:{port}"
        api = start_api(env, port, log_dir)
        procs.append(api)
        procs.append(start_worker(env, log_dir))
        key = _create_key(database_url)
        wait_ready(base_url, api)
        say(f"API ready at {base_url} (OpenAPI docs: {base_url}/docs); one Celery worker running")

        _walkthrough(base_url, key)
        say(f"done in {time.monotonic() - started:.0f} s")
        say(f"API: {base_url}   key: {key}")
        say(f'try: curl -H "Authorization: Bearer {key}" {base_url}/v1/jobs')
        if once:
            return 0
        say("serving until Ctrl-C")
        while all(p.alive() for p in procs):
            time.sleep(1)
        dead = next(p for p in procs if not p.alive())
        say(f"the {dead.name} process exited; stopping:\n{dead.tail()}")
        return 1
    except KeyboardInterrupt:
        say("stopping")
        return 130
    except Exception as exc:  # noqa: BLE001 - report what failed and where to look, then stop cleanly
        say(f"FAILED: {type(exc).__name__}: {exc}")
        say(f"logs: {log_dir}")
        return 1
    finally:
        for proc in reversed(procs):
            proc.stop()


def _create_key(database_url: str) -> str:
    from app.db import repo
    from app.db.session import session_scope

    with session_scope(database_url) as session:
        tenant = repo.get_or_create_tenant(session=session, name="demo")
        _, key = repo.create_api_key(session=session, tenant_id=tenant.id)
    return key


def _walkthrough(base_url: str, key: str) -> None:
    import httpx

    from app.sample_data import digit_images, write_digits_zip

    settings = get_settings()
    archive = Path(settings.data_dir).resolve() / "sample" / "digits.zip"
    if not archive.is_file():
        write_digits_zip(archive)
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
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
        job = _ok(
            client.post(
                "/v1/jobs",
                json={
                    "method": "spt",
                    "backbone": "demo-vit",
                    "dataset_id": dataset["id"],
                    "config": DEMO_SPT_CONFIG,
                    "seed": 0,
                },
            )
        )
        say(f"started SPT job {job['id']} (deep prompts, prototype init) on demo-vit")
        job = follow_job(client, job["id"])
        if job["status"] != "succeeded":
            raise RuntimeError(f"job {job['status']}: {job['error']}")
        metrics = job["metrics"]
        say(
            f"job succeeded: model {job['model_id']}; val accuracy {metrics.get('val_acc', 0):.1%}, "
            f"test accuracy {metrics.get('test_acc', 0):.1%} ({metrics.get('num_test')} test images)"
        )

        first_of_class: dict[str, Any] = {}
        for d in digit_images():
            if d.split == "test":
                first_of_class.setdefault(d.label, d)
        samples = list(first_of_class.values())  # one test image per digit
        files = [("images", (f"{n}.png", io.BytesIO(d.png), "image/png")) for n, d in enumerate(samples)]
        predictions = _ok(
            client.post(f"/v1/models/{job['model_id']}/predict", files=files, data={"top_k": "3"})
        )["predictions"]
        say("predictions on a few test images (truth -> predicted, probability):")
        right = 0
        for sample, pred in zip(samples, predictions, strict=True):
            ok = pred["label"] == sample.label
            right += ok
            say(f"  {sample.label:>6} -> {pred['label']:<6} {pred['score']:.2f}  {'ok' if ok else 'wrong'}")
        say(
            f"{right}/{len(samples)} right here; test accuracy over the whole test split: "
            f"{metrics.get('test_acc', 0):.1%}"
        )


def follow_job(client: Any, job_id: str, *, timeout: float = 900.0, echo: bool = True) -> dict[str, Any]:
    """Print the job's events as they arrive until it is terminal; returns the final job."""
    deadline = time.monotonic() + timeout
    after, shown = 0, -1
    while True:
        for event in _ok(client.get(f"/v1/jobs/{job_id}/events", params={"after": after})):
            after = max(after, event["id"])
            progress = (event.get("data") or {}).get("progress")
            if isinstance(progress, int | float):  # progress events: one line per 10 %
                if int(progress * 10) <= shown:
                    continue
                shown = int(progress * 10)
            if echo:
                say(f"  [{event['type']}] {_describe(event)}")
        job = _ok(client.get(f"/v1/jobs/{job_id}"))
        if job["status"] in TERMINAL:
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
