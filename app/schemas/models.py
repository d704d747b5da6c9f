"""Tuned models and predictions."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from app.schemas.common import PublicModel, Timestamp


class TunedModelPublic(PublicModel):
    id: str
    method: str
    backbone: str
    classes: list[str]
    metrics: dict[str, Any]
    job_id: str | None
    created_at: Timestamp
    checkpoint_sha256: str


class TopK(BaseModel):
    label: str
    score: float


class Prediction(BaseModel):
    label: str
    score: float
    top_k: list[TopK]


class PredictionResponse(BaseModel):
    predictions: list[Prediction]
