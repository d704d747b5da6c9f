"""The training engine: TrainConfig, Trainer (fit/resume/cancel), the lr schedule and resume state."""

from .config import TrainConfig
from .schedule import lr_at
from .seeding import derive_seed
from .state import ResumeState, clear_state, read_state, state_files
from .trainer import Trainer, TrainResult

__all__ = [
    "ResumeState",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "clear_state",
    "derive_seed",
    "lr_at",
    "read_state",
    "state_files",
]
