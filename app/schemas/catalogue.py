"""What the server offers: backbones and methods."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class BackbonePublic(BaseModel):
    name: str
    family: str
    arch: str
    weights: str
    kind: str
    available: bool


class MethodPublic(BaseModel):
    name: str
    family: str = Field(description="the backbone family it runs on: open_clip or timm")
    description: str
    capabilities: dict[str, bool] = Field(
        description="zero_shot: classifies arbitrary class names; init_from: can start from another model"
    )
    config_schema: dict[str, Any] = Field(description="JSON Schema of the job's config for this method")
