"""What a worker holds while it runs a job: the lease, the claim's outcome and the job's snapshot."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

ClaimOutcome = Literal["claimed", "busy", "finished", "missing", "exhausted", "cancelled"]


@dataclasses.dataclass(frozen=True)
class Lease:
    """Proof that this worker holds a job: the lease owner string and the attempt number."""

    job_id: str
    owner: str
    attempt: int


@dataclasses.dataclass(frozen=True)
class ClaimResult:
    outcome: ClaimOutcome
    lease: Lease | None = None


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """What a worker needs to run a job (a read-only snapshot)."""

    id: str
    tenant_id: str
    method: str
    backbone: str
    dataset_id: str | None
    config: dict[str, Any]
    seed: int
    attempts: int
    max_attempts: int

    @property
    def world_size(self) -> int:
        """The data-parallel ranks its config asks for (1 unless ``world_size`` says more)."""
        from app.core.job_fields import job_world_size

        return job_world_size(self.config)
