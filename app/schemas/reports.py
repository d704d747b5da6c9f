"""A tuned model's evaluation report (docs/reports.md defines every number)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import Timestamp


class ClassMetrics(BaseModel):
    precision: float = Field(description="TP / predicted as this class; 0 when never predicted")
    recall: float = Field(description="TP / support; 0 without support")
    f1: float = Field(description="2 TP / (support + predicted); 0 when both are 0")
    support: int = Field(description="images of this class in the split")


class EpochRecord(BaseModel):
    epoch: int = Field(description="1-based")
    train_loss: float | None = Field(description="mean training loss of the epoch's steps")
    train_acc: float | None = Field(description="top-1 on the epoch's training images, as trained")
    val_loss: float | None = Field(
        description="mean cross-entropy on the validation split; null when not run"
    )
    val_acc: float | None = Field(description="top-1 on the validation split; null when not run")
    lr: float | None = Field(description="learning rate of the epoch's last step")


class LrTrial(BaseModel):
    model_config = ConfigDict(extra="allow")

    lr: float
    val_acc: float | None = None
    val_loss: float | None = None


class LrSearch(BaseModel):
    model_config = ConfigDict(extra="allow")

    grid: list[float] = Field(description="the learning rates tried")
    trials: list[LrTrial]
    chosen: float = Field(description="the learning rate the model was trained with")


class ModelReport(BaseModel):
    """How the tuned model does on its held-out split, and how its training went."""

    model_id: str
    split: Literal["test", "val"] = Field(description="test, or val when the dataset has no test split")
    num_samples: int
    classes: list[str] = Field(description="the model's classes: the order of the confusion matrix")
    accuracy: float
    macro_f1: float
    micro_f1: float
    weighted_f1: float
    macro_precision: float
    macro_recall: float
    per_class: dict[str, ClassMetrics] = Field(description="class name -> metrics, in class order")
    confusion_matrix: list[list[int]] = Field(description="row = true class, column = predicted class")
    history: list[EpochRecord] = Field(description="every finished epoch")
    lr_search: LrSearch | None = Field(description="the learning-rate search, when the job's lr was auto")
    baseline: dict[str, Any] | None = Field(None, description="reserved")
    created_at: Timestamp
