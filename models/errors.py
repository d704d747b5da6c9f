"""Exceptions raised by the Promptune ML library.

Every error carries a machine-readable ``code`` so that callers (the service, a notebook)
can map it to an HTTP status or a job error without parsing messages.
"""

from __future__ import annotations


class PromptuneError(Exception):
    """Base class. ``code`` is a stable, machine-readable identifier."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(PromptuneError, ValueError):
    """A configuration value is invalid. ``field`` names the offending field."""

    code = "invalid_config"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class WeightsNotFoundError(PromptuneError, FileNotFoundError):
    """Backbone weights were asked for but could not be found (names what was looked for)."""

    code = "weights_not_found"


class WeightsIntegrityError(PromptuneError):
    """Backbone or checkpoint bytes do not match the expected sha256."""

    code = "checksum_mismatch"


class CheckpointError(PromptuneError):
    """A checkpoint is malformed, incompatible with the model, or fails validation."""

    code = "invalid_checkpoint"


class DataError(PromptuneError):
    """A dataset cannot be read or is unusable for training."""

    code = "invalid_dataset"


class TrainingCancelled(PromptuneError):
    """Raised by the training engine when cooperative cancellation was requested."""

    code = "cancelled_by_user"


class TrainingPaused(PromptuneError):
    """Raised by the training engine after ``should_pause`` asked it to stop with a resume state.

    Unlike :class:`TrainingCancelled`, the engine first writes a resume state at the current step,
    so a later ``fit()`` on the same ``work_dir`` continues exactly there (nothing is recomputed).
    """

    code = "paused"
