"""Dataset preview schemas: images per class and split, and a few samples per class (the web console)."""

from __future__ import annotations

from pydantic import BaseModel, Field

PREVIEW_MAX_PER_CLASS = 20


class PreviewSample(BaseModel):
    index: int = Field(
        description="the image's line in the dataset's manifest (0-based); names its thumbnail"
    )
    label: str
    split: str | None = Field(description="train, val or test; null for an image without a split")


class DatasetPreview(BaseModel):
    class_counts: dict[str, dict[str, int]] = Field(
        description="per class (in the dataset's class order), images per split present: train, val, test, "
        "and unsplit for images without a split"
    )
    samples: list[PreviewSample] = Field(
        description="the first per_class images of each class, in manifest order"
    )
