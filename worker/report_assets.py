"""A tuned model's report assets: the two plots and the model card, rendered and put in storage.

They live under ``models/<tenant>/<model_id>/`` (``app.core.storage.model_asset_key``), beside the
checkpoint, and are written before the model's row exists, so a visible model always has them; whoever
deletes the model deletes them with ``app.core.storage.delete_model_files``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from app.core.storage import MODEL_CARD_FILE, MODEL_PLOT_FILES, Storage, model_asset_key
from worker.job_data import LoadedData
from worker.job_types import JobSpec
from worker.model_card import CardFacts, render_model_card
from worker.report_plots import confusion_matrix_png, training_curves_png


@dataclasses.dataclass(frozen=True)
class ModelAssets:
    files: dict[str, bytes]  # file name -> content: the card (README.md) and the two PNG plots


def card_facts(
    spec: JobSpec, plan: Any, data: LoadedData, *, model_id: str, sha256: str, best_epoch: int | None
) -> CardFacts:
    """What the card says about the job (``plan``: its app.core.job_plan.JobPlan) beyond the report."""
    import torch

    import models

    recipe = {**plan.train_config.trajectory_dict(), "val_fraction": plan.val_fraction, "shots": plan.shots}
    return CardFacts(
        model_id=model_id,
        job_id=spec.id,
        method=spec.method,
        method_description=models.get_method(spec.method).description,
        backbone_name=spec.backbone,
        backbone=plan.backbone.to_dict(),
        dataset_id=spec.dataset_id,
        dataset_name=data.dataset_name,
        split_sizes=data.sizes(),
        train_config=recipe,
        method_config=plan.method_config.to_dict(),
        checkpoint_sha256=sha256,
        best_epoch=best_epoch,
        versions={"promptune": models.__version__, "torch": torch.__version__},
    )


def render_assets(report: Mapping[str, Any], facts: CardFacts) -> ModelAssets:
    """The card and both plots of ``report`` (worker/model_report.py)."""
    title = f"Confusion matrix: {report['split']} split, {report['num_samples']} images"
    return ModelAssets(
        files={
            MODEL_PLOT_FILES["training_curves"]: training_curves_png(
                report["history"], best_epoch=facts.best_epoch
            ),
            MODEL_PLOT_FILES["confusion_matrix"]: confusion_matrix_png(
                report["confusion_matrix"], report["classes"], title=title
            ),
            MODEL_CARD_FILE: render_model_card(facts, report).encode("utf-8"),
        }
    )


def store_assets(storage: Storage, assets: ModelAssets, *, tenant_id: str, model_id: str) -> None:
    for name, content in assets.files.items():
        storage.put_bytes(model_asset_key(tenant_id, model_id, name), content)
