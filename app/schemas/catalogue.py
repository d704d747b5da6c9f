"""What the server offers: backbones and methods."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class BackbonePublic(BaseModel):
    name: str
    family: Literal["open_clip", "timm"]
    arch: str
    weights: str = Field(
        description="a pretrained tag, hf-hub:org/repo, local-dir:/path, a file path or random"
    )
    kind: Literal["clip", "supervised", "mae", "moco"] = Field(description="how the weights were pretrained")
    available: bool = Field(description="whether it can load now: on disk, or downloadable from the hub")
    availability: Literal["local", "cached", "downloadable", "missing"] = Field(
        description="local: files on this machine; cached: in the Hugging Face cache; downloadable: the hub "
        "answers and downloads are allowed (HF_HUB_OFFLINE unset); missing: none of these"
    )
    size_bytes: int | None = Field(
        description="the weights' size on disk when present, else the approximate download size"
    )
    num_params: int | None = Field(description="parameters of the loaded backbone (no classification head)")
    source: Literal["catalogue", "zoo", "file"] = Field(
        description="catalogue: built in; zoo: the project's zoo under data_dir/zoo; file: the backbones file"
    )
    description: str
    sha256: str | None = Field(description="the weights file's sha256 when the registry records it")


class MethodPublic(BaseModel):
    name: str
    family: str = Field(description="the backbone family it runs on: open_clip or timm")
    description: str
    capabilities: dict[str, bool] = Field(
        description="zero_shot: classifies arbitrary class names; init_from: can start from another model"
    )
    config_schema: dict[str, Any] = Field(description="JSON Schema of the job's config for this method")
