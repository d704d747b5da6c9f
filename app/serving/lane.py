"""One backbone's request queue and the thread that turns it into batched forwards.

Requests wait at most ``max_wait`` for company, and only when company is likely: the wait adapts to the
observed forward time (never longer than about half a forward, since requests that arrive during a forward
join the next batch anyway) and to the observed gap between arrivals (a lone client is never kept
waiting for a second request that will not come within the wait), up to ``max_batch_images`` images. A batch runs as one call of ``run_batch`` (shared
forwards across tuned models, ``models.batched_logits``); when that call fails, each request runs alone so
that a failing model or input fails only its own request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from app.core.errors import ServiceError

log = logging.getLogger("promptune.serving")
RunBatch = Callable[[Sequence[tuple[Any, torch.Tensor]]], list[torch.Tensor]]
EWMA_WEIGHT = 0.2  # weight of the newest forward time in the running estimate


class DeadlineExceeded(ServiceError):
    def __init__(self) -> None:
        super().__init__("deadline_exceeded", "the prediction waited longer than its deadline; retry later")


@dataclass(eq=False)  # compared by identity: two requests are never "equal"
class WorkItem:
    """One request's images for one target (a tuned method or a zero-shot classifier)."""

    target: Any
    images: torch.Tensor  # (n, 3, H, W), preprocessed for the target's backbone
    tenant_id: str
    deadline: float  # time.monotonic() after which the request is answered 503
    future: Future[torch.Tensor] = field(default_factory=Future)
    enqueued_at: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        return int(self.images.shape[0])


@dataclass
class BatchReport:
    """What one batch did, for the metrics."""

    images: int
    requests: int
    waited: list[float]  # per request: seconds between enqueue and the forward's start
    forward_seconds: float
    expired: int


class Lane:
    """The queue of one backbone and its worker thread."""

    def __init__(
        self,
        name: str,
        run_batch: RunBatch,
        *,
        max_batch_images: int,
        max_wait: float,
        on_batch: Callable[[BatchReport], None] | None = None,
    ) -> None:
        self.name, self.run_batch = name, run_batch
        self.max_batch_images, self.max_wait = max_batch_images, max_wait
        self.on_batch = on_batch
        self.forward_estimate = 0.0  # EWMA of a batch's forward seconds
        self.arrival_gap = float("inf")  # EWMA of the seconds between two requests' arrivals
        self._last_arrival: float | None = None
        self._queue: deque[WorkItem] = deque()
        self._queued_images = 0
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name=f"promptune-lane-{name}", daemon=True)
        self._thread.start()

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def put(self, item: WorkItem) -> None:
        with self._cond:
            if self._last_arrival is not None:
                gap = item.enqueued_at - self._last_arrival
                self.arrival_gap = gap if self.arrival_gap == float("inf") else _ewma(self.arrival_gap, gap)
            self._last_arrival = item.enqueued_at
            self._queue.append(item)
            self._queued_images += item.size
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    # ---- the worker thread ----
    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except Exception as exc:  # noqa: BLE001 - the lane must outlive any bug in one batch
                log.exception("lane %s: a batch failed outside its forward", self.name)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)

    def _wait_budget(self) -> float:
        budget = min(self.max_wait, 0.5 * self.forward_estimate) if self.forward_estimate else self.max_wait
        return budget if self.arrival_gap < budget else 0.0  # no company expected within the budget

    def _next_batch(self) -> list[WorkItem] | None:
        with self._cond:
            while not self._queue and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return None
            gather_until = self._queue[0].enqueued_at + self._wait_budget()
            while self._queued_images < self.max_batch_images and not self._stopped:
                remaining = gather_until - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch: list[WorkItem] = []
            images = 0
            while self._queue and (not batch or images + self._queue[0].size <= self.max_batch_images):
                item = self._queue.popleft()
                batch.append(item)
                images += item.size
            self._queued_images -= images
            return batch

    def _run(self, batch: list[WorkItem]) -> None:
        now = time.monotonic()
        live = [item for item in batch if item.deadline > now and item.future.set_running_or_notify_cancel()]
        for item in batch:
            if item not in live and not item.future.done():
                item.future.set_exception(DeadlineExceeded())
        if not live:
            return
        start = time.monotonic()
        self._forward(live)
        seconds = time.monotonic() - start
        self.forward_estimate = _ewma(self.forward_estimate, seconds) if self.forward_estimate else seconds
        if self.on_batch is not None:
            waited = [start - item.enqueued_at for item in live]
            report = BatchReport(
                sum(i.size for i in live), len(live), waited, seconds, len(batch) - len(live)
            )
            self.on_batch(report)

    def _forward(self, items: list[WorkItem]) -> None:
        try:
            with torch.inference_mode():
                outputs = self.run_batch([(item.target, item.images) for item in items])
        except Exception as exc:  # noqa: BLE001 - one bad request must not fail the batch: run each alone
            if len(items) == 1:
                items[0].future.set_exception(exc)
                return
            log.warning(
                "lane %s: a batch of %d requests failed; running them one by one", self.name, len(items)
            )
            for item in items:
                self._forward([item])
            return
        for item, logits in zip(items, outputs, strict=True):
            item.future.set_result(logits)


def _ewma(estimate: float, sample: float) -> float:
    return (1 - EWMA_WEIGHT) * estimate + EWMA_WEIGHT * sample
