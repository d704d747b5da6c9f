"""Zero-shot classifiers: the create request (with its text limits) and the public classifier."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.schemas.common import Timestamp

CLASSIFIER_MAX_CLASSES = 1000  # the same limits as /v1/predict/zero-shot
CLASSIFIER_MAX_TEMPLATES = 64
CLASSIFIER_MAX_TEXT_CHARS = 200
ClassifierText = Annotated[
    str,
    Field(min_length=1, max_length=CLASSIFIER_MAX_TEXT_CHARS, description="surrounding spaces are removed"),
]


def _clean_text(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError(f"{what} must not be blank")
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be valid Unicode text") from None
    return value


class ClassifierCreate(BaseModel):
    """A zero-shot classifier: its text features are computed (or found in the store) at creation."""

    model_config = ConfigDict(extra="forbid")

    classes: list[ClassifierText] = Field(
        min_length=1, max_length=CLASSIFIER_MAX_CLASSES, description="unique, non-empty class names"
    )
    templates: list[ClassifierText] | None = Field(
        default=None,
        min_length=1,
        max_length=CLASSIFIER_MAX_TEMPLATES,
        description="prompt templates, each with \"{}\" exactly once (default: the server's, or the model's)",
    )
    backbone: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="an open_clip backbone (default: the server's; with model_id, the model's)",
    )
    model_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=36,
        description="a tuned model of a zero-shot method (e.g. rpp) whose prompts classify",
    )
    name: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, value: list[str]) -> list[str]:
        cleaned = [_clean_text(v, "class names") for v in value]
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("class names must be unique")
        return cleaned

    @field_validator("templates")
    @classmethod
    def _one_placeholder(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        cleaned = [_clean_text(v, "templates") for v in value]
        if any(t.count("{}") != 1 for t in cleaned):
            raise ValueError('every template must contain "{}" exactly once')
        return cleaned

    @field_validator("backbone", "model_id", "name")
    @classmethod
    def _plain_text(cls, value: str | None) -> str | None:
        return None if value is None else _clean_text(value, "the value")


class ClassifierPublic(BaseModel):
    id: str
    name: str | None
    backbone: str
    classes: list[str]
    templates: list[str]
    model_id: str | None
    num_classes: int
    created_at: Timestamp
    text_features_sha256: str = Field(
        description="sha256 naming the text features (backbone weights, classes, templates, prompts)"
    )
    text_features_cached: bool = Field(description="found already computed, rather than computed at creation")
    text_features_seconds: float = Field(description="what computing (or loading) the text features took")

    @classmethod
    def from_row(cls, row: Any) -> ClassifierPublic:
        return cls(
            id=row.id,
            name=row.name,
            backbone=row.backbone,
            classes=list(row.classes),
            templates=list(row.templates),
            model_id=row.model_id,
            num_classes=len(row.classes),
            created_at=row.created_at,
            text_features_sha256=row.text_features_sha256,
            text_features_cached=row.text_features_cached,
            text_features_seconds=row.text_features_seconds,
        )
