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

Under an initialised ``torch.distributed`` group each rank trains its slice of every global batch
(``distributed.py``); without one the path is exactly the single-process one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset

from ..base import PromptMethod
from ..errors import ConfigError, DataError, PromptuneError, TrainingCancelled, TrainingPaused
from .config import TrainConfig, fingerprint
from .distributed import DataParallel
from .optim import build_optimizer
from .passes import EvalPass, TrainTop1, evaluation_pass, method_device
from .results import TrainResult, epoch_train_metrics, improves_on_best, train_result
from .schedule import lr_at, set_lr
from .seeding import derive_seed, seed_cpu_rngs
from .sources import is_stream, make_source
from .state import ResumeState, clear_state, flatten_optimizer, read_state, restore_optimizer, write_state

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StepOutcome:
    """One optimisation step: its loss, the method's logs, the lr, and top-1 hits among ``size`` images
    (``hits`` is None when the step computed no full logits: see :class:`~models.engine.passes.TrainTop1`)."""

    loss: float
    logs: dict[str, float]
    lr: float
    hits: int | None
    size: int


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
        self.train_data = self._check_data("train_data", train_data, stream_ok=True)
        self.val_data = None if val_data is None else self._check_data("val_data", val_data)
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.callbacks = tuple(callbacks)
        self.should_stop, self.should_pause = should_stop, should_pause
        # This process's share of a torch.distributed group (inert without one): see distributed.py.
        self._dp = DataParallel()
        # Indexed or streamed training batches (sources.py): the epoch's length and this rank's batches.
        self._source = make_source(
            self.train_data,
            batch_size=self.config.batch_size,
            drop_last=self.config.drop_last,
            seed=self.config.seed,
            num_workers=self.config.num_workers,
            dp=self._dp,
            device=self._device(),
        )
        self.steps_per_epoch = self._source.steps_per_epoch
        if self.steps_per_epoch < 1:
            n, bs = self._source.num_samples, self.config.batch_size
            raise DataError(f"train_data has {n} items: fewer than one batch of {bs} with drop_last")
        self.total_steps = self.steps_per_epoch * self.config.epochs
        # Refuses a precision the device cannot autocast in now, not at the first step; fit() starts
        # a fresh one so an fp16 loss scale never leaks from one fit into the next.
        self._precision = self._dp.precision(self.config.precision, self._device())

    def _check_data(self, name: str, data: Any, *, stream_ok: bool = False) -> Any:
        if stream_ok and is_stream(data):
            if not isinstance(data.num_samples, int) or data.num_samples < 1:
                raise DataError(f"{name}: a streamed dataset needs num_samples (samples per epoch) >= 1")
        elif (
            isinstance(data, IterableDataset)
            or not hasattr(data, "__getitem__")
            or not hasattr(data, "__len__")
        ):
            what = "a map-style dataset (len + indexing)" + (" or a shard stream" if stream_ok else "")
            raise DataError(f"{name} must be {what}")
        elif len(data) < 1:
            raise DataError(f"{name} is empty")
        names = getattr(data, "class_names", None)
        if names is not None and list(names) != list(self.method.class_names):
            raise DataError(f"{name}.class_names differ from the method's class names")
        return data

    # ---- set-up ---------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return method_device(self.method)

    def _fingerprint_payload(self) -> dict[str, Any]:
        train = self.config.trajectory_dict()
        if train["precision"] == "fp32":  # how every state before `precision` was written: still resumable
            del train["precision"]
        return {
            "train": train,
            "method": self.method.method_name,
            "method_config": self.method.config.to_dict(),
            "class_names": list(self.method.class_names),
            "num_train": self._source.num_samples,
            "num_val": None if self.val_data is None else len(self.val_data),
        }

    @staticmethod
    def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
        return {
            k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
        }

    # ---- callbacks ------------------------------------------------------------------------
    def _emit(self, name: str, *args: Any) -> None:
        if not self._dp.is_main:  # one report per run, not one per rank
            return
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            if fn is not None:
                fn(*args)

    def _poll_stop(self) -> None:
        if self._dp.agree(self.should_stop):  # rank 0 decides for every rank
            raise TrainingCancelled("training was cancelled")

    # ---- evaluation -----------------------------------------------------------------------
    def evaluate(self, data: Any, *, poll_stop: bool = False) -> dict[str, float]:
        """Top-1 accuracy and mean cross-entropy of the method on ``data`` (eval mode).

        ``poll_stop``: also poll ``should_stop`` between batches (as ``fit`` does while validating).
        """
        result = self.evaluation_pass(data, poll_stop=poll_stop)
        return {"acc": result.accuracy, "loss": result.loss}

    def evaluation_pass(self, data: Any, *, poll_stop: bool = False) -> EvalPass:
        """Every item's label and top-1 prediction, and the summed cross-entropy, in one pass."""
        return evaluation_pass(
            self.method,
            data,
            batch_size=self.config.eval_batch_size or self.config.batch_size,
            seed=self.config.seed,
            num_workers=self.config.num_workers,
            before_batch=self._poll_stop if poll_stop else None,
            autocast_dtype=self._precision.dtype,
        )

    # ---- the loop -------------------------------------------------------------------------
    def _step(
        self, optimizer: torch.optim.Optimizer, batch: dict[str, Any] | None, step: int, global_size: int
    ) -> StepOutcome:
        """One step on ``batch``, this rank's slice of a global batch of ``global_size`` (None: empty slice)."""
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
        loss, hits, mine = torch.zeros(()), None, 0
        logs: Mapping[str, Any] = {}
        if batch is not None:
            labels = torch.as_tensor(batch["label"])
            with (
                TrainTop1(self.method, labels, len(self.method.class_names)) as top1,
                self._precision.autocast(),
            ):
                loss, logs = self.method.training_loss(batch, generator)
            loss = loss.float()  # a no-op in fp32; backward and the epoch's sums in float32
            hits, mine = top1.hits, int(labels.shape[0])
        # The global batch's numbers, the same on every rank (this rank's own without a process group).
        loss_value, logs, hits, size = self._dp.reduce_step(loss, logs, hits, mine, global_size)
        if not math.isfinite(loss_value):
            raise PromptuneError(
                f"training loss is {loss_value} at step {step} (lr {lr:.3g}); lower the learning rate"
            )
        loss = self._dp.scale_loss(loss, mine, global_size)
        self._precision.backward_and_step(loss, optimizer, cfg.grad_clip)
        return StepOutcome(loss_value, logs, lr, hits=hits, size=size)

    def fit(self, resume: bool = True) -> TrainResult:
        """Train (resuming from ``work_dir`` when it holds a state for this exact setup)."""
        optimizer = build_optimizer(self.method, self.config)
        self._precision = self._dp.precision(self.config.precision, self._device())
        payload = self._fingerprint_payload()
        fp = fingerprint(payload)
        state = self._load_state(fp, payload) if (self.work_dir is not None and resume) else None
        # Also a barrier: no rank reads work_dir after rank 0 starts clearing it in _start_fresh.
        self._dp.check_same("the resume step in work_dir", None if state is None else state.step)
        self._source.load_state(None if state is None else state.data_state)
        if state is not None:
            self.method.load_learned_state_dict(state.learned)
            restore_optimizer(optimizer, state.optim_tensors, state.optim_layout)
            self._precision.load_state_dict(state.grad_scaler)
            log.info("resuming at step %d (epoch %d, batch %d)", state.step, state.epoch + 1, state.pos)
        else:
            state = self._start_fresh(fp, payload, optimizer)
        try:
            return self._run(state, optimizer)
        finally:
            self._source.close()

    def _start_fresh(self, fp: str, payload: dict[str, Any], optimizer: torch.optim.Optimizer) -> ResumeState:
        """Clear any old state, run the method's data-dependent ``prepare`` and save step 0."""
        seed = self.config.seed
        if self.work_dir is not None and self._dp.is_main:
            clear_state(self.work_dir)
        seed_cpu_rngs(derive_seed(seed, "prepare"))
        torch.manual_seed(derive_seed(seed, "prepare"))  # CPU and every CUDA device
        self._dp.prepare(self.method, self._source.prepare_data(), seed=seed)  # rank 0 computes, all get it
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
        return state

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
        state.data_state = self._source.state()  # every rank's stream position (a collective when streamed)
        if not self._dp.is_main:  # every rank holds the same state: one writer
            return
        state.learned = self.method.learned_state_dict()
        state.optim_tensors, state.optim_layout = flatten_optimizer(optimizer)
        state.grad_scaler = self._precision.state_dict()
        path = write_state(self.work_dir, state)
        self._emit("on_checkpoint", state.step, path)

    def _run(self, state: ResumeState, optimizer: torch.optim.Optimizer) -> TrainResult:
        cfg = self.config
        device = self._device()
        self.method.train()
        last_saved = state.step  # the step of the newest resume state on disk
        while state.epoch < cfg.epochs:
            if cfg.max_steps is not None and state.step >= cfg.max_steps:
                break
            last_saved = self._train_epoch(state, optimizer, device, last_saved)
            if state.pos < self.steps_per_epoch:  # stopped at max_steps inside the epoch
                break
            metrics = self._end_epoch(state)
            self._save(state, optimizer)
            last_saved = state.step
            self._emit("on_epoch_end", state.history[-1]["epoch"], metrics)
        validated = self.val_data is not None
        if state.epoch < cfg.epochs:  # max_steps reached: leave a state the next run continues from
            if last_saved != state.step:
                self._save(state, optimizer)
            return train_result(state, self.method, validated=validated, completed=False)
        return train_result(state, self.method, validated=validated, completed=True)

    def _train_epoch(
        self, state: ResumeState, optimizer: torch.optim.Optimizer, device: torch.device, last_saved: int
    ) -> int:
        """The rest of ``state.epoch`` (until max_steps); returns the step of the newest saved state."""
        cfg = self.config
        state.epoch_accum = state.epoch_accum or {"loss_sum": 0.0, "count": 0, "logs": {}, "lr": None}
        # A resume state written before train accuracy was counted lacks these: count from here on.
        state.epoch_accum.setdefault("hits", 0)
        state.epoch_accum.setdefault("seen", 0)
        batches = self._source.batches(state.epoch, state.pos)
        try:
            for global_size, fetch in batches:
                if cfg.max_steps is not None and state.step >= cfg.max_steps:
                    break
                self._poll_stop()
                self._poll_pause(state, optimizer, last_saved)
                mine = fetch()  # drawn only now: a paused run never counts a batch it did not train on
                batch = self._to_device(mine, device) if mine is not None else None
                self._record_step(state, self._step(optimizer, batch, state.step, global_size))
                every = cfg.checkpoint_every_steps
                if every and state.step % every == 0 and state.pos < self.steps_per_epoch:
                    self._save(state, optimizer)
                    last_saved = state.step
        finally:
            batches.close()  # type: ignore[attr-defined]  # shuts DataLoader workers down, also on cancellation
        return last_saved

    def _poll_pause(self, state: ResumeState, optimizer: torch.optim.Optimizer, last_saved: int) -> None:
        if self._dp.agree(self.should_pause):
            if last_saved != state.step:
                self._save(state, optimizer)
            raise TrainingPaused(f"training paused at step {state.step}")

    def _record_step(self, state: ResumeState, outcome: StepOutcome) -> None:
        """Advance the position, add the step to the epoch's running sums and report progress."""
        state.step += 1
        state.pos += 1
        accum = state.epoch_accum
        accum["loss_sum"] += outcome.loss
        accum["count"] += 1
        accum["lr"] = outcome.lr
        if outcome.hits is not None:
            accum["hits"] += outcome.hits
            accum["seen"] += outcome.size
        for k, v in outcome.logs.items():
            accum["logs"][k] = accum["logs"].get(k, 0.0) + v
        self._emit(
            "on_progress",
            state.step,
            self.total_steps,
            {**outcome.logs, "loss": outcome.loss, "lr": outcome.lr, "epoch": state.epoch + 1},
        )

    def _end_epoch(self, state: ResumeState) -> dict[str, Any]:
        """Summarise the finished epoch, validate when due and keep the state if it is the best yet."""
        cfg = self.config
        epoch = state.epoch + 1
        metrics = epoch_train_metrics(state.epoch_accum, epoch, state.step)
        if self.val_data is not None and (epoch % cfg.eval_every_epochs == 0 or epoch == cfg.epochs):
            val = self.evaluate(self.val_data, poll_stop=True)
            metrics.update(val_acc=val["acc"], val_loss=val["loss"])
            if improves_on_best(val, state.best):
                state.best = {"epoch": epoch, "val_acc": val["acc"], "val_loss": val["loss"]}
                state.best_state = self.method.learned_state_dict()
        state.history.append(metrics)
        state.epoch, state.pos, state.epoch_accum = epoch, 0, {}
        return metrics
