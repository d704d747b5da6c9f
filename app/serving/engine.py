"""Admission and routing of predictions: a bounded queue, a per-tenant share, a deadline per request.

Every predict request (tuned model, zero-shot, classifier) becomes a :class:`~app.serving.lane.WorkItem`
on the lane of its backbone; requests for different tuned models on one backbone share forwards there.
Overload never queues without limit: past ``inference_max_queue_images`` queued images the request is
refused with 503 and a ``Retry-After`` estimated from the queue and the observed forward time; a tenant
holding more than ``inference_max_tenant_images`` images in flight gets 429.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.core.errors import ServiceError
from app.core.settings import Settings
from app.serving.device import precision, resolve_device
from app.serving.lane import BatchReport, DeadlineExceeded, Lane, RunBatch, WorkItem


class Overloaded(ServiceError):
    """The server's queue is full (503), or this tenant's share of it is (429); retry after ``retry_after``."""

    def __init__(self, code: str, message: str, retry_after: int, status: int) -> None:
        super().__init__(code, message)
        self.retry_after, self.status = retry_after, status


def make_run_batch(device: torch.device, dtype: str) -> RunBatch:
    """``models.batched_logits`` on ``device`` in ``dtype`` (autocast), logits returned as float32."""

    def run(items: Sequence[tuple[Any, torch.Tensor]]) -> list[torch.Tensor]:
        from models import batched_logits

        placed = [(target, images.to(device, non_blocking=True)) for target, images in items]
        with precision(device, dtype):
            return [logits.float() for logits in batched_logits(placed)]

    return run


class ServingMetrics(Collector):
    """Queue depth (collected at scrape time), batch sizes, waits, forward times and refusals."""

    def __init__(self, registry: CollectorRegistry, engine: InferenceEngine) -> None:
        self.engine = engine
        self.batch_images = Histogram(
            "promptune_inference_batch_images", "Images per batched forward", ["backbone"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=registry,
        )  # fmt: skip
        self.batch_requests = Histogram(
            "promptune_inference_batch_requests", "Requests per batched forward", ["backbone"],
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=registry,
        )  # fmt: skip
        self.wait = Histogram(
            "promptune_inference_wait_seconds", "Queueing time of a request before its forward", ["backbone"],
            registry=registry,
        )  # fmt: skip
        self.forward = Histogram(
            "promptune_inference_forward_seconds",
            "Time of one batched forward",
            ["backbone"],
            registry=registry,
        )
        self.refused = PromCounter(
            "promptune_inference_refused_total",
            "Predictions refused or expired",
            ["reason"],
            registry=registry,
        )
        registry.register(self)

    def collect(self) -> Any:
        gauge = GaugeMetricFamily(
            "promptune_inference_queue_images", "Images queued per backbone", labels=["backbone"]
        )
        for name, lane in self.engine.lanes().items():
            gauge.add_metric([name], float(lane.queued_images))
        yield gauge

    def observe(self, backbone: str, report: BatchReport) -> None:
        self.batch_images.labels(backbone).observe(report.images)
        self.batch_requests.labels(backbone).observe(report.requests)
        self.forward.labels(backbone).observe(report.forward_seconds)
        for seconds in report.waited:
            self.wait.labels(backbone).observe(seconds)
        if report.expired:
            self.refused.labels("deadline_exceeded").inc(report.expired)


class InferenceEngine:
    """Routes predictions to per-backbone lanes; one per API process."""

    def __init__(self, settings: Settings, *, run_batch: RunBatch | None = None) -> None:
        self.settings = settings
        self.device = resolve_device(settings.inference_device)
        self.run_batch = run_batch or make_run_batch(self.device, settings.inference_dtype)
        self._lanes: dict[str, Lane] = {}
        self._tenant_images: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.metrics: ServingMetrics | None = None

    def instrument(self, registry: CollectorRegistry) -> None:
        self.metrics = ServingMetrics(registry, self)

    def lanes(self) -> dict[str, Lane]:
        with self._lock:
            return dict(self._lanes)

    def _lane(self, backbone: str) -> Lane:
        with self._lock:
            lane = self._lanes.get(backbone)
            if lane is None:
                lane = self._lanes[backbone] = Lane(
                    backbone,
                    self.run_batch,
                    max_batch_images=self.settings.inference_max_batch_images,
                    max_wait=self.settings.inference_max_wait_ms / 1000,
                    on_batch=lambda report: self.metrics.observe(backbone, report) if self.metrics else None,
                )
            return lane

    def _retry_after(self, lane: Lane) -> int:
        batches = lane.queued_images / max(1, self.settings.inference_max_batch_images) + 1
        return max(1, min(60, math.ceil(batches * max(lane.forward_estimate, 0.05))))

    def _admit(self, lane: Lane, tenant_id: str, images: int) -> None:
        settings = self.settings
        with self._lock:
            if lane.queued_images + images > settings.inference_max_queue_images:
                reason, status, message = "overloaded", 503, "the prediction queue is full; retry later"
            elif self._tenant_images[tenant_id] + images > settings.inference_max_tenant_images:
                reason, status, message = (
                    "rate_limited",
                    429,
                    "too many predictions in flight for this tenant",
                )
            else:
                self._tenant_images[tenant_id] += images
                return
        if self.metrics is not None:
            self.metrics.refused.labels(reason).inc()
        raise Overloaded(reason, message, self._retry_after(lane), status)

    def _release(self, tenant_id: str, images: int) -> None:
        with self._lock:
            self._tenant_images[tenant_id] -= images
            if self._tenant_images[tenant_id] <= 0:
                del self._tenant_images[tenant_id]

    async def logits(
        self, *, backbone: str, target: Any, images: torch.Tensor, tenant_id: str
    ) -> torch.Tensor:
        """The target's logits for ``images`` (n, 3, H, W), computed in a shared batch on ``backbone``'s lane.

        Raises:
            Overloaded: the queue or the tenant's share is full (nothing was queued).
            DeadlineExceeded: the request waited past ``inference_timeout_seconds``.
        """
        lane = self._lane(backbone)
        size = int(images.shape[0])
        self._admit(lane, tenant_id, size)
        deadline = time.monotonic() + self.settings.inference_timeout_seconds
        item = WorkItem(target, images, tenant_id, deadline)
        try:
            lane.put(item)
            # The lane refuses an expired request when its batch starts; this bounds a wait behind a stuck
            # forward too (a running forward's result is then dropped).
            timeout = self.settings.inference_timeout_seconds + 1.0
            return await asyncio.wait_for(asyncio.wrap_future(item.future), timeout)
        except TimeoutError:
            raise DeadlineExceeded() from None
        finally:
            self._release(tenant_id, size)

    def close(self) -> None:
        for lane in self.lanes().values():
            lane.stop()
