"""Runs one job: claim, load, prepare, train (resumable), save; every state change goes to the DB.

A Celery delivery calls :func:`run_job`. The database decides what happens (worker/state.py):

1. **claim** by compare-and-set; a job someone else holds under a live lease is left alone
   (duplicate delivery), a job without attempts left becomes ``failed`` (worker_lost).
2. a **heartbeat** thread renews the lease every lease/3 s; if the lease is lost (the reaper gave
   the job to another worker) training stops at the next step and this worker writes nothing more.
3. phases ``loading`` (backbone from the server registry, dataset from storage via its manifest),
   ``preparing`` (the method's data-dependent init, e.g. SPT prototypes, only on a fresh run),
   ``training`` (models' Trainer; after every resume-state write the state is copied to storage
   ``jobs/<job_id>/`` so a worker on another host resumes it exactly), ``saving`` (the kept epoch
   evaluated on the test split, else the validation split, into the model's report; one safetensors
   checkpoint to ``models/<tenant>/<model_id>.safetensors``, the report's plots and card under
   ``models/<tenant>/<model_id>/``, then a tuned_models row with the sha256 and the report).
4. errors map to ``error.code``: the models library's codes (invalid_dataset, invalid_config,
   weights_not_found, checksum_mismatch, ...), ``timeout``, ``oom``, ``cancelled_by_user``;
   anything else is ``internal`` and the job is released for another attempt while attempts remain.
5. a worker shutting down (SIGTERM, worker/shutdown.py) stops at the next training step with a resume
   state and hands the job back (queued, the attempt not counted, a new message sent).
The lease heartbeat and trainer callbacks live in worker/reporting.py, the storage mirror of the
resume state in worker/sync.py, the error mapping in worker/errors.py, the dataset loading in
worker/job_data.py, the report in worker/model_report.py and its plots and card in worker/report_assets.py.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import uuid
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.db.tables import new_id
from app.core.settings import Settings, get_settings
from app.core.shard_sets import load_shard_sets
from app.core.status import JobStatus
from app.core.storage import Storage, delete_model_files, make_storage, model_key
from worker import shutdown
from worker.errors import classify_error
from worker.job_data import LoadedData, load_init_from, load_job_data
from worker.model_report import build_report, evaluate_held_out, job_metrics
from worker.outcomes import RunOutcome, drop_resume_state, end_attempt, follower_outcome
from worker.ranks import SINGLE, RankInfo, leave_group, share_from_main
from worker.report_assets import card_facts, render_assets, store_assets
from worker.reporting import JobReporter, LeaseKeeper, LeaseLost
from worker.state import JobSpec, JobStore, Lease
from worker.sync import ResumeSync

if TYPE_CHECKING:
    from models import PromptMethod, TrainConfig

log = logging.getLogger(__name__)

__all__ = ["JobRun", "LeaseLost", "RunOutcome", "classify_error", "run_job"]


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# ---- the job -------------------------------------------------------------------------------------
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
        rank: RankInfo = SINGLE,
    ) -> None:
        self.settings, self.store, self.storage = settings, store, storage
        self.lease, self.keeper, self.spec, self.rank = lease, keeper, spec, rank
        # One folder per attempt (and per rank): a worker that lost its lease never writes into its
        # successor's, and ranks on one host never share one.
        suffix = f"-r{rank.rank}" if rank.distributed else ""
        self.work_dir = Path(settings.data_dir).resolve() / "work" / f"{spec.id}-{lease.attempt}{suffix}"
        self.sync = ResumeSync(storage, spec.id)

    def _phase(self, phase: str, message: str, data: dict[str, Any] | None = None) -> None:
        from models import TrainingCancelled, TrainingPaused

        if not self.rank.is_main:  # rank 0 owns the job's state and decides for every rank
            return
        if self.keeper.lost.is_set() or not self.store.set_phase(self.lease, phase, message, data):
            self.keeper.lost.set()
            raise LeaseLost(self.lease.job_id)
        if self.store.cancel_requested(self.spec.id):
            raise TrainingCancelled("cancelled before training")
        if phase != "saving" and shutdown.requested():
            raise TrainingPaused(f"the worker is shutting down (phase {phase})")

    def saved_step(self) -> int | None:
        """The step of the local resume state (None when there is none)."""
        from models import read_state

        state = read_state(self.work_dir) if self.work_dir.is_dir() else None
        return None if state is None else state.step

    def cleanup(self, *, keep_resume_state: bool) -> None:
        """Remove this attempt's local folder, and the stored resume state unless it is needed again."""
        if not keep_resume_state:
            self.sync.clear()
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def run(self) -> tuple[str, dict[str, Any]]:
        """Returns ``(model_id, metrics)`` after the model is stored and the job marked succeeded."""
        import torch

        import models

        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        # loading: the server's configs for the job, the backbone, the dataset's splits, the method
        ranks = f" on {self.rank.world_size} ranks" if self.rank.distributed else ""
        self._phase(
            "loading",
            f"loading backbone {self.spec.backbone!r} and the dataset{ranks}",
            {"world_size": self.rank.world_size},
        )
        plan = self._plan()
        backbone = models.load_backbone(plan.backbone)
        data = load_job_data(
            self.store,
            self.storage,
            self.spec,
            backbone.transform,
            val_fraction=plan.val_fraction,
            shots=plan.shots,
            shard_sets=load_shard_sets(self.settings),
            rank=self.rank,
        )
        method = self._build_method(plan, backbone, data)
        # preparing + training (resumed from the stored state when there is one; lr "auto" searched first)
        state = self._pull_resume_state()
        train_config, lr_search = self._learning_rate(plan, backbone, data, state)
        trainer = self._trainer(method, train_config, data, state)
        result = trainer.fit()
        if self.rank.distributed:  # the ranks' work is done: rank 0 alone evaluates and saves
            leave_group(barrier=True)
            if not self.rank.is_main:
                self.cleanup(keep_resume_state=True)
                return "", {}
        # saving: the kept epoch measured on the held-out split, its report, checkpoint and assets
        self._phase("saving", "evaluating and saving the tuned model")
        method.load_learned_state_dict(result.best_state)
        held_out = evaluate_held_out(trainer, data)
        metrics = {**job_metrics(result, held_out, data), "lr": train_config.lr}  # the rate it trained with
        model_id = new_id()
        report = build_report(model_id, held_out, data.class_names, result.history, lr_search=lr_search)
        self._save(model_id, method.to("cpu"), plan, metrics, data, report, best_epoch=result.best_epoch)
        self.cleanup(keep_resume_state=False)
        return model_id, metrics

    # ---- stages ----
    def _build_method(self, plan: Any, backbone: Any, data: LoadedData) -> PromptMethod:
        """The job's method on the training device, started from ``init_from`` when the job names one."""
        import models

        device = self.rank.device()
        method = models.build_method(self.spec.method, backbone, plan.method_config, data.class_names)
        if plan.init_from:
            load_init_from(self.store, self.storage, self.spec, method, plan.init_from)
        backbone.model.to(device)
        return method.to(device)

    # ---- pieces ----
    def _pull_resume_state(self) -> Any:
        """The stored resume state, copied into this attempt's fresh folder (None on a fresh run)."""
        from models import read_state

        shutil.rmtree(self.work_dir, ignore_errors=True)
        return read_state(self.work_dir) if self.sync.pull(self.work_dir) else None

    def _learning_rate(
        self, plan: Any, backbone: Any, data: LoadedData, state: Any
    ) -> tuple[TrainConfig, dict[str, Any] | None]:
        """The recipe to train with, and the lr search's record when the job asked for ``lr: "auto"``.

        A resumed job keeps the rate its state was trained with (a new search could choose another);
        its record is the one the first attempt wrote into the job's events.
        """
        from worker.lr_auto import choose_lr, resumed_lr

        if plan.lr_grid is None:
            return plan.train_config, None
        resumed = resumed_lr(state, plan) if state is not None else None
        if resumed is not None:
            return resumed, self.store.last_event_data(self.spec.id, "lr_search")
        self._phase("preparing", f"choosing the learning rate among {', '.join(map(str, plan.lr_grid))}")
        reporter = self._reporter("preparing")

        def report(text: str, record: dict[str, Any]) -> None:
            if not self.rank.is_main:
                return
            if not self.store.message(self.lease, text, {"lr_search": record}):
                self.keeper.lost.set()
                raise LeaseLost(self.lease.job_id)

        init = partial(load_init_from, self.store, self.storage, self.spec, model_id=plan.init_from)
        return choose_lr(
            method_name=self.spec.method,
            backbone=backbone,
            plan=plan,
            data=data,
            device=next(backbone.model.parameters()).device,
            report=report,
            init_method=init if plan.init_from else None,
            should_stop=reporter.should_stop,
            should_pause=reporter.should_pause,
        )

    def _reporter(self, phase: str) -> JobReporter:
        return JobReporter(
            self.store,
            self.lease,
            self.keeper,
            self.sync,
            self.work_dir,
            phase=phase,
            progress_seconds=self.settings.progress_interval_seconds,
        )

    def _trainer(self, method: PromptMethod, train_config: TrainConfig, data: LoadedData, state: Any) -> Any:
        """A Trainer on this attempt's folder, primed with the stored resume state when there is one."""
        from models import Trainer

        if state is not None:
            self._phase("training", "resuming from the last saved state", {"resumed_from_step": state.step})
        else:
            self._phase("preparing", "preparing the prompts")
        reporter = self._reporter("training" if state is not None else "preparing")
        return Trainer(
            method,
            train_config,
            data.train,
            data.val,
            work_dir=self.work_dir,
            callbacks=[reporter] if self.rank.is_main else [],  # rank 0 reports for every rank
            should_stop=reporter.should_stop,
            should_pause=reporter.should_pause,
        )

    def _plan(self) -> Any:
        """The job's configs, validated exactly as the API validated them (app/core/job_plan.py)."""
        from app.core.catalogue import server_registry
        from app.core.job_plan import build_plan

        return build_plan(
            method=self.spec.method,
            backbone=self.spec.backbone,
            config=self.spec.config,
            seed=self.spec.seed,
            specs=server_registry(self.settings).specs,
            max_epochs=self.settings.max_epochs,
            checkpoint_every_steps=self.settings.checkpoint_every_steps,
        )

    def _save(
        self,
        model_id: str,
        method: PromptMethod,
        plan: Any,
        metrics: dict[str, Any],
        data: LoadedData,
        report: dict[str, Any] | None,
        *,
        best_epoch: int | None,
    ) -> None:
        """Store the checkpoint and the report's assets, then record the model and the job's success."""
        from models import save_checkpoint

        tenant_id = self.spec.tenant_id
        key = model_key(tenant_id, model_id)
        extra = {
            "job_id": self.spec.id,
            "dataset_id": self.spec.dataset_id,
            "backbone_name": self.spec.backbone,
        }
        with tempfile.TemporaryDirectory(dir=self.work_dir.parent) as tmp:
            path = Path(tmp) / "model.safetensors"
            sha = save_checkpoint(
                method, path, train_config=plan.train_config, metrics=metrics, split=data.split, extra=extra
            )
            self.storage.put_file(key, path)
        if report is not None:
            facts = card_facts(self.spec, plan, data, model_id=model_id, sha256=sha, best_epoch=best_epoch)
            store_assets(self.storage, render_assets(report, facts), tenant_id=tenant_id, model_id=model_id)
        model = {
            "id": model_id,
            "tenant_id": tenant_id,
            "method": self.spec.method,
            "backbone": self.spec.backbone,
            "classes": list(data.class_names),
            "metrics": metrics,
            "checkpoint_key": key,
            "checkpoint_sha256": sha,
            "report": report,
        }
        self.keeper.stop()
        if not self.store.succeed(self.lease, model=model, metrics=metrics):
            delete_model_files(self.storage, tenant_id=tenant_id, model_id=model_id, checkpoint_key=key)
            raise LeaseLost(self.lease.job_id)


# ---- entry point ---------------------------------------------------------------------------------
def run_job(
    job_id: str,
    *,
    settings: Settings | None = None,
    store: JobStore | None = None,
    storage: Storage | None = None,
    owner: str | None = None,
    rank: RankInfo = SINGLE,
) -> RunOutcome:
    """Run one delivery of ``job_id`` to its end (or hand it back); never raises for job errors.

    ``rank``: this process's place in a data-parallel group it has already joined (worker/ranks.py):
    rank 0 claims the job and shares the lease, every rank trains, rank 0 alone writes the job's state.
    """
    settings = settings or get_settings()
    store = store or JobStore(settings.resolved_database_url)
    lease: Lease | None = None
    unclaimed = RunOutcome(job_id, "unclaimed")
    if rank.is_main:
        claim = store.claim(job_id, owner=owner or default_owner(), lease_seconds=settings.job_lease_seconds)
        lease = claim.lease
        if lease is None:
            log.info("job %s: not claimed (%s)", job_id, claim.outcome)
            if claim.outcome in ("exhausted", "cancelled"):  # ended by this claim: drop its resume state
                drop_resume_state(settings, storage, job_id)
            unclaimed = RunOutcome(job_id, claim.outcome)
    if rank.distributed:
        lease = share_from_main(lease)  # every rank trains under rank 0's lease, or none does
    if lease is None:
        if rank.distributed:
            leave_group(barrier=True)  # every rank got the same answer: all leave together
        return unclaimed
    return _run_attempt(settings, store, storage, lease, rank)


def _run_attempt(
    settings: Settings, store: JobStore, storage: Storage | None, lease: Lease, rank: RankInfo
) -> RunOutcome:
    spec = store.job_spec(lease.job_id)
    assert spec is not None
    keeper = LeaseKeeper(store, lease, settings.job_lease_seconds)
    if rank.is_main:  # the other ranks hold no lease of their own
        keeper.start()
    job: JobRun | None = None
    try:
        storage = storage or make_storage(settings.storage_url, settings.data_dir)
        job = JobRun(settings, store, storage, lease, keeper, spec, rank)
        job.run()
        return RunOutcome(spec.id, JobStatus.SUCCEEDED if rank.is_main else "rank_done")
    except LeaseLost:
        return RunOutcome(spec.id, "lost")
    except BaseException as exc:
        if not rank.is_main:
            return follower_outcome(spec.id, exc, job)
        outcome = end_attempt(store, lease, keeper, spec, exc, job)
        if job is not None and outcome.outcome != "lost":
            job.cleanup(keep_resume_state=outcome.outcome in ("released", "handed_back"))
        return outcome
    finally:
        keeper.stop()
