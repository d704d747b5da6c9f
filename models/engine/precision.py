"""Mixed precision for the training engine: autocast around forwards, loss scaling for fp16.

``fp32`` runs no autocast and no scaler, so its steps are exactly the plain ``backward`` /
``clip`` / ``step`` sequence. ``bf16`` and ``fp16`` run each training step's forward and loss and
every evaluation forward under ``torch.autocast``; autocast only changes the dtype ops compute in,
so learned tensors, their gradients and the optimizer state stay float32 and the frozen backbone's
weights stay as loaded. ``fp16`` also scales the loss with a ``GradScaler`` (its small range would
otherwise flush gradients to zero); the scaler's state travels in the resume state.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..errors import ConfigError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (``None`` for fp32), refused where unsupported."""
    if precision == "fp32":
        return None
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        raise ConfigError("precision", f"must be one of fp32, bf16, fp16, got {precision!r}")
    if not torch.amp.is_autocast_available(device.type):
        raise ConfigError("precision", f"{precision} needs autocast, which torch lacks on {device.type}")
    if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            "precision", f"this GPU ({torch.cuda.get_device_name(device)}) lacks bf16; use fp16"
        )
    return dtype


def autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``dtype``, or a no-op for fp32 (``None``)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class StepPrecision:
    """One run's autocast dtype and (fp16 only) loss scaler, applied to each optimisation step."""

    def __init__(self, precision: str, device: torch.device) -> None:
        self.device = device
        self.dtype = autocast_dtype(precision, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype is torch.float16 else None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.dtype, self.device)

    def backward_and_step(
        self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, grad_clip: float | None
    ) -> None:
        """Backward, optional global-norm clipping of the TRUE gradients, then the optimizer step."""
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(optimizer)  # clip_grad_norm_ must see unscaled gradients
        if grad_clip is not None:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)  # skipped when the gradients overflowed; the scale then backs off
            self.scaler.update()

    def state_dict(self) -> dict[str, Any] | None:
        """The scaler's scale and growth tracker (JSON numbers), or ``None`` without a scaler."""
        if self.scaler is None:
            return None
        return dict(self.scaler.state_dict())  # python floats and ints: JSON round-trips them exactly

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        # A state without scaler entries (written before fp16 existed, or by a non-fp16 run whose
        # fingerprint matched) leaves the fresh scaler as it is.
        if self.scaler is not None and state:
            self.scaler.load_state_dict(dict(state))
