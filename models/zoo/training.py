"""Small pieces shared by the zoo's pretraining loops: budgets, schedules, prefetching, devices."""

from __future__ import annotations

import dataclasses
import math
import queue
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

import torch

from ..config import check_float, check_int
from ..errors import ConfigError


@dataclasses.dataclass
class Budget:
    """How long a run may go: ``max_steps`` and/or ``max_seconds`` (whichever ends first).

    Step-budgeted runs are bit-reproducible for a seed; a wall-time budget is not (how many steps fit
    depends on the machine), so the lr schedule follows ``progress = max(step / max_steps,
    elapsed / max_seconds)`` and a run records the steps it actually made.
    """

    max_steps: int | None = 1000
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.max_steps is None and self.max_seconds is None:
            raise ConfigError("budget", "set max_steps, max_seconds or both")
        if self.max_steps is not None:
            check_int("max_steps", self.max_steps, minimum=1)
        if self.max_seconds is not None:
            check_float("max_seconds", self.max_seconds, minimum=0.0, strict_min=True)

    def progress(self, step: int, elapsed: float) -> float:
        parts = []
        if self.max_steps is not None:
            parts.append(step / self.max_steps)
        if self.max_seconds is not None:
            parts.append(elapsed / self.max_seconds)
        return min(1.0, max(parts))


def cosine_lr(
    base_lr: float, progress: float, step: int, warmup_steps: int, min_ratio: float = 0.02
) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_ratio * base_lr`` at progress 1."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    cos = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return base_lr * (min_ratio + (1.0 - min_ratio) * cos)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups as open_clip's trainer: no decay on 1-D tensors (gains, biases) or the logit scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def prefetch(
    make: Callable[[int], Any], start: int = 0, depth: int = 2, workers: int = 0
) -> Generator[Any, None, None]:
    """Yield ``make(start), make(start + 1), ...`` computed ``depth`` ahead on a background thread.

    ``make`` must depend on the index only (our world batches do), so prefetching never changes results.
    ``workers > 0`` renders in that many forked processes instead (a GPU outruns one rendering core).
    """
    if workers > 0:
        yield from _prefetch_processes(make, start, depth, workers)
        return
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        i = start
        while not stop.is_set():
            try:
                item = make(i)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer and re-raised there
                q.put(("error", exc))
                return
            while not stop.is_set():
                try:
                    q.put(("ok", item), timeout=0.1)
                    break
                except queue.Full:
                    continue
            i += 1

    thread = threading.Thread(target=work, name="zoo-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


_FORKED_MAKE: Callable[[int], Any] | None = None


def _forked_init() -> None:
    torch.set_num_threads(1)


def _forked_call(index: int) -> Any:
    assert _FORKED_MAKE is not None
    return _FORKED_MAKE(index)


def _prefetch_processes(
    make: Callable[[int], Any], start: int, depth: int, workers: int
) -> Generator[Any, None, None]:
    """In-order results of ``make`` from forked workers, a bounded window ahead (closures need fork)."""
    import collections
    import multiprocessing

    global _FORKED_MAKE
    _FORKED_MAKE = make
    pool = multiprocessing.get_context("fork").Pool(workers, initializer=_forked_init)
    try:
        window: collections.deque[Any] = collections.deque()
        index = start
        while True:
            while len(window) < workers * max(1, depth):
                window.append(pool.apply_async(_forked_call, (index,)))
                index += 1
            yield window.popleft().get()
    finally:
        pool.terminate()
        pool.join()
        _FORKED_MAKE = None


class ProgressLog:
    """Prints a line every ``every`` steps (and at the end), keeps a loss history for the caller."""

    def __init__(self, name: str, every: int, log: Callable[[str], None] | None = print) -> None:
        self.name, self.every, self.log = name, max(1, every), log
        self.history: list[dict[str, float]] = []
        self.start = time.perf_counter()
        self._window: list[float] = []
        self._last: tuple[int, float, int, dict[str, float] | None] = (0, 0.0, 0, None)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def step(
        self, step: int, loss: float, lr: float, images: int, extra: dict[str, float] | None = None
    ) -> None:
        self._window.append(loss)
        self._last = (step, lr, images, extra)
        if (step + 1) % self.every == 0:
            self._emit(step, lr, images, extra)

    def finish(self) -> None:
        """Log the steps since the last line (a run that stopped between two log points)."""
        if self._window:
            self._emit(*self._last)

    def _emit(self, step: int, lr: float, images: int, extra: dict[str, float] | None) -> None:
        mean = sum(self._window) / len(self._window)
        self._window.clear()
        elapsed = self.elapsed()
        row = {
            "step": step + 1,
            "loss": mean,
            "lr": lr,
            "seconds": elapsed,
            "images": images,
            **(extra or {}),
        }
        self.history.append(row)
        if self.log is not None:
            rate = images / max(elapsed, 1e-9)
            more = "".join(f" {k} {v:.4g}" for k, v in (extra or {}).items())
            self.log(
                f"[{self.name}] step {step + 1} loss {mean:.4f} lr {lr:.2e} {rate:.0f} img/s {elapsed:.0f}s{more}"
            )
