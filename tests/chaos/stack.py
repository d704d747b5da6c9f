"""The real stack the chaos tests break: a restartable redis-server, the API under uvicorn, Celery workers.

Every piece is a real process started by devstack/stack.py. The redis-server restarts on its port and
has no persistence: a restart empties every queue, the worst case for a broker restart (the compose
deployment runs AOF, which would keep the queued messages). The test process reads job state straight
from the shared SQLite database (WAL), so it sees every committed change within one 20 ms poll. Workers
write ``jobs.progress`` after every step here (``PROMPTUNE_PROGRESS_INTERVAL_SECONDS=0``), which makes
the step a worker had reached when it was killed exact: ``round(progress * total_steps)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from app.core.db.session import session_scope
from app.core.db.tables import Job, JobEvent, TunedModel
from app.core.status import TERMINAL_STATUSES
from devstack.stack import Proc, RedisServer, start_worker

POLL_SECONDS = 0.02
FIGURES_ENV = "PROMPTUNE_CHAOS_FIGURES"


@dataclasses.dataclass
class ChaosStack:
    data_dir: Path
    db_url: str
    env: dict[str, str]
    base_url: str
    key: str
    log_dir: Path
    redis: RedisServer  # restartable on its port: devstack/stack.py
    workers: list[Proc] = dataclasses.field(default_factory=list)
    _names: int = 0

    # ---- workers -------------------------------------------------------------------------------
    def start_worker(self, *, wait: bool = True) -> Proc:
        self._names += 1
        proc = start_worker(self.env, self.log_dir, name=f"w{self._names}")
        self.workers.append(proc)
        if wait:
            self.wait_worker_ready(proc)
        return proc

    def wait_worker_ready(self, proc: Proc, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while " ready." not in proc.log_path.read_text(errors="replace"):
            assert proc.alive(), f"worker {proc.name} exited:\n{proc.tail()}"
            assert time.monotonic() < deadline, f"worker {proc.name} not ready:\n{proc.tail()}"
            time.sleep(0.1)

    def live_workers(self) -> list[Proc]:
        return [w for w in self.workers if w.alive()]

    def ensure_workers(self, count: int) -> None:
        """Top the pool up to ``count`` live workers and wait until each is consuming."""
        while len(self.live_workers()) < count:
            self.start_worker(wait=False)
        for proc in self.live_workers():
            self.wait_worker_ready(proc)

    def stop_workers(self) -> None:
        """SIGKILL every worker (the tests stop workers only once their jobs have ended)."""
        for proc in self.workers:
            kill_group(proc)
        for proc in self.workers:
            proc.stop()
        self.workers = []

    def worker_running(self, job_id: str) -> tuple[Proc, int]:
        """The worker (main process) whose pool process holds the job's lease, and that pool process's pid."""
        owner = self.job(job_id)["lease_owner"]
        assert owner, f"job {job_id} has no lease owner"
        pid = int(owner.split(":")[1])
        group = os.getpgid(pid)  # a worker and its pool processes share the worker's own session
        for proc in self.workers:
            if proc.pid == group:
                return proc, pid
        raise AssertionError(f"no worker of ours runs pid {pid}")

    # ---- API -----------------------------------------------------------------------------------
    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60
        )

    def submit(self, body: dict[str, Any]) -> str:
        with self.client() as client:
            response = client.post("/v1/jobs", json=body)
        assert response.status_code in (201, 202), response.text
        return str(response.json()["id"])

    def checkpoint(self, model_id: str) -> bytes:
        with self.client() as client:
            response = client.get(f"/v1/models/{model_id}/checkpoint")
        assert response.status_code == 200, response.text
        return response.content

    # ---- the database --------------------------------------------------------------------------
    def job(self, job_id: str) -> dict[str, Any]:
        with session_scope(self.db_url) as s:
            row = s.get(Job, job_id)
            assert row is not None
            return {c.name: getattr(row, c.name) for c in Job.__table__.columns}

    def events(self, job_id: str) -> list[dict[str, Any]]:
        with session_scope(self.db_url) as s:
            rows = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)).all()
            return [
                {"type": e.type, "message": e.message, "data": e.data or {}, "at": e.created_at} for e in rows
            ]

    def models_of(self, job_id: str) -> list[str]:
        with session_scope(self.db_url) as s:
            return list(s.scalars(select(TunedModel.id).where(TunedModel.job_id == job_id)))

    def total_steps(self, job_id: str) -> int | None:
        for event in self.events(job_id):
            if "total_steps" in event["data"]:
                return int(event["data"]["total_steps"])
        return None

    def step(self, job: dict[str, Any], total: int) -> int:
        return round(float(job["progress"] or 0.0) * total)

    def wait(
        self, job_id: str, until: Callable[[dict[str, Any]], bool], *, timeout: float = 120.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if until(job):
                return job
            assert time.monotonic() < deadline, f"timed out; job is {job}\n{self.tails()}"
            time.sleep(POLL_SECONDS)

    def wait_terminal(self, job_id: str, *, timeout: float = 180.0) -> dict[str, Any]:
        return self.wait(job_id, lambda j: j["status"] in TERMINAL_STATUSES, timeout=timeout)

    def wait_step(
        self, job_id: str, fraction: float, *, timeout: float = 120.0
    ) -> tuple[dict[str, Any], int]:
        """Wait until the job trains at or past ``fraction`` of its steps; returns (job, total_steps)."""
        job = self.wait(
            job_id, lambda j: j["status"] == "running" and j["phase"] == "training", timeout=timeout
        )
        total = None
        while total is None:
            total = self.total_steps(job_id)
            time.sleep(POLL_SECONDS)
        job = self.wait(job_id, lambda j: self.step(j, total) >= fraction * total, timeout=timeout)
        assert job["status"] == "running", job
        return job, total

    def stored_resume_files(self, job_id: str) -> list[str]:
        folder = self.data_dir / "storage" / "jobs" / job_id
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def tails(self) -> str:
        return "\n".join(f"--- {w.name}:\n{w.tail(15)}" for w in self.workers)


def kill_group(proc: Proc, sig: int = signal.SIGKILL) -> None:
    """Signal a worker and all its pool processes (its own process group)."""
    proc.kill_group(sig)


def resumed_from(events: list[dict[str, Any]]) -> list[int]:
    return [e["data"]["resumed_from_step"] for e in events if "resumed_from_step" in e["data"]]


def claims(events: list[dict[str, Any]]) -> int:
    return sum(1 for e in events if e["type"] == "status" and e["message"].startswith("running (attempt"))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def report(test: str, figures: dict[str, Any]) -> None:
    """Print one ``CHAOS-FIGURES`` JSON line (and append it to ``$PROMPTUNE_CHAOS_FIGURES`` when set)."""
    line = json.dumps({"test": test, **figures}, sort_keys=True, default=str)
    print(f"CHAOS-FIGURES {line}", flush=True)
    target = os.environ.get(FIGURES_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
