"""Workers racing to claim the same queued jobs through the real ``JobStore.claim`` (worker/state.py).

Every claimer gets every job id (each in its own shuffled order, as duplicate deliveries would arrive) and
all start together on a barrier. Each job must be claimed exactly once. On PostgreSQL 8 claimers race; on
SQLite (WAL, busy_timeout from app/core/db/session.py) 16 claimers race and none may see "database is locked".
"""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from app.core.db.session import session_scope
from app.core.db.tables import Job, JobEvent, Tenant
from worker.state import JobStore

JOBS = 200
CLAIMERS = {"sqlite": 16, "postgresql": 8}
LEASE = 600.0

pytestmark = pytest.mark.services


def _queue_jobs(db_url: str) -> list[str]:
    with session_scope(db_url) as s:
        tenant = Tenant(name="claim-race")
        s.add(tenant)
        s.flush()
        jobs = [
            Job(tenant_id=tenant.id, method="spt", backbone="tiny-vit", config={}, max_attempts=3)
            for _ in range(JOBS)
        ]
        s.add_all(jobs)
        s.flush()
        return [job.id for job in jobs]


def _race(
    db_url: str, job_ids: list[str], claimers: int
) -> tuple[Counter[str], list[tuple[str, str]], list[str]]:
    outcomes: Counter[str] = Counter()
    claims: list[tuple[str, str]] = []  # (job id, owner) for every "claimed" outcome
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(claimers)

    def work(n: int) -> None:
        store = JobStore(db_url)
        owner = f"worker-{n}"
        order = list(job_ids)
        random.Random(n).shuffle(order)
        barrier.wait(timeout=60)
        for job_id in order:
            try:
                result = store.claim(job_id, owner=owner, lease_seconds=LEASE)
            except OperationalError as exc:
                with lock:
                    errors.append(str(exc.orig))
                continue
            with lock:
                outcomes[result.outcome] += 1
                if result.outcome == "claimed":
                    claims.append((job_id, owner))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return outcomes, claims, errors


def test_each_job_is_claimed_exactly_once(db_url: str) -> None:
    kind = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    claimers = CLAIMERS[kind]
    job_ids = _queue_jobs(db_url)
    outcomes, claims, errors = _race(db_url, job_ids, claimers)

    per_job = Counter(job_id for job_id, _ in claims)
    with session_scope(db_url) as s:
        rows = {j.id: (j.status, j.attempts, j.lease_owner) for j in s.scalars(select(Job))}
        running_events = Counter(
            e.job_id for e in s.scalars(select(JobEvent).where(JobEvent.type == "status"))
        )
    owners = dict(claims)
    locked = sum("locked" in e for e in errors)
    print(
        f"\n[claim race {kind}] claimers={claimers} jobs={JOBS} attempts={claimers * JOBS} "
        f"outcomes={dict(outcomes)} claimed_once={sum(c == 1 for c in per_job.values())}/{JOBS} "
        f"claimed_twice_or_more={sum(c > 1 for c in per_job.values())} errors={len(errors)} "
        f"database_is_locked={locked} claims_per_worker={dict(Counter(o for _, o in claims))}"
    )
    assert errors == []
    assert sorted(per_job) == sorted(job_ids) and set(per_job.values()) == {1}
    assert outcomes == Counter({"claimed": JOBS, "busy": JOBS * (claimers - 1)})
    for job_id in job_ids:
        assert rows[job_id] == ("running", 1, owners[job_id])
        assert running_events[job_id] == 1
