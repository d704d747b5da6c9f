"""Runs one job: claim, load, prepare, train (resumable), save; every state change goes to the DB.

A Celery delivery calls :func:`run_job`. The database decides what happens (worker/state.py):

1. **claim** by compare-and-set; a job someone else holds under a live lease is left alone
   (duplicate delivery), a job without attempts left becomes ``failed`` (worker_lost).
2. a **heartbeat** thread renews the lease every lease/3 s; if the lease is lost (the reaper gave
   the job to another worker) training stops at the next step and this worker writes nothing more.
3. phases ``loading`` (backbone from the server registry, dataset from storage via its manifest),
   ``preparing`` (the method's data-dependent init, e.g. SPT prototypes, only on a fresh run),
   ``training`` (models' Trainer; after every resume-state write the state is copied to storage
   ``jobs/<job_id>/`` so a worker on another host resumes it exactly), ``saving`` (one safetensors
   checkpoint to ``models/<tenant>/<model_id>.safetensors`` + a tuned_models row with its sha256).
4. errors map to ``error.code``: the models library's codes (invalid_dataset, invalid_config,
   weights_not_found, checksum_mismatch, ...), ``timeout``, ``oom``, ``cancelled_by_user``;
   anything else is ``internal`` and the job is released for another attempt while attempts remain.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.settings import Settings, get_settings
from app.storage import Storage, job_prefix, make_storage, model_key
from worker.state import JobSpec, JobStore, Lease

if TYPE_CHECKING:
    from models import TrainConfig
    from models.base import PromptMethod

log = logging.getLogger(__name__)

PROGRESS_WRITE_SECONDS = 0.5  # jobs.progress at most twice a second
PROGRESS_EVENT_SECONDS = 2.0  # a progress event at most every 2 s
CANCEL_POLL_SECONDS = 1.0  # jobs.cancel_requested read at most once a second
RETRY_DELAY_SECONDS = 10.0  # countdown before a released job is delivered again
_STATE_NAME = re.compile(r"^state[A-Za-z0-9._-]*\.(json|safetensors)$")


class LeaseLost(Exception):
    """Another worker owns the job now; stop without writing anything."""


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """What happened to one delivery (the Celery task's result)."""

    job_id: str
    outcome: str  # succeeded | failed | cancelled | released | busy | finished | missing | exhausted | lost
    error_code: str | None = None
    retry_in: float | None = None  # set when the job was released for another attempt

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# ---- error mapping ------------------------------------------------------------------------------
def classify_error(exc: BaseException) -> tuple[str, str, bool]:
    """``(code, message, retryable)`` for an exception raised while running a job."""
    from app.job_config import JobConfigError
    from models.errors import PromptuneError

    if isinstance(exc, PromptuneError):
        return exc.code, str(exc), False
    if isinstance(exc, JobConfigError):  # the server's registry or limits changed since the job was created
        return exc.code, exc.message, False
    if _is_soft_time_limit(exc):
        return "timeout", "the job exceeded its time limit", False
    if _is_oom(exc):
        return "oom", f"out of memory ({type(exc).__name__})", False
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


# ---- the lease ------------------------------------------------------------------------------------
class LeaseKeeper(threading.Thread):
    """Renews the lease every ``lease_seconds / 3``; sets ``lost`` when the job is no longer ours."""

    def __init__(self, store: JobStore, lease: Lease, lease_seconds: float) -> None:
        super().__init__(name=f"lease-{lease.job_id[:8]}", daemon=True)
        self.store, self.lease, self.lease_seconds = store, lease, lease_seconds
        self.lost = threading.Event()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.lease_seconds / 3):
            try:
                if not self.store.heartbeat(self.lease, lease_seconds=self.lease_seconds):
                    log.warning("job %s: lease lost; stopping", self.lease.job_id)
                    self.lost.set()
                    return
            except Exception:  # noqa: BLE001 - database briefly unreachable: try again next beat
                log.exception("job %s: heartbeat failed", self.lease.job_id)

    def stop(self) -> None:
        self._stop_event.set()


# ---- resume state <-> storage ----------------------------------------------------------------------
class ResumeSync:
    """Mirrors the trainer's resume state (``work_dir``) to storage ``jobs/<job_id>/``.

    Tensor files go first, the JSON documents last, then ``index.json`` naming the files: a reader
    never sees an index pointing at a file that is not there yet. The trainer's own sha256 check
    (models/engine/state.py) catches anything torn.
    """

    def __init__(self, storage: Storage, job_id: str) -> None:
        self.storage = storage
        self.prefix = job_prefix(job_id)
        self._pushed: set[str] = set()

    def pull(self, work_dir: Path) -> bool:
        """Copy the stored state into ``work_dir``; False when there is none."""
        index_key = f"{self.prefix}/index.json"
        if not self.storage.exists(index_key):
            return False
        names = [n for n in json.loads(self.storage.read_bytes(index_key))["files"] if _STATE_NAME.match(n)]
        work_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            with self.storage.open(f"{self.prefix}/{name}") as src, open(work_dir / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        self._pushed = set(names)
        return bool(names)

    def push(self, work_dir: Path) -> None:
        from models.engine import state_files

        files = state_files(work_dir)
        files.sort(key=lambda p: (p.suffix == ".json", p.name == "state.json"))
        for path in files:
            self.storage.put_file(f"{self.prefix}/{path.name}", path)
        names = sorted(p.name for p in files)
        self.storage.put_bytes(f"{self.prefix}/index.json", json.dumps({"files": names}).encode())
        for stale in self._pushed - set(names):
            self.storage.delete(f"{self.prefix}/{stale}")
        self._pushed = set(names)

    def clear(self) -> None:
        self.storage.delete_prefix(self.prefix)


# ---- training callbacks ---------------------------------------------------------------------------
class JobReporter:
    """Trainer callbacks: throttled progress, per-epoch metrics, resume-state upload, phase switch."""

    def __init__(
        self,
        store: JobStore,
        lease: Lease,
        keeper: LeaseKeeper,
        sync: ResumeSync,
        work_dir: Path,
        *,
        phase: str,
    ) -> None:
        self.store, self.lease, self.keeper, self.sync, self.work_dir = store, lease, keeper, sync, work_dir
        self.phase = phase
        self._last_write = self._last_event = self._last_cancel_poll = float("-inf")
        self._cancel = False

    def _owned(self, ok: bool) -> None:
        if not ok:
            self.keeper.lost.set()
            raise LeaseLost(self.lease.job_id)

    def enter_training(self) -> None:
        if self.phase != "training":
            self.phase = "training"
            self._owned(self.store.set_phase(self.lease, "training", "training"))

    def on_progress(self, step: int, total_steps: int, logs: dict[str, Any]) -> None:
        self.enter_training()
        now = time.monotonic()
        last = step >= total_steps
        if not last and now - self._last_write < PROGRESS_WRITE_SECONDS:
            return
        self._last_write = now
        event = last or now - self._last_event >= PROGRESS_EVENT_SECONDS
        if event:
            self._last_event = now
        data = {
            "step": step,
            "total_steps": total_steps,
            **{k: round(float(v), 6) for k, v in logs.items() if isinstance(v, int | float)},
        }
        self._owned(self.store.progress(self.lease, step / max(1, total_steps), data, event=event))

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        self._owned(self.store.epoch_metrics(self.lease, {"epoch": epoch, **_jsonable(metrics)}))

    def on_checkpoint(self, step: int, path: Any) -> None:
        # Renew (and so re-check) the lease first: a worker that lost the job must never
        # overwrite the new owner's resume state.
        self._owned(
            not self.keeper.lost.is_set()
            and self.store.heartbeat(self.lease, lease_seconds=self.keeper.lease_seconds)
        )
        self.sync.push(self.work_dir)
        if step == 0:  # written right after the method's prepare(): training starts now
            self.enter_training()

    def should_stop(self) -> bool:
        if self.keeper.lost.is_set():
            return True
        now = time.monotonic()
        if not self._cancel and now - self._last_cancel_poll >= CANCEL_POLL_SECONDS:
            self._last_cancel_poll = now
            self._cancel = self.store.cancel_requested(self.lease.job_id)
        return self._cancel


def _jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, bool | int | str) or value is None:
            out[key] = value
        elif isinstance(value, float):
            out[key] = round(value, 6)
        else:
            try:
                out[key] = round(float(value), 6)
            except (TypeError, ValueError):
                out[key] = str(value)
    return out


# ---- the job -------------------------------------------------------------------------------------
@dataclasses.dataclass
class LoadedData:
    class_names: list[str]
    train: Any
    val: Any
    test: Any
    split: dict[str, list[str]]  # sample paths per split (stored in the checkpoint)


class JobRun:
    """One attempt at one claimed job."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        storage: Storage,
        lease: Lease,
        keeper: LeaseKeeper,
        spec: JobSpec,
    ) -> None:
        self.settings, self.store, self.storage, self.lease, self.keeper, self.spec = (
            settings,
            store,
            storage,
            lease,
            keeper,
            spec,
        )
        self.work_dir = Path(settings.data_dir).resolve() / "work" / spec.id
        self.sync = ResumeSync(storage, spec.id)

    def _phase(self, phase: str, message: str) -> None:
        if self.keeper.lost.is_set() or not self.store.set_phase(self.lease, phase, message):
            self.keeper.lost.set()
            raise LeaseLost(self.lease.job_id)
        if self.store.cancel_requested(self.spec.id):
            from models.errors import TrainingCancelled

            raise TrainingCancelled("cancelled before training")

    def run(self) -> tuple[str, dict[str, Any]]:
        """Returns ``(model_id, metrics)`` after the model is stored and the job marked succeeded."""
        import torch

        import models
        from models.engine import read_state

        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        spec = self.spec
        self._phase("loading", f"loading backbone {spec.backbone!r} and the dataset")
        plan = self._plan()
        backbone = models.load_backbone(plan.backbone)
        data = self._load_data(backbone, val_fraction=plan.val_fraction, shots=plan.shots)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        method = models.build_method(spec.method, backbone, plan.method_config, data.class_names)
        if plan.init_from:
            self._init_from(method, plan.init_from)
        train_config = plan.train_config
        backbone.model.to(device)
        method.to(device)

        shutil.rmtree(self.work_dir, ignore_errors=True)
        resumed = self.sync.pull(self.work_dir) and read_state(self.work_dir) is not None
        phase = "training" if resumed else "preparing"
        self._phase(phase, "resuming from the last saved state" if resumed else "preparing the prompts")
        reporter = JobReporter(self.store, self.lease, self.keeper, self.sync, self.work_dir, phase=phase)
        trainer = models.Trainer(
            method,
            train_config,
            data.train,
            data.val,
            work_dir=self.work_dir,
            callbacks=[reporter],
            should_stop=reporter.should_stop,
        )
        result = trainer.fit()

        self._phase("saving", "evaluating and saving the tuned model")
        method.load_learned_state_dict(result.best_state)
        metrics = _jsonable(result.metrics)
        if data.test is not None:
            test = trainer.evaluate(data.test)
            metrics.update(test_acc=round(test["acc"], 6), test_loss=round(test["loss"], 6))
        metrics.update(
            num_train=len(data.train),
            num_val=len(data.val) if data.val is not None else 0,
            num_test=len(data.test) if data.test is not None else 0,
        )
        model_id = self._save(method.to("cpu"), train_config, metrics, data)
        self.sync.clear()
        shutil.rmtree(self.work_dir, ignore_errors=True)
        return model_id, metrics

    # ---- pieces ----
    def _plan(self) -> Any:
        """The job's configs, validated exactly as the API validated them (app/job_config.py)."""
        from app.backbones import load_registry
        from app.job_config import build_plan

        return build_plan(
            method=self.spec.method,
            backbone=self.spec.backbone,
            config=self.spec.config,
            seed=self.spec.seed,
            specs=load_registry(self.settings.backbones_file).specs,
            max_epochs=self.settings.max_epochs,
            checkpoint_every_steps=self.settings.checkpoint_every_steps,
        )

    def _load_data(self, backbone: Any, *, val_fraction: float, shots: int | None) -> LoadedData:
        from models import data as mdata
        from models.errors import DataError

        if self.spec.dataset_id is None:
            raise DataError("the job's dataset was deleted")
        row = self.store.dataset(tenant_id=self.spec.tenant_id, dataset_id=self.spec.dataset_id)
        if row is None:
            raise DataError("the job's dataset was deleted")
        manifest = self._localise(row.storage_key)
        # The images were decoded and checked at upload; a header check catches storage damage.
        listing = mdata.read_manifest(manifest, class_names=row.classes or None, verify="header")
        splits = mdata.split_samples(listing.samples, val_fraction=val_fraction, seed=self.spec.seed)
        if shots is not None:
            splits["train"] = mdata.few_shot(splits["train"], shots, seed=self.spec.seed)
        if not splits.get("train"):
            raise DataError("the dataset has no training images")

        def make(split: str) -> Any:
            items = splits.get(split)
            return listing.dataset(backbone.transform, samples=items) if items else None

        return LoadedData(
            list(listing.class_names),
            make("train"),
            make("val"),
            make("test"),
            mdata.split_paths({k: v for k, v in splits.items() if v}),
        )

    def _localise(self, prefix: str) -> Path:
        """A local path of the dataset's manifest, with every image it names available beside it."""
        manifest_key = f"{prefix}/manifest.jsonl"
        local = self.storage.get_local_path(manifest_key)
        for line in local.read_text(encoding="utf-8").splitlines():
            if line.strip():
                self.storage.get_local_path(f"{prefix}/{json.loads(line)['path']}")
        return local

    def _init_from(self, method: PromptMethod, model_id: str) -> None:
        """Start from an earlier RPP checkpoint's learned prompts (downstream tuning)."""
        from safetensors.torch import load_file

        from models import read_checkpoint_metadata
        from models.backbones.weights import verify_sha256
        from models.errors import ConfigError

        row = self.store.tuned_model(tenant_id=self.spec.tenant_id, model_id=model_id)
        if row is None:
            raise ConfigError("init_from", f"model {model_id!r} not found")
        path = self.storage.get_local_path(row.checkpoint_key)
        verify_sha256(path, row.checkpoint_sha256)
        meta = read_checkpoint_metadata(path)
        if meta.get("method") != self.spec.method:
            raise ConfigError(
                "init_from",
                f"model {model_id!r} is a {meta.get('method')!r} checkpoint, not {self.spec.method!r}",
            )
        tensors = load_file(str(path))
        try:
            method.load_learned_state_dict(tensors)
        except Exception as exc:  # CheckpointError: prompt structure differs from this job's config
            raise ConfigError("init_from", f"model {model_id!r} does not fit this config: {exc}") from None

    def _save(
        self, method: PromptMethod, train_config: TrainConfig, metrics: dict[str, Any], data: LoadedData
    ) -> str:
        from app.db.tables import new_id
        from models import save_checkpoint

        model_id = new_id()
        key = model_key(self.spec.tenant_id, model_id)
        extra = {
            "job_id": self.spec.id,
            "dataset_id": self.spec.dataset_id,
            "backbone_name": self.spec.backbone,
        }
        with tempfile.TemporaryDirectory(dir=self.work_dir.parent) as tmp:
            path = Path(tmp) / "model.safetensors"
            sha = save_checkpoint(
                method, path, train_config=train_config, metrics=metrics, split=data.split, extra=extra
            )
            self.storage.put_file(key, path)
        model = {
            "id": model_id,
            "tenant_id": self.spec.tenant_id,
            "method": self.spec.method,
            "backbone": self.spec.backbone,
            "classes": list(data.class_names),
            "metrics": metrics,
            "checkpoint_key": key,
            "checkpoint_sha256": sha,
        }
        if not self.store.succeed(self.lease, model=model, metrics=metrics):
            self.storage.delete(key)
            raise LeaseLost(self.lease.job_id)
        return model_id


# ---- entry point ---------------------------------------------------------------------------------
def run_job(
    job_id: str,
    *,
    settings: Settings | None = None,
    store: JobStore | None = None,
    storage: Storage | None = None,
    owner: str | None = None,
) -> RunOutcome:
    """Run one delivery of ``job_id`` to its end (or hand it back); never raises for job errors."""
    settings = settings or get_settings()
    store = store or JobStore(settings.resolved_database_url)
    claim = store.claim(job_id, owner=owner or default_owner(), lease_seconds=settings.job_lease_seconds)
    if claim.lease is None:
        log.info("job %s: not claimed (%s)", job_id, claim.outcome)
        return RunOutcome(job_id, claim.outcome)
    lease = claim.lease
    spec = store.job_spec(job_id)
    assert spec is not None
    keeper = LeaseKeeper(store, lease, settings.job_lease_seconds)
    keeper.start()
    try:
        storage = storage or make_storage(settings.storage_url, settings.data_dir)
        JobRun(settings, store, storage, lease, keeper, spec).run()
        return RunOutcome(job_id, "succeeded")
    except LeaseLost:
        return RunOutcome(job_id, "lost")
    except BaseException as exc:
        return _end_attempt(store, lease, keeper, spec, exc)
    finally:
        keeper.stop()


def _end_attempt(
    store: JobStore, lease: Lease, keeper: LeaseKeeper, spec: JobSpec, exc: BaseException
) -> RunOutcome:
    from models.errors import TrainingCancelled

    if keeper.lost.is_set():
        return RunOutcome(spec.id, "lost")
    if isinstance(exc, TrainingCancelled):
        store.finish(lease, "cancelled", "cancelled_by_user", "cancelled by the user")
        return RunOutcome(spec.id, "cancelled", "cancelled_by_user")
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        raise exc  # worker shutdown: the lease expires and the reaper re-queues the job
    code, message, retryable = classify_error(exc)
    if retryable:
        log.exception("job %s: attempt %d failed", spec.id, lease.attempt, exc_info=exc)
    else:
        log.warning("job %s failed: %s: %s", spec.id, code, message)
    if retryable and lease.attempt < spec.max_attempts:
        store.release(lease, code, message)
        return RunOutcome(spec.id, "released", code, retry_in=RETRY_DELAY_SECONDS * lease.attempt)
    store.finish(lease, "failed", code, message)
    return RunOutcome(spec.id, "failed", code)
