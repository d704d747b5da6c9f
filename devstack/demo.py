"""``promptune demo``: the whole service on one machine, end to end, through its REST API.

On the embedded default (SQLite under ``data_dir``, a redis-server started on a free loopback port
unless ``PROMPTUNE_REDIS_URL`` answers, the API under uvicorn and one Celery worker as
subprocesses) it migrates the database, builds Promptune's own small pretrained backbones (the zoo's
``demo`` profile: ``zoo-vit-mae-tiny`` and ``zoo-clip-tiny``, a few minutes on a CPU the first time,
then reused from ``data_dir/zoo``) and registers them, creates a tenant and key, uploads the bundled
digits, trains an SPT job on the ViT while printing its events, predicts a few test images, and names
the colour of world images zero-shot with the CLIP. ``--once`` stops everything after that; otherwise
the stack keeps serving until Ctrl-C.

The process helpers live in devstack/stack.py, the backbones in devstack/backbones.py and the API
walkthrough in devstack/demo_steps.py; the names the end-to-end tests use are re-exported here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from app.core.settings import get_settings
from devstack.backbones import (
    DEMO_ZOO_CLIP,
    DEMO_ZOO_PROFILE,
    DEMO_ZOO_VIT,
    ZooBuild,
    ensure_demo_backbones,
    ensure_zoo,
)
from devstack.demo_next import print_next_steps
from devstack.demo_steps import follow_job, predict_digits, say, spt_on_digits, zero_shot_colours
from devstack.stack import Proc, free_port, redis_alive, start_api, start_redis, start_worker, wait_ready

__all__ = [
    "Proc",
    "ensure_demo_backbones",
    "follow_job",
    "free_port",
    "run_demo",
    "start_api",
    "start_redis",
    "start_worker",
    "wait_ready",
]


def run_demo(*, once: bool, port: int = 8000) -> int:
    settings = get_settings()
    data_dir = Path(settings.data_dir).resolve()
    log_dir = data_dir / "logs"
    procs: list[Proc] = []
    try:
        started = time.monotonic()
        say(f"data under {data_dir} (SQLite database, storage, logs in {log_dir})")
        redis_url = _redis(settings.redis_url, data_dir, procs)
        database_url = settings.resolved_database_url
        from app.core.db.migrate import upgrade

        upgrade(database_url)
        say("database migrated")
        zoo = _zoo_backbones(data_dir / "zoo")
        env = {
            **os.environ,
            "PROMPTUNE_DATA_DIR": str(data_dir),
            "PROMPTUNE_DATABASE_URL": database_url,
            "PROMPTUNE_REDIS_URL": redis_url,
            "PROMPTUNE_BACKBONES_FILE": str(zoo.registry),
            "PROMPTUNE_DEFAULT_BACKBONE": DEMO_ZOO_CLIP,
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        port = free_port(port)
        base_url = f"http://127.0.0.1:{port}"
        api = start_api(env, port, log_dir)
        procs.extend([api, start_worker(env, log_dir)])
        key = _create_key(database_url)
        wait_ready(base_url, api)
        say(
            f"API ready at {base_url} (web console: {base_url}/, OpenAPI docs: {base_url}/docs); one Celery worker"
        )

        results = _walkthrough(base_url, key, data_dir)
        _summary(zoo, results, time.monotonic() - started)
        print_next_steps(base_url, key, results["job"]["model_id"], serving=not once)
        return 0 if once else _serve(procs)
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


def _redis(url: str, data_dir: Path, procs: list[Proc]) -> str:
    """The configured Redis if it answers, else a private redis-server (appended to ``procs``)."""
    if redis_alive(url):
        say(f"using the running Redis at {url}")
        return url
    proc, url = start_redis(data_dir / "redis")
    procs.append(proc)
    say(f"started redis-server on {url}")
    return url


def _zoo_backbones(zoo_dir: Path) -> ZooBuild:
    """Build (first run) or reuse the demo's pretrained backbones; prints what it did and how long."""
    names = (DEMO_ZOO_VIT, DEMO_ZOO_CLIP)
    say(f"pretrained backbones {', '.join(names)}: the zoo's '{DEMO_ZOO_PROFILE}' profile in {zoo_dir}")
    say("  (built once on this machine from Promptune's procedural image world, then reused; docs/zoo.md)")
    zoo = ensure_zoo(zoo_dir, names, log=lambda line: say(f"  {line}"))
    for name, seconds in zoo.built.items():
        say(f"  built {name} in {seconds:.0f} s of training")
    if zoo.cached:
        say(f"  reused {', '.join(zoo.cached)} from the cache")
    say(f"zoo ready in {zoo.seconds:.0f} s; registry {zoo.registry}")
    return zoo


def _create_key(database_url: str) -> str:
    from app.core.db import repo
    from app.core.db.session import session_scope

    with session_scope(database_url) as session:
        tenant = repo.get_or_create_tenant(session=session, name="demo")
        _, key = repo.create_api_key(session=session, tenant_id=tenant.id)
    return key


def _walkthrough(base_url: str, key: str, data_dir: Path) -> dict[str, Any]:
    import httpx

    from devstack.demo_next import linear_probe_baseline, report_through_the_sdk, write_test_samples
    from devstack.sample_data import write_digits_zip

    # Bilinear upscaling: how the zoo's backbones saw digits in pretraining (cheap and deterministic).
    archive = write_digits_zip(data_dir / "sample" / "digits.zip", resample="bilinear")
    write_test_samples(data_dir / "sample" / "digits-test")
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        job = spt_on_digits(client, archive)
        predict_digits(client, job)
        report = report_through_the_sdk(base_url, key, job["model_id"])
        baseline = linear_probe_baseline(client, job)
        colour_acc = zero_shot_colours(client, data_dir / "sample" / "colours")
    return {
        "job": job,
        "metrics": job["metrics"],
        "report": report,
        "baseline": baseline["metrics"],
        "colour_acc": colour_acc,
    }


def _summary(zoo: ZooBuild, results: dict[str, Any], seconds: float) -> None:
    metrics, baseline = results["metrics"], results["baseline"]
    built = ", ".join(f"{n} {s:.0f} s" for n, s in zoo.built.items()) or "all reused from the cache"
    say("summary:")
    say(f"  backbones: {DEMO_ZOO_VIT} (SPT), {DEMO_ZOO_CLIP} (zero-shot); zoo profile '{DEMO_ZOO_PROFILE}'")
    say(f"  zoo: {zoo.seconds:.0f} s ({built})")
    say(
        f"  SPT on digits (deep prompts): val {metrics.get('val_acc', 0):.1%}, "
        f"test {metrics.get('test_acc', 0):.1%}, macro-F1 {results['report']['macro_f1']:.3f} (chance 10%)"
    )
    gain = metrics.get("test_acc", 0) - baseline.get("test_acc", 0)
    say(
        f"  linear probe, same split (no prompts, lr {baseline.get('lr', 'auto')} chosen on val): "
        f"val {baseline.get('val_acc', 0):.1%}, test {baseline.get('test_acc', 0):.1%}"
    )
    say(
        f"  SPT minus linear probe: {gain * 100:+.1f} points of test accuracy (SPT at its default lr "
        f"{metrics.get('lr', '?')}, the probe at the best of three on validation)"
    )
    say(f"  zero-shot colour naming: {results['colour_acc']:.1%} (chance 12.5%)")
    say(f"done in {seconds:.0f} s")


def _serve(procs: list[Proc]) -> int:
    say("serving until Ctrl-C")
    while all(p.alive() for p in procs):
        time.sleep(1)
    dead = next(p for p in procs if not p.alive())
    say(f"the {dead.name} process exited; stopping:\n{dead.tail()}")
    return 1
