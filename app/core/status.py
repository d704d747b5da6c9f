"""The job status vocabulary: one enum, and the sets of statuses that end a job or keep it in flight.

queued -> running -> succeeded | failed | cancelled; running -> queued when a worker is lost, hands a job
back or releases it for another attempt (worker/state.py owns the transitions).
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
