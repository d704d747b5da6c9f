"""Maps an exception raised while running a job to its ``error.code`` (the API's closed list)."""

from __future__ import annotations


class RankFailure(RuntimeError):
    """A data-parallel job's ranks ended without ending the attempt (one died, or was killed)."""


def classify_error(exc: BaseException) -> tuple[str, str, bool]:
    """``(code, message, retryable)`` for an exception raised while running a job."""
    from app.core.job_plan import JobConfigError
    from models import PromptuneError

    if isinstance(exc, PromptuneError):
        return exc.code, str(exc), False
    if isinstance(exc, JobConfigError):  # the server's registry or limits changed since the job was created
        return exc.code, exc.message, False
    if _is_soft_time_limit(exc):
        return "timeout", "the job exceeded its time limit", False
    if _is_oom(exc):
        return "oom", f"out of memory ({type(exc).__name__})", False
    if isinstance(exc, RankFailure):
        return "internal", str(exc), True
    if _is_collective_failure(exc):  # a peer rank died or hung: another attempt resumes the job
        return "internal", f"a rank of the job failed or stopped answering ({type(exc).__name__})", True
    # security: no internal paths or tracebacks in the API-visible message; the worker log has them.
    return "internal", f"internal error ({type(exc).__name__})", True


def _is_soft_time_limit(exc: BaseException) -> bool:
    try:
        from celery.exceptions import SoftTimeLimitExceeded
    except ImportError:  # pragma: no cover - celery is a hard dependency
        return False
    return isinstance(exc, SoftTimeLimitExceeded)


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and (
        "out of memory" in str(exc) or "can't allocate memory" in str(exc)
    )


def _is_collective_failure(exc: BaseException) -> bool:
    import torch.distributed as dist

    return dist.is_available() and isinstance(exc, dist.DistError)
