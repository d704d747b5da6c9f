"""A job's own config fields (how the dataset is used, how the job runs) and the error a bad request raises.

Split from app/core/job_plan.py, which validates the whole request; both the API and the worker read a
stored job's ``world_size`` through :func:`job_world_size` (the routing key, app/core/queue.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.core.errors import ServiceError

# The service's own fields: how the dataset is used and how the job runs.
JOB_FIELDS: dict[str, dict[str, Any]] = {
    "val_fraction": {
        "type": "number",
        "minimum": 0,
        "exclusiveMaximum": 1,
        "default": 0.1,
        "description": "share of the training images held out for validation when the dataset has no val split",
    },
    "shots": {
        "type": ["integer", "null"],
        "minimum": 1,
        "default": None,
        "description": "train on at most this many images per class (k-shot); null = all",
    },
    "world_size": {
        "type": "integer",
        "minimum": 1,
        "maximum": 1024,
        "default": 1,
        "description": "data-parallel processes (GPUs; gloo CPU processes on a machine without GPUs). "
        "batch_size stays the global batch, split across them; the job goes only to a worker whose "
        "PROMPTUNE_WORKER_DEVICES is at least this, or to `promptune train --job-id` under a launcher "
        "(docs/distributed.md)",
    },
}


class JobConfigError(ServiceError):
    """A job request that cannot run: ``invalid_config``, ``unknown_backbone``, ``invalid_backbone``, ..."""


def invalid_field(field: str, message: str) -> JobConfigError:
    return JobConfigError("invalid_config", f"config.{field}: {message}", f"config.{field}")


def job_world_size(config: Mapping[str, Any]) -> int:
    """The ranks a stored (already validated) job config asks for: its routing key."""
    value = config.get("world_size", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 1


def world_size_field(config: Mapping[str, Any]) -> int:
    value = config.get("world_size", 1)
    limit = JOB_FIELDS["world_size"]["maximum"]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise invalid_field("world_size", f"must be an integer in [1, {limit}]")
    return value


def data_fields(config: Mapping[str, Any]) -> tuple[float, int | None]:
    val_fraction = config.get("val_fraction", JOB_FIELDS["val_fraction"]["default"])
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, int | float)
        or not 0 <= val_fraction < 1
    ):
        raise invalid_field("val_fraction", "must be a number in [0, 1)")
    shots = config.get("shots")
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 1):
        raise invalid_field("shots", "must be a positive integer or null")
    return float(val_fraction), shots
