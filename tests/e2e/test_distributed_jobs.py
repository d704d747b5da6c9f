"""Data-parallel jobs through the real API, Redis, Celery and ``torch.distributed.run`` (gloo on CPU).

- a worker with ``PROMPTUNE_WORKER_DEVICES=2`` takes a ``world_size: 2`` job from its queue, launches two
  ranks, and the model equals the one-process run of the same job (same seed, same global batch);
- one rank SIGKILLed mid-training: the attempt ends, the job resumes from its stored state and succeeds;
- a dataset that streams a registered shard set, trained on two ranks with one rank SIGKILLed mid-epoch:
  the resumed job equals the uninterrupted one (every rank's stream continues where it stopped);
- two "nodes": two torchrun agents rendezvousing on 127.0.0.1 run ``promptune train --job-id`` for a
  job no worker can host (nothing of ours in the rendezvous or the all-reduce), with ``lr: "auto"``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from safetensors.torch import load

from devstack.sample_data import digit_images
from devstack.stack import Proc, free_port, stop_all
from tests.e2e.conftest import Stack, checkpoint_sha256, upload_digits, wait_job

pytestmark = pytest.mark.services

# The worker-loss test's recipe (enough steps for a kill to land mid-training), with a global batch
# that splits unevenly over two ranks at the epoch's end (60 images, batches of 8: the last has 4).
CONFIG = {"epochs": 24, "batch_size": 8, "lr": 0.05, "mode": "deep", "num_prompts": 4, "init": "kmeans"}


def _body(dataset_id: str, *, seed: int = 3, **config: Any) -> dict[str, Any]:
    return {
        "method": "spt",
        "backbone": "demo-vit",
        "dataset_id": dataset_id,
        "config": {**CONFIG, **config},
        "seed": seed,
    }


def _tensors(client: httpx.Client, model_id: str) -> dict[str, Any]:
    return dict(load(checkpoint_sha256(client, model_id)[1]))


def _assert_close(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        scale = tensor.abs().max().clamp_min(1e-6)
        assert (got[name] - tensor).abs().max() <= 1e-4 * scale, name


def _rank_pids(job_id: str) -> dict[int, int]:
    """rank -> pid of the processes running this job's ranks (read from /proc)."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"worker.rank_main" not in argv or job_id.encode() not in argv:
                continue
            env = dict(
                item.split(b"=", 1) for item in (entry / "environ").read_bytes().split(b"\0") if b"=" in item
            )
        except OSError:
            continue
        if b"RANK" in env:
            ranks[int(env[b"RANK"])] = int(entry.name)
    return ranks


@pytest.fixture
def two_device_worker(stack: Stack) -> Any:
    proc = Proc(
        "worker-2dev",
        _celery_argv(),
        stack.log_dir / "worker-2dev.log",
        {**stack.env, "PROMPTUNE_WORKER_DEVICES": "2"},
    )
    yield proc
    stop_all([proc], timeout=60)


@pytest.fixture
def one_rank_worker(stack: Stack) -> Any:
    proc = stack.start_worker("one-rank")
    yield proc
    proc.stop()  # other tests count on their own workers alone taking the `jobs` queue


def _celery_argv() -> list[str]:
    # Only the two-rank queue: one-rank jobs of other tests stay with the session's workers.
    argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "jobs.w2"]
    return [*argv, "--concurrency=1", "--loglevel=INFO", "--hostname=two-dev@%h", "--without-mingle"]


def test_two_rank_job_matches_one_process_and_survives_a_killed_rank(
    stack: Stack, tmp_path: Path, two_device_worker: Proc, one_rank_worker: Proc
) -> None:
    with stack.client() as client:
        dataset = upload_digits(client, tmp_path, per_class=6)
        two = client.post("/v1/jobs", json=_body(dataset["id"], world_size=2)).json()
        job = wait_job(client, two["id"], timeout=300)
        assert job["status"] == "succeeded", (job, two_device_worker.tail())
        assert job["attempts"] == 1

        one = wait_job(client, client.post("/v1/jobs", json=_body(dataset["id"])).json()["id"], timeout=300)
        assert one["status"] == "succeeded", (one, one_rank_worker.tail())
        _assert_close(_tensors(client, job["model_id"]), _tensors(client, one["model_id"]))
        assert job["metrics"]["val_acc"] == pytest.approx(one["metrics"]["val_acc"], abs=1e-6)

        # Kill rank 1 mid-training (no shutdown at all): the attempt ends, the job resumes and succeeds.
        victim = client.post("/v1/jobs", json=_body(dataset["id"], world_size=2, seed=4)).json()
        wait_job(
            client,
            victim["id"],
            timeout=180,
            until=lambda j: j["phase"] == "training" and j["progress"] >= 0.3,
        )
        ranks = _rank_pids(victim["id"])
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[1], signal.SIGKILL)
        resumed = wait_job(client, victim["id"], timeout=300)
        assert resumed["status"] == "succeeded", (resumed, two_device_worker.tail(60))
        assert resumed["attempts"] == 2
        messages = [e["message"] for e in client.get(f"/v1/jobs/{victim['id']}/events").json()["data"]]
        assert "resuming from the last saved state" in messages

        # A cancel reaches every rank: the job ends cancelled and no rank process is left.
        doomed = client.post("/v1/jobs", json=_body(dataset["id"], world_size=2, seed=5)).json()
        wait_job(client, doomed["id"], timeout=180, until=lambda j: j["phase"] == "training")
        assert client.post(f"/v1/jobs/{doomed['id']}/cancel").status_code == 200
        cancelled = wait_job(client, doomed["id"], timeout=120)
        assert cancelled["status"] == "cancelled" and cancelled["error"]["code"] == "cancelled_by_user"
        deadline = time.monotonic() + 30
        while _rank_pids(doomed["id"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _rank_pids(doomed["id"])


def test_two_nodes_rendezvous_on_loopback_through_promptune_train(stack: Stack, tmp_path: Path) -> None:
    with stack.client() as client:
        dataset = upload_digits(client, tmp_path, per_class=6)
        # lr "auto" too: the search's trials run data-parallel on both ranks, rank 0 reports them.
        job = client.post("/v1/jobs", json=_body(dataset["id"], world_size=2, epochs=6, lr="auto")).json()
        time.sleep(1.0)
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"  # no worker hosts 2 ranks
        port = free_port()
        agents = [_node(stack, job["id"], node, port) for node in range(2)]
        try:
            for agent in agents:
                agent.popen.wait(300)
            assert [a.popen.returncode for a in agents] == [0, 0], [a.tail() for a in agents]
        finally:
            stop_all(agents)
        done = wait_job(client, job["id"], timeout=30)
        assert done["status"] == "succeeded" and done["attempts"] == 1, done
        events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
        assert any(e["data"].get("world_size") == 2 for e in events), [e["message"] for e in events]
        chosen = [
            e["data"]["lr_search"] for e in events if (e["data"] or {}).get("lr_search", {}).get("chosen")
        ]
        assert len(chosen) == 1 and chosen[0]["chosen"] == done["metrics"]["lr"], chosen
        predicted = client.post(
            f"/v1/models/{done['model_id']}/predict",
            files={"images": ("x.png", digit_images(per_class=1)[0].png, "image/png")},
        )
        assert predicted.status_code == 200, predicted.text


def _node(stack: Stack, job_id: str, node: int, port: int) -> Proc:
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1"]
    argv += ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={job_id}"]
    promptune = str(Path(sys.executable).parent / "promptune")  # the installed console script
    argv += ["--max-restarts=0", "--no-python", promptune, "train", "--job-id", job_id]
    env = {**stack.env, "PROMPTUNE_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return Proc(f"node{node}", argv, stack.log_dir / f"node{node}-{job_id[:8]}.log", env)


def _register_digit_shards(stack: Stack, name: str) -> None:
    """Write the digits as train/val tar shards under the stack's data folder and register them."""
    from models.data.shards import write_shards

    folder = stack.data_dir / "shards" / name
    images = digit_images(per_class=6)
    classes = sorted({d.label for d in images})
    for split in ("train", "val"):
        samples = [(d.png, d.label) for d in images if d.split == split]
        write_shards(folder, samples, shard_size=7, prefix=split)
    counts = {split: sum(d.split == split for d in images) for split in ("train", "val")}
    entry = {"train": str(folder / "train-*.tar"), "num_samples": counts["train"], "classes": classes,
             "val": str(folder / "val-*.tar"), "val_samples": counts["val"]}  # fmt: skip
    registry = stack.data_dir / "shard_sets.json"
    registry.write_text(json.dumps({**json.loads(registry.read_text()), name: entry}))


def test_a_streamed_shard_set_on_two_ranks_resumes_a_killed_rank_exactly(
    stack: Stack, two_device_worker: Proc
) -> None:
    _register_digit_shards(stack, "digit-shards")
    with stack.client() as client:
        missing = client.post("/v1/datasets/shards", json={"shard_set": "nope"})
        assert missing.status_code == 404 and "digit-shards" in missing.json()["error"]["message"]
        created = client.post("/v1/datasets/shards", json={"shard_set": "digit-shards"})
        assert created.status_code == 201, created.text
        dataset = created.json()
        assert dataset["report"]["shard_set"] == "digit-shards" and dataset["num_classes"] == 10

        body = _body(dataset["id"], world_size=2, seed=6)
        victim = client.post("/v1/jobs", json=body).json()
        wait_job(
            client,
            victim["id"],
            timeout=180,
            until=lambda j: j["phase"] == "training" and j["progress"] >= 0.3,
        )
        ranks = _rank_pids(victim["id"])
        os.kill(ranks[1], signal.SIGKILL)
        resumed = wait_job(client, victim["id"], timeout=300)
        assert resumed["status"] == "succeeded" and resumed["attempts"] == 2, (
            resumed,
            two_device_worker.tail(60),
        )

        whole = wait_job(client, client.post("/v1/jobs", json=body).json()["id"], timeout=300)
        assert whole["status"] == "succeeded" and whole["attempts"] == 1, whole
        got, want = _tensors(client, resumed["model_id"]), _tensors(client, whole["model_id"])
        assert got.keys() == want.keys() and all(got[k].equal(want[k]) for k in want)  # bit for bit
        assert resumed["metrics"]["val_acc"] == whole["metrics"]["val_acc"]
        assert client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
        assert (stack.data_dir / "shards" / "digit-shards" / "train-000000.tar").exists()  # never deleted
