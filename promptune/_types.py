"""Typed results: frozen dataclasses parsed from the API's JSON.

Parsing is forward compatible: fields the server adds are ignored (the whole object stays available as
``raw``), fields it leaves out take their defaults, and timestamps become timezone-aware ``datetime``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

T = TypeVar("T")
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def parse_datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


class _Parsed:
    """``from_json`` for the dataclasses below: known keys only, each through its converter."""

    _convert: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}

    @classmethod
    def from_json(cls: type[T], obj: Mapping[str, Any]) -> T:
        convert = cls._convert  # type: ignore[attr-defined]
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name == "raw":
                kwargs["raw"] = dict(obj)
            elif f.name in obj:
                value = obj[f.name]
                kwargs[f.name] = convert[f.name](value) if f.name in convert and value is not None else value
        return cls(**kwargs)


def _raw() -> Any:
    return field(default_factory=dict, repr=False, compare=False)


_DATES: dict[str, Callable[[Any], Any]] = dict.fromkeys(
    ("created_at", "started_at", "finished_at", "updated_at"), parse_datetime
)


@dataclass(frozen=True)
class Backbone(_Parsed):
    """A backbone the server offers (GET /v1/backbones): ``available`` says whether it can load now."""

    name: str
    family: str = ""
    arch: str = ""
    weights: str = ""
    kind: str = ""
    available: bool = False
    availability: str = ""  # local | cached | downloadable | missing
    size_bytes: int | None = None
    num_params: int | None = None
    source: str = ""  # file | zoo | catalogue
    description: str = ""
    sha256: str | None = None
    raw: dict[str, Any] = _raw()


@dataclass(frozen=True)
class Method(_Parsed):
    """A tuning method (GET /v1/methods): its backbone family, capabilities and config JSON Schema."""

    name: str
    family: str = ""
    description: str = ""
    capabilities: dict[str, bool] = field(default_factory=dict)
    config_schema: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = _raw()


@dataclass(frozen=True)
class Dataset(_Parsed):
    id: str
    name: str = ""
    status: str = ""
    num_images: int = 0
    num_classes: int = 0
    classes: list[str] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)  # {"skipped": [...], "trimmed": [...]}
    created_at: datetime | None = None
    raw: dict[str, Any] = _raw()
    _convert = _DATES


@dataclass(frozen=True)
class JobError(_Parsed):
    code: str
    message: str = ""
    raw: dict[str, Any] = _raw()


@dataclass(frozen=True)
class Job(_Parsed):
    id: str
    method: str = ""
    backbone: str = ""
    dataset_id: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    status: str = ""
    phase: str | None = None
    progress: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    error: JobError | None = None
    model_id: str | None = None
    attempts: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    raw: dict[str, Any] = _raw()
    _convert = {**_DATES, "error": JobError.from_json}

    @property
    def done(self) -> bool:
        """Whether the job reached a terminal status (succeeded, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class JobEvent(_Parsed):
    """One job event: ``type`` is ``status`` (data.status, data.phase), ``message`` (progress: data.step,
    data.total_steps, data.loss, ...; or free text) or ``metrics`` (one per epoch)."""

    id: int
    type: str = ""
    message: str = ""
    level: str = "info"
    data: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    raw: dict[str, Any] = _raw()
    _convert = _DATES

    @property
    def terminal(self) -> bool:
        """Whether this event says the job ended."""
        return self.type == "status" and self.data.get("status") in TERMINAL_STATUSES


@dataclass(frozen=True)
class TunedModel(_Parsed):
    id: str
    method: str = ""
    backbone: str = ""
    classes: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    job_id: str | None = None
    checkpoint_sha256: str = ""
    created_at: datetime | None = None
    raw: dict[str, Any] = _raw()
    _convert = _DATES


@dataclass(frozen=True)
class ClassMetrics(_Parsed):
    precision: float = 0.0
    recall: float = 0.0
    f1: float = 0.0
    support: int = 0
    raw: dict[str, Any] = _raw()


def _per_class(value: Mapping[str, Any]) -> dict[str, ClassMetrics]:
    return {name: ClassMetrics.from_json(m) for name, m in value.items()}


@dataclass(frozen=True)
class Report(_Parsed):
    """A tuned model's evaluation report (GET /v1/models/{id}/report)."""

    model_id: str
    split: str = ""
    num_samples: int = 0
    classes: list[str] = field(default_factory=list)
    accuracy: float | None = None
    macro_f1: float | None = None
    micro_f1: float | None = None
    weighted_f1: float | None = None
    macro_precision: float | None = None
    macro_recall: float | None = None
    per_class: dict[str, ClassMetrics] = field(default_factory=dict)
    confusion_matrix: list[list[int]] = field(default_factory=list)  # row: true class; column: predicted
    history: list[dict[str, Any]] = field(default_factory=list)
    lr_search: dict[str, Any] | None = None
    baseline: Any = None
    created_at: datetime | None = None
    raw: dict[str, Any] = _raw()
    _convert = {**_DATES, "per_class": _per_class}


@dataclass(frozen=True)
class TopK(_Parsed):
    label: str
    score: float
    raw: dict[str, Any] = _raw()


@dataclass(frozen=True)
class Prediction(_Parsed):
    label: str
    score: float
    top_k: list[TopK] = field(default_factory=list)
    raw: dict[str, Any] = _raw()
    _convert = {"top_k": lambda items: [TopK.from_json(i) for i in items]}


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list, newest first. ``next_page()`` fetches the next one; ``auto_paging_iter()``
    walks this page and every later one."""

    data: list[T]
    has_more: bool = False
    next_cursor: str | None = None
    _fetch: Callable[[str], Page[T]] | None = field(default=None, repr=False, compare=False)

    def __iter__(self) -> Iterator[T]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def next_page(self) -> Page[T] | None:
        if not self.has_more or self.next_cursor is None or self._fetch is None:
            return None
        return self._fetch(self.next_cursor)

    def auto_paging_iter(self) -> Iterator[T]:
        page: Page[T] | None = self
        while page is not None:
            yield from page.data
            page = page.next_page()


def parse_page(
    body: Any, parse: Callable[[Mapping[str, Any]], T], fetch: Callable[[str], Page[T]] | None
) -> Page[T]:
    """A page from the envelope ``{"data", "has_more", "next_cursor"}`` (a bare list, as servers before
    the envelope answered, is one last page)."""
    if isinstance(body, list):
        return Page([parse(item) for item in body])
    return Page(
        [parse(item) for item in body.get("data", [])],
        bool(body.get("has_more", False)),
        body.get("next_cursor"),
        fetch,
    )
