"""The one training engine every method runs on.

Reproducibility is by construction rather than by pickled RNG state:

* epoch ``e``'s data order is ``randperm`` from a generator seeded by ``(seed, e)``;
* every item is loaded after seeding python/numpy/torch CPU RNGs from ``(seed, e, index)``, so
  random augmentations do not depend on worker count or on where a run was resumed;
* before step ``s`` the global torch RNG is reseeded from ``(seed, s)`` (dropout etc.) and the
  method gets ``torch.Generator().manual_seed(f(seed, s))`` for its own sampling;
* the learning rate is a pure function of ``s`` (``schedule.lr_at``).

So a run stopped at any step and resumed from its last resume state (learned tensors, optimizer
moments, position, history; see ``state.py``) reproduces the uninterrupted run bit for bit.

Best-state selection: the kept state is the one with the highest validation top-1 accuracy; on
equal accuracy the lower validation loss wins, and on an exact tie the EARLIER epoch is kept.
Test data never reaches the engine. Without validation data the last epoch's state is kept.
Epoch numbers in ``history``, ``best_epoch`` and ``on_epoch_end`` count from 1.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, default_collate

from ..base import PromptMethod
from ..errors import ConfigError, DataError, PromptuneError, TrainingCancelled, TrainingPaused
from .config import TrainConfig, fingerprint
from .schedule import lr_at, set_lr
from .seeding import SeededItems, derive_seed, seed_cpu_rngs
from .state import ResumeState, clear_state, flatten_optimizer, read_state, restore_optimizer, write_state

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]  # learned tensors of the kept epoch (CPU)
    best_epoch: int | None  # 1-based; None when stopped before the first epoch ended
    metrics: dict[str, Any]
    history: list[dict[str, Any]]  # one entry per finished epoch
    steps: int  # global optimisation steps done
    completed: bool = True  # False when the run stopped at max_steps before the last epoch


class Trainer:
    """Trains ``method``'s learned tensors with ``config`` on ``train_data``.

    Args:
        method: a :class:`~models.base.PromptMethod` (on the device to train on).
        config: a :class:`TrainConfig` or a dict for ``TrainConfig.from_dict``.
        train_data: a map-style dataset of ``{"image", "label", "index"}`` dicts.
        val_data: optional validation dataset; selects the kept state (never pass test data).
        work_dir: where the resume state lives; ``None`` = no resume state is written.
        callbacks: objects with any of ``on_progress(step, total_steps, logs)``,
            ``on_epoch_end(epoch, metrics)``, ``on_checkpoint(step, path)``; their exceptions propagate.
        should_stop: polled before every step; returning True raises ``TrainingCancelled``
            without writing anything more.
        should_pause: polled before every training step; returning True writes a resume state at
            the current step (unless one was just written) and raises ``TrainingPaused``.
    """

    def __init__(
        self,
        method: PromptMethod,
        config: TrainConfig | Mapping[str, Any],
        train_data: Any,
        val_data: Any = None,
        *,
        work_dir: str | Path | None = None,
        callbacks: Iterable[Any] = (),
        should_stop: Callable[[], bool] | None = None,
        should_pause: Callable[[], bool] | None = None,
    ) -> None:
        self.method = method
        self.config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
        self.train_data = self._check_data("train_data", train_data)
        self.val_data = None if val_data is None else self._check_data("val_data", val_data)
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.callbacks = tuple(callbacks)
        self.should_stop, self.should_pause = should_stop, should_pause
        n, bs = len(self.train_data), self.config.batch_size
        self.steps_per_epoch = n // bs if self.config.drop_last else math.ceil(n / bs)
        if self.steps_per_epoch < 1:
            raise DataError(f"train_data has {n} items: fewer than one batch of {bs} with drop_last")
        self.total_steps = self.steps_per_epoch * self.config.epochs

    def _check_data(self, name: str, data: Any) -> Any:
        if (
            isinstance(data, IterableDataset)
            or not hasattr(data, "__getitem__")
            or not hasattr(data, "__len__")
        ):
            raise DataError(
                f"{name} must be a map-style dataset (len + indexing); stream shards into one first"
            )
        if len(data) < 1:
            raise DataError(f"{name} is empty")
        names = getattr(data, "class_names", None)
        if names is not None and list(names) != list(self.method.class_names):
            raise DataError(f"{name}.class_names differ from the method's class names")
        return data

    # ---- set-up ---------------------------------------------------------------------------
    def _device(self) -> torch.device:
        for p in self.method.learned_parameters().values():
            return p.device
        return torch.device("cpu")

    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        backbone = getattr(getattr(self.method, "backbone", None), "model", None)
        # Only the benchmark's full fine-tuning baseline declares ``trains_backbone``; methods never do.
        if backbone is not None and not getattr(self.method, "trains_backbone", False):
            thawed = [n for n, p in backbone.named_parameters() if p.requires_grad]
            if thawed:
                raise RuntimeError(f"the backbone must stay frozen, but these require grad: {thawed[:10]}")
        groups = self.method.param_groups(cfg.weight_decay, cfg.effective_head_weight_decay)
        learned = {id(p): n for n, p in self.method.learned_parameters().items()}
        seen: set[int] = set()
        for group in groups:
            for p in group["params"]:
                if id(p) not in learned:
                    raise RuntimeError(
                        f"param group {group.get('name')!r} holds a tensor that is not a learned parameter"
                    )
                if id(p) in seen:
                    raise RuntimeError(f"learned parameter {learned[id(p)]} appears in two param groups")
                seen.add(id(p))
        stray = [n for n, p in self.method.named_parameters() if p.requires_grad and id(p) not in seen]
        if stray or len(seen) != len(learned):
            raise RuntimeError(
                f"parameters that require grad but are not optimised (frozen backbone leak?): {stray[:10]}"
            )
        if not seen:
            raise RuntimeError("the method has no learned parameters")
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)

    def _fingerprint_payload(self) -> dict[str, Any]:
        return {
            "train": self.config.trajectory_dict(),
            "method": self.method.method_name,
            "method_config": self.method.config.to_dict(),
            "class_names": list(self.method.class_names),
            "num_train": len(self.train_data),
            "num_val": None if self.val_data is None else len(self.val_data),
        }

    # ---- data -----------------------------------------------------------------------------
    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed(derive_seed(self.config.seed, "epoch", epoch))
        order = torch.randperm(len(self.train_data), generator=gen).tolist()
        bs = self.config.batch_size
        return [order[i * bs : (i + 1) * bs] for i in range(self.steps_per_epoch)]

    def _loader(self, data: Any, tag: object, batches: list[list[int]]) -> DataLoader:
        return DataLoader(
            SeededItems(data, self.config.seed, tag),
            batch_sampler=batches,
            num_workers=self.config.num_workers,
            collate_fn=default_collate,
            pin_memory=self._device().type == "cuda",
            generator=torch.Generator().manual_seed(0),  # keep DataLoader set-up off the global RNG
        )

    @staticmethod
    def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
        return {
            k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
        }

    # ---- callbacks ------------------------------------------------------------------------
    def _emit(self, name: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            if fn is not None:
                fn(*args)

    def _poll_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise TrainingCancelled("training was cancelled")

    # ---- evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, data: Any, *, poll_stop: bool = False) -> dict[str, float]:
        """Top-1 accuracy and mean cross-entropy of the method on ``data`` (eval mode).

        ``poll_stop``: also poll ``should_stop`` between batches (as ``fit`` does while validating).
        """
        device, bs = self._device(), self.config.eval_batch_size or self.config.batch_size
        n = len(data)
        batches = [list(range(i, min(n, i + bs))) for i in range(0, n, bs)]
        was_training = self.method.training
        self.method.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        try:
            for batch in self._loader(data, "eval", batches):
                if poll_stop:
                    self._poll_stop()
                batch = self._to_device(batch, device)
                logits = self.method(batch["image"]).float()
                labels = batch["label"]
                loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
                correct += (logits.argmax(dim=1) == labels).sum()
        finally:
            self.method.train(was_training)
        return {"acc": correct.item() / n, "loss": loss_sum.item() / n}

    # ---- the loop -------------------------------------------------------------------------
    def _step(
        self, optimizer: torch.optim.Optimizer, batch: dict[str, Any], step: int
    ) -> tuple[float, dict[str, float], float]:
        cfg = self.config
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "step", step))
        seed_cpu_rngs(derive_seed(cfg.seed, "global", step))
        torch.manual_seed(derive_seed(cfg.seed, "global", step))  # CPU and every CUDA device
        lr = lr_at(
            step,
            self.steps_per_epoch,
            lr=cfg.lr,
            min_lr=cfg.min_lr,
            warmup_epochs=cfg.warmup_epochs,
            epochs=cfg.epochs,
        )
        set_lr(optimizer.param_groups, lr)
        optimizer.zero_grad(set_to_none=True)
        loss, logs = self.method.training_loss(batch, generator)
        loss_value = float(loss.detach().item())
        if not math.isfinite(loss_value):
            raise PromptuneError(
                f"training loss is {loss_value} at step {step} (lr {lr:.3g}); lower the learning rate"
            )
        loss.backward()
        if cfg.grad_clip is not None:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        return loss_value, {k: float(v) for k, v in logs.items()}, lr

    def fit(self, resume: bool = True) -> TrainResult:
        """Train (resuming from ``work_dir`` when it holds a state for this exact setup)."""
        cfg, method = self.config, self.method
        optimizer = self._build_optimizer()
        payload = self._fingerprint_payload()
        fp = fingerprint(payload)
        state = self._load_state(fp, payload) if (self.work_dir is not None and resume) else None
        if state is not None:
            method.load_learned_state_dict(state.learned)
            restore_optimizer(optimizer, state.optim_tensors, state.optim_layout)
            log.info("resuming at step %d (epoch %d, batch %d)", state.step, state.epoch + 1, state.pos)
        else:
            if self.work_dir is not None:
                clear_state(self.work_dir)
            seed_cpu_rngs(derive_seed(cfg.seed, "prepare"))
            torch.manual_seed(derive_seed(cfg.seed, "prepare"))  # CPU and every CUDA device
            method.prepare(self.train_data, seed=cfg.seed)
            state = ResumeState(
                step=0,
                epoch=0,
                pos=0,
                fingerprint=fp,
                fingerprint_payload=payload,
                learned={},
                optim_tensors={},
                optim_layout=[],
                steps_per_epoch=self.steps_per_epoch,
                total_steps=self.total_steps,
            )
            self._save(state, optimizer)  # the data-dependent init is not repeated after a crash
        return self._run(state, optimizer)

    def _load_state(self, fp: str, payload: dict[str, Any]) -> ResumeState | None:
        assert self.work_dir is not None
        state = read_state(self.work_dir)
        if state is None or state.fingerprint == fp:
            return state
        old = state.fingerprint_payload or {}
        diff = sorted(k for k in set(old) | set(payload) if old.get(k) != payload.get(k))
        if "train" in diff:
            a, b = old.get("train") or {}, payload["train"]
            diff += [f"train.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        raise ConfigError(
            "work_dir",
            f"{self.work_dir} holds a resume state written under a different setup (differs in: "
            f"{', '.join(diff) or 'fingerprint'}); use a fresh work_dir or fit(resume=False)",
        )

    def _save(self, state: ResumeState, optimizer: torch.optim.Optimizer) -> None:
        if self.work_dir is None:
            return
        state.learned = self.method.learned_state_dict()
        state.optim_tensors, state.optim_layout = flatten_optimizer(optimizer)
        path = write_state(self.work_dir, state)
        self._emit("on_checkpoint", state.step, path)

    def _run(self, state: ResumeState, optimizer: torch.optim.Optimizer) -> TrainResult:
        cfg, method = self.config, self.method
        device = self._device()
        method.train()
        last_saved = state.step
        while state.epoch < cfg.epochs:
            if cfg.max_steps is not None and state.step >= cfg.max_steps:
                break
            batches = self._epoch_batches(state.epoch)[state.pos :]
            accum = state.epoch_accum or {"loss_sum": 0.0, "count": 0, "logs": {}, "lr": None}
            state.epoch_accum = accum
            loader_iter = iter(self._loader(self.train_data, state.epoch, batches))
            try:
                for _ in range(len(batches)):
                    if cfg.max_steps is not None and state.step >= cfg.max_steps:
                        break
                    self._poll_stop()
                    if self.should_pause is not None and self.should_pause():
                        if last_saved != state.step:
                            self._save(state, optimizer)
                        raise TrainingPaused(f"training paused at step {state.step}")
                    batch = self._to_device(next(loader_iter), device)
                    loss, logs, lr = self._step(optimizer, batch, state.step)
                    state.step += 1
                    state.pos += 1
                    accum["loss_sum"] += loss
                    accum["count"] += 1
                    accum["lr"] = lr
                    for k, v in logs.items():
                        accum["logs"][k] = accum["logs"].get(k, 0.0) + v
                    self._emit(
                        "on_progress",
                        state.step,
                        self.total_steps,
                        {**logs, "loss": loss, "lr": lr, "epoch": state.epoch + 1},
                    )
                    every = cfg.checkpoint_every_steps
                    if every and state.step % every == 0 and state.pos < self.steps_per_epoch:
                        self._save(state, optimizer)
                        last_saved = state.step
            finally:
                del loader_iter  # shuts DataLoader workers down, also on cancellation
            if state.pos < self.steps_per_epoch:  # stopped at max_steps inside the epoch
                break
            metrics = self._end_epoch(state)
            self._save(state, optimizer)
            last_saved = state.step
            self._emit("on_epoch_end", state.history[-1]["epoch"], metrics)
        if state.epoch < cfg.epochs:  # max_steps reached: leave a state the next run continues from
            if last_saved != state.step:
                self._save(state, optimizer)
            return self._result(state, completed=False)
        return self._result(state, completed=True)

    def _end_epoch(self, state: ResumeState) -> dict[str, Any]:
        cfg = self.config
        accum = state.epoch_accum
        count = max(1, accum["count"])
        epoch = state.epoch + 1
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "step": state.step,
            "lr": accum["lr"],
            "train_loss": accum["loss_sum"] / count,
        }
        for k, v in sorted(accum["logs"].items()):
            metrics.setdefault(f"train_{k}", v / count)  # the engine's own train_loss wins
        if self.val_data is not None and (epoch % cfg.eval_every_epochs == 0 or epoch == cfg.epochs):
            val = self.evaluate(self.val_data, poll_stop=True)
            metrics.update(val_acc=val["acc"], val_loss=val["loss"])
            best = state.best
            if (
                not best
                or val["acc"] > best["val_acc"]
                or (val["acc"] == best["val_acc"] and val["loss"] < best["val_loss"])
            ):
                state.best = {"epoch": epoch, "val_acc": val["acc"], "val_loss": val["loss"]}
                state.best_state = self.method.learned_state_dict()
        state.history.append(metrics)
        state.epoch, state.pos, state.epoch_accum = epoch, 0, {}
        return metrics

    def _result(self, state: ResumeState, *, completed: bool) -> TrainResult:
        history = list(state.history)
        if self.val_data is not None and state.best_state is not None:
            best_state, best_epoch = state.best_state, state.best["epoch"]
            metrics = {
                "best_epoch": best_epoch,
                "val_acc": state.best["val_acc"],
                "val_loss": state.best["val_loss"],
            }
        else:  # no validation (or none yet): keep the latest weights
            best_state = self.method.learned_state_dict()
            best_epoch = history[-1]["epoch"] if history else None
            metrics = {"best_epoch": best_epoch}
        if history:
            metrics["train_loss"] = history[-1]["train_loss"]
        metrics.update(steps=state.step, epochs_completed=len(history))
        best_state = {k: v.detach().to("cpu").clone() for k, v in best_state.items()}
        return TrainResult(
            best_state=best_state,
            best_epoch=best_epoch,
            metrics=metrics,
            history=history,
            steps=state.step,
            completed=completed,
        )
