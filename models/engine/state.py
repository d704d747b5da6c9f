"""The training engine's resume state: safetensors for tensors, JSON for the rest, no pickle.

Layout of ``work_dir``::

    state.json                          the current state (written last, atomically)
    state.prev.json                     the state before it (kept until the next write)
    state-<step>-<sha12>.safetensors    tensors named by one of the two JSON files

The safetensors file holds ``learned/<name>`` (current learned tensors), ``best/<name>`` (best
state so far, when validating) and ``optim/<group>/<i>/<key>`` (optimizer state tensors, e.g.
``optim/prompt/0/exp_avg``). The JSON holds step/epoch/position, best metric, history, the
optimizer's non-tensor state, the fp16 loss scaler's state, the config fingerprint, and the tensor
file's name and sha256.

Write order: tensors (temp file, fsync, rename) -> ``state.json`` renamed to ``state.prev.json``
-> new ``state.json`` (temp file, fsync, rename) -> unreferenced tensor files removed. A crash at
any point leaves a JSON file whose tensor file is complete, and a torn or tampered tensor file is
caught by its sha256: :func:`read_state` then falls back to ``state.prev.json`` or reports no
state (the run restarts cleanly).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..checkpoint import sha256_bytes
from ..errors import CheckpointError
from ..fileio import atomic_write_bytes

log = logging.getLogger(__name__)

STATE_FORMAT_VERSION = 1
STATE_JSON = "state.json"
PREV_JSON = "state.prev.json"
_TENSOR_GLOB = "state-*.safetensors"
_MAX_JSON_BYTES = 64 << 20


@dataclasses.dataclass
class ResumeState:
    """Everything needed to continue a run exactly where it stopped."""

    step: int  # optimisation steps completed
    epoch: int  # 0-based epoch in progress (== epochs when finished)
    pos: int  # batches of ``epoch`` already done
    fingerprint: str
    fingerprint_payload: dict[str, Any]
    learned: dict[str, torch.Tensor]
    optim_tensors: dict[str, torch.Tensor]
    optim_layout: list[dict[str, Any]]
    best_state: dict[str, torch.Tensor] | None = None
    best: dict[str, Any] = dataclasses.field(default_factory=dict)  # epoch, val_acc, val_loss
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    epoch_accum: dict[str, Any] = dataclasses.field(default_factory=dict)
    steps_per_epoch: int = 0
    total_steps: int = 0
    grad_scaler: dict[str, Any] | None = None  # fp16 loss scaler's state (absent from older states)
    data_state: dict[str, Any] | None = None  # streamed data: every rank's stream position (sources.py)


# ---- optimizer state <-> flat tensors + JSON -------------------------------------------------
def _group_keys(optimizer: torch.optim.Optimizer) -> list[str]:
    names = [str(g.get("name", i)) for i, g in enumerate(optimizer.param_groups)]
    if len(set(names)) != len(names) or any("/" in n for n in names):
        names = [str(i) for i in range(len(names))]
    return names


def flatten_optimizer(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Optimizer state as ``optim/<group>/<i>/<key>`` tensors plus a JSON layout of the rest."""
    tensors: dict[str, torch.Tensor] = {}
    layout: list[dict[str, Any]] = []
    for key, group in zip(_group_keys(optimizer), optimizer.param_groups, strict=True):
        scalars: dict[str, dict[str, Any]] = {}
        for i, param in enumerate(group["params"]):
            for name, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim/{key}/{i}/{name}"] = value.detach().to("cpu").contiguous().clone()
                else:  # e.g. SGD's momentum_buffer=None, python numbers
                    scalars.setdefault(str(i), {})[name] = value
        layout.append({"name": key, "size": len(group["params"]), "scalars": scalars})
    return tensors, layout


def restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], layout: list[dict[str, Any]]
) -> None:
    """Inverse of :func:`flatten_optimizer` (device/dtype placement by ``load_state_dict``)."""
    keys = _group_keys(optimizer)
    found = [(g["name"], g["size"]) for g in layout]
    expected = [(k, len(g["params"])) for k, g in zip(keys, optimizer.param_groups, strict=True)]
    if found != expected:
        raise CheckpointError(
            f"optimizer groups in the resume state {found} do not match the model's {expected}"
        )
    sd = optimizer.state_dict()
    state: dict[int, dict[str, Any]] = {}
    used: set[str] = set()
    for key, group_layout, group in zip(keys, layout, sd["param_groups"], strict=True):
        for i in range(group_layout["size"]):
            entry: dict[str, Any] = dict(group_layout["scalars"].get(str(i), {}))
            prefix = f"optim/{key}/{i}/"
            for name, value in tensors.items():
                if name.startswith(prefix):
                    entry[name[len(prefix) :]] = value
                    used.add(name)
            if entry:
                state[group["params"][i]] = entry
    if set(tensors) - used:
        raise CheckpointError(
            f"resume state has unmatched optimizer tensors: {sorted(set(tensors) - used)[:5]}"
        )
    sd["state"] = state
    optimizer.load_state_dict(sd)


# ---- reading and writing ------------------------------------------------------------------
def _cpu(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def write_state(work_dir: str | Path, state: ResumeState) -> Path:
    """Write ``state`` into ``work_dir`` atomically; returns the path of ``state.json``."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    tensors = {**_cpu(state.learned, "learned/"), **state.optim_tensors}
    if state.best_state is not None:
        tensors.update(_cpu(state.best_state, "best/"))
    blob = st_save(tensors, metadata={"format": "pt", "promptune_state": str(STATE_FORMAT_VERSION)})
    digest = sha256_bytes(blob)
    tensors_name = f"state-{state.step:08d}-{digest[:12]}.safetensors"
    atomic_write_bytes(work / tensors_name, blob)
    doc = {
        "format_version": STATE_FORMAT_VERSION,
        "tensors_file": tensors_name,
        "tensors_sha256": digest,
        "fingerprint": state.fingerprint,
        "fingerprint_payload": state.fingerprint_payload,
        "step": state.step,
        "epoch": state.epoch,
        "pos": state.pos,
        "steps_per_epoch": state.steps_per_epoch,
        "total_steps": state.total_steps,
        "scheduler": {"step": state.step},  # the lr is a pure function of the step
        "best": state.best,
        "has_best_state": state.best_state is not None,
        "history": state.history,
        "epoch_accum": state.epoch_accum,
        "optim_layout": state.optim_layout,
        "grad_scaler": state.grad_scaler,
        "data_state": state.data_state,
    }
    current = work / STATE_JSON
    if current.exists():
        os.replace(current, work / PREV_JSON)
    atomic_write_bytes(current, json.dumps(doc, sort_keys=True).encode())
    _remove_unreferenced(work)
    return current


def _referenced(work: Path) -> set[str]:
    names = set()
    for name in (STATE_JSON, PREV_JSON):
        try:
            names.add(json.loads((work / name).read_text())["tensors_file"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return names


def _remove_unreferenced(work: Path) -> None:
    keep = _referenced(work)
    for path in work.glob(_TENSOR_GLOB):
        if path.name not in keep:
            path.unlink(missing_ok=True)
    for path in work.glob(".state*.tmp"):  # temp files left by a crash mid-write
        path.unlink(missing_ok=True)


def _load_one(work: Path, json_name: str) -> ResumeState:
    path = work / json_name
    if path.stat().st_size > _MAX_JSON_BYTES:
        raise CheckpointError(f"{path} is larger than {_MAX_JSON_BYTES} bytes")
    doc = json.loads(path.read_text())
    if doc.get("format_version") != STATE_FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported format_version {doc.get('format_version')!r}")
    name = doc["tensors_file"]
    if not isinstance(name, str) or "/" in name or "\\" in name or not name.startswith("state-"):
        raise CheckpointError(f"{path}: bad tensors_file {name!r}")
    blob = (work / name).read_bytes()
    if sha256_bytes(blob) != doc["tensors_sha256"]:
        raise CheckpointError(f"{work / name}: sha256 does not match {json_name} (torn or altered write)")
    tensors = st_load(blob)
    learned = {k[len("learned/") :]: v for k, v in tensors.items() if k.startswith("learned/")}
    best = {k[len("best/") :]: v for k, v in tensors.items() if k.startswith("best/")}
    return ResumeState(
        step=int(doc["step"]),
        epoch=int(doc["epoch"]),
        pos=int(doc["pos"]),
        fingerprint=str(doc["fingerprint"]),
        fingerprint_payload=doc["fingerprint_payload"],
        learned=learned,
        optim_tensors={k: v for k, v in tensors.items() if k.startswith("optim/")},
        optim_layout=doc["optim_layout"],
        best_state=best if doc.get("has_best_state") else None,
        best=doc.get("best") or {},
        history=doc.get("history") or [],
        epoch_accum=doc.get("epoch_accum") or {},
        steps_per_epoch=int(doc.get("steps_per_epoch", 0)),
        total_steps=int(doc.get("total_steps", 0)),
        grad_scaler=doc.get("grad_scaler"),
        data_state=doc.get("data_state"),
    )


def read_state(work_dir: str | Path) -> ResumeState | None:
    """The newest complete resume state in ``work_dir``, or ``None`` (nothing usable there).

    A state whose JSON is unreadable or whose tensor file is missing or fails its sha256 is
    skipped with a warning, falling back to the previous one.
    """
    work = Path(work_dir)
    for json_name in (STATE_JSON, PREV_JSON):
        if not (work / json_name).exists():
            continue
        try:
            return _load_one(work, json_name)
        except Exception as exc:  # noqa: BLE001 - any defect means "not a usable state"
            log.warning("ignoring resume state %s: %s: %s", work / json_name, type(exc).__name__, exc)
    return None


def state_files(work_dir: str | Path) -> list[Path]:
    """The files that make up the current resume state (to copy to durable storage)."""
    work = Path(work_dir)
    files = [work / n for n in (STATE_JSON, PREV_JSON) if (work / n).exists()]
    files += sorted(work / n for n in _referenced(work) if (work / n).exists())
    return files


def clear_state(work_dir: str | Path) -> None:
    """Remove every resume-state file from ``work_dir`` (other files are left alone)."""
    work = Path(work_dir)
    if not work.is_dir():
        return
    for name in (STATE_JSON, PREV_JSON):
        (work / name).unlink(missing_ok=True)
    for path in [*work.glob(_TENSOR_GLOB), *work.glob(".state*.tmp")]:
        path.unlink(missing_ok=True)
