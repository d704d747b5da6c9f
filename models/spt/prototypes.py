"""SPT's prompt initialisation from downstream token prototypes (docs/methods.md B.2, D.8), streamed.

The prompt of block ``l`` is built from the tokens ENTERING block ``l`` of the frozen, un-prompted ViT on
training images: layer 0 = ``patch_embed`` output (before the positional embedding, no CLS); layer ``l >= 1`` =
the output of block ``l - 1`` with the prefix tokens (CLS, registers) removed.

Strategies, per layer:

- ``random``: M tokens drawn uniformly without replacement from every token seen.
- ``mean-pool`` / ``max-pool``: per image, windows of ``N // (M - 1)`` consecutive tokens are pooled; the last
  window pools the tokens left after the ``M - 1`` windows (the whole sequence when none are left), giving M
  candidates per image; then M of all candidates are drawn at random.
- ``kmeans``: M centroids of (a uniform sample of at most ``kmeans_max_tokens``) tokens, batched Lloyd
  iterations in torch with k-means++ seeding.

Unlike the reference code, which stacks every image into one batch and keeps every token (about 43 GB for
CUB in deep mode), the images are streamed in batches and each layer keeps only a fixed-size reservoir: the
rows with the smallest uniform random keys (a torch.Generator seeded by ``seed``), which is a uniform sample
without replacement of everything offered. Memory is flat in the number of images; the cost is one no-grad
forward (blocks ``0 .. L-2`` for deep, ``patch_embed`` alone for shallow) plus a top-k per layer and batch.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import ConfigError, DataError
from . import stages

STRATEGIES = ("random", "mean-pool", "max-pool", "kmeans")


@dataclasses.dataclass
class PrototypeStats:
    """What the init looked at and held (for metadata, tests and benchmarks)."""

    strategy: str
    num_layers: int
    num_prompts: int
    images: int = 0
    candidates_per_layer: int = 0  # tokens (random/kmeans) or pooled windows (mean/max) offered per layer
    capacity_per_layer: int = 0  # rows a layer's reservoir keeps
    peak_held_rows: int = 0  # most token rows held at once, all layers together
    peak_held_bytes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class TokenReservoir:
    """Keeps ``capacity`` rows chosen uniformly without replacement among all rows offered.

    Each offered row gets a uniform key from ``generator`` (CPU, so results do not depend on the device);
    the reservoir holds the rows with the smallest keys. Held rows never exceed ``2 * capacity``.
    """

    def __init__(self, capacity: int, generator: torch.Generator) -> None:
        self.capacity = capacity
        self.generator = generator
        self.keys: torch.Tensor | None = None  # (k,) on CPU, ascending
        self.rows: torch.Tensor | None = None  # (k, D) on the tokens' device
        self.offered = 0
        self.peak_rows = 0

    @property
    def held(self) -> int:
        return 0 if self.rows is None else int(self.rows.shape[0])

    def offer(self, candidates: torch.Tensor) -> None:
        """Offer the rows of ``candidates`` (B, T, D) (a view is fine: only chosen rows are copied)."""
        b, t, _ = candidates.shape
        n = b * t
        if n == 0:
            return
        self.offered += n
        keys = torch.rand(n, generator=self.generator)
        take = min(self.capacity, n)
        keys, idx = torch.topk(keys, take, largest=False, sorted=True)
        idx = idx.to(candidates.device)
        rows = candidates[idx // t, idx % t]
        if self.keys is not None and self.rows is not None:
            keys = torch.cat([self.keys, keys])
            rows = torch.cat([self.rows, rows])
            self.peak_rows = max(self.peak_rows, int(rows.shape[0]))
            keys, keep = torch.topk(keys, min(self.capacity, keys.numel()), largest=False, sorted=True)
            rows = rows[keep.to(rows.device)]
        self.keys, self.rows = keys, rows
        self.peak_rows = max(self.peak_rows, int(rows.shape[0]))


def pool_windows(num_tokens: int, num_prompts: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each pooling window over a sequence of ``num_tokens`` (SPT's mean/max pooling).

    ``M - 1`` windows of ``N // (M - 1)`` consecutive tokens, then one window over the remaining tokens. When
    nothing remains (``N % (M - 1) == 0``) the last window is the whole sequence: that is what the reference
    code's ``x[:, -0:]`` slice does in that case. (The reference code sizes the last window ``N % w``
    instead of ``N - (M - 1) * w``; the two agree at its defaults, N = 196 and M = 20.)
    """
    if num_tokens < 1:
        raise ValueError("num_tokens must be >= 1")
    if num_prompts <= 1:
        return [(0, num_tokens)]
    width = max(1, num_tokens // (num_prompts - 1))
    full = min(num_prompts - 1, num_tokens // width)
    windows = [(j * width, (j + 1) * width) for j in range(full)]
    windows.append((full * width, num_tokens) if full * width < num_tokens else (0, num_tokens))
    return windows


def pooled_candidates(tokens: torch.Tensor, num_prompts: int, mode: str) -> torch.Tensor:
    """(B, N, D) -> (B, W, D): each image's windows (:func:`pool_windows`) mean- or max-pooled."""

    def reduce(x: torch.Tensor, dim: int) -> torch.Tensor:
        return x.mean(dim=dim) if mode == "mean-pool" else x.amax(dim=dim)

    b, n, d = tokens.shape
    windows = pool_windows(n, num_prompts)
    start, end = windows[-1]
    last = reduce(tokens[:, start:end], 1).unsqueeze(1)
    full = len(windows) - 1  # equal windows before the last one
    if not full:
        return last
    width = windows[0][1]
    head = reduce(tokens[:, : full * width].reshape(b, full, width, d), 2)
    return torch.cat([head, last], dim=1)


def kmeans(points: torch.Tensor, k: int, *, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Batched k-means: ``points`` (L, S, D) -> centroids (L, k, D).

    k-means++ seeding (a loop over the k centroids, vectorised over layers and points), then ``iters``
    Lloyd iterations; an empty cluster keeps its previous centroid. ``generator`` lives on ``points.device``.
    """
    pts = points.float()
    num_layers, num_points, dim = pts.shape
    if num_points < k:
        raise DataError(f"k-means needs at least {k} tokens per layer, got {num_points}")
    sq = (pts * pts).sum(-1)  # (L, S)
    layer = torch.arange(num_layers, device=pts.device)

    def sqdist(centroids: torch.Tensor) -> torch.Tensor:  # (L, S, C) squared distances
        cross = torch.bmm(pts, centroids.transpose(1, 2))
        return (sq[:, :, None] - 2 * cross + (centroids * centroids).sum(-1)[:, None, :]).clamp_min_(0)

    first = torch.randint(num_points, (num_layers,), generator=generator, device=pts.device)
    centroids = [pts[layer, first]]  # each (L, D)
    nearest = sqdist(centroids[0][:, None, :])[..., 0]  # (L, S)
    for _ in range(1, k):
        weights = torch.where(nearest.sum(1, keepdim=True) > 0, nearest, torch.ones_like(nearest))
        pick = torch.multinomial(weights, 1, generator=generator)[:, 0]
        centroids.append(pts[layer, pick])
        nearest = torch.minimum(nearest, sqdist(centroids[-1][:, None, :])[..., 0])
    cent = torch.stack(centroids, dim=1)  # (L, k, D)

    ones = torch.ones(num_layers, num_points, device=pts.device)
    for _ in range(iters):
        assign = sqdist(cent).argmin(-1)  # (L, S)
        sums = torch.zeros_like(cent).scatter_add_(1, assign[..., None].expand(-1, -1, dim), pts)
        counts = torch.zeros(num_layers, k, device=pts.device).scatter_add_(1, assign, ones)
        new = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], cent)
        if torch.equal(new, cent):
            break
        cent = new
    return cent.to(points.dtype)


# ---- data ---------------------------------------------------------------------------------------------
def _item_image(item: Any) -> torch.Tensor:
    if isinstance(item, dict):
        item = item["image"]
    elif isinstance(item, list | tuple):
        item = item[0]
    if not isinstance(item, torch.Tensor):
        raise DataError(f"prototype init needs image tensors, got {type(item).__name__}")
    return item


def _collate_images(items: list[Any]) -> torch.Tensor:
    return torch.stack([_item_image(it) for it in items])


def iter_image_batches(
    data: Any,
    *,
    max_images: int,
    batch_size: int,
    generator: torch.Generator,
    num_workers: int = 0,
) -> Iterator[torch.Tensor]:
    """Batches of at most ``max_images`` images of ``data``.

    ``data``: an image tensor (N, 3, H, W); a map-style dataset (items ``{"image": ...}``, ``(image, label)``
    or tensors), of which a random subset (``generator``) is used when it is larger than ``max_images``; or
    an iterable dataset, of which the first ``max_images`` items are used.
    """
    if isinstance(data, torch.Tensor):
        if data.ndim != 4:
            raise DataError(f"an image tensor must be (N, C, H, W), got shape {tuple(data.shape)}")
        if data.shape[0] > max_images:
            keep = torch.randperm(data.shape[0], generator=generator)[:max_images].sort().values
            data = data[keep]
        yield from data.split(batch_size)
        return
    from torch.utils.data import DataLoader, IterableDataset, Subset

    if not isinstance(data, IterableDataset) and hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        n = len(data)
        if n > max_images:
            subset: list[int] = torch.randperm(n, generator=generator)[:max_images].sort().values.tolist()
            data = Subset(data, subset)
        loader = DataLoader(
            data, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate_images
        )
        yield from loader
        return
    # iterable: stream, stop after max_images
    seen = 0
    batch: list[Any] = []
    for item in data:
        batch.append(item)
        seen += 1
        if len(batch) == batch_size or seen == max_images:
            yield _collate_images(batch)
            batch = []
        if seen == max_images:
            return
    if batch:
        yield _collate_images(batch)


# ---- the init -----------------------------------------------------------------------------------------
def iter_layer_inputs(
    model: Any, images: torch.Tensor, num_layers: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(l, tokens entering block l)`` for ``l < num_layers`` of the un-prompted ViT; tokens (B, N, D), no prefix.

    Runs only what is needed: ``patch_embed`` for layer 0, blocks ``0 .. num_layers - 2`` after it.
    """
    patches = stages.patch_tokens(model, images)
    yield 0, stages.flat_tokens(patches)
    if num_layers == 1:
        return
    npt = model.num_prefix_tokens
    x = stages.embed_patches(model, patches)
    for layer in range(1, num_layers):
        x = model.blocks[layer - 1](x)
        yield layer, x[:, npt:]


def _check_prototype_args(model: Any, num_prompts: int, num_layers: int, strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ConfigError("init", f"unknown prototype strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    if num_prompts < 1:
        raise ConfigError("num_prompts", "prototype init needs num_prompts >= 1")
    stages.check_vit(model)
    if not 1 <= num_layers <= len(model.blocks):
        raise ConfigError("mode", f"num_layers must be in [1, {len(model.blocks)}], got {num_layers}")


def _offer_layer_inputs(
    model: Any,
    batches: Iterator[torch.Tensor],
    reservoirs: list[TokenReservoir],
    strategy: str,
    stats: PrototypeStats,
) -> None:
    """The streamed pass: every batch's per-layer tokens (or pooled windows) go to that layer's reservoir."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for images in batches:
                images = images.to(device=device, dtype=dtype, non_blocking=True)
                stats.images += images.shape[0]
                for layer, tokens in iter_layer_inputs(model, images, len(reservoirs)):
                    if strategy in ("mean-pool", "max-pool"):
                        tokens = pooled_candidates(tokens, stats.num_prompts, strategy)
                    reservoirs[layer].offer(tokens)
    finally:
        model.train(was_training)


def _held_rows(reservoirs: list[TokenReservoir], stats: PrototypeStats) -> torch.Tensor:
    """``(L, held, D)``: what the reservoirs kept, once they have at least ``num_prompts`` rows each."""
    if stats.images == 0:
        raise DataError("prototype init got no training images")
    stats.candidates_per_layer = reservoirs[0].offered
    if reservoirs[0].held < stats.num_prompts:
        raise DataError(
            f"prototype init ({stats.strategy}) saw {reservoirs[0].offered} candidate tokens per layer in "
            f"{stats.images} images but needs {stats.num_prompts}: use more images or fewer prompts"
        )
    rows = torch.stack([r.rows for r in reservoirs if r.rows is not None])  # (L, held, D), a normal tensor
    stats.peak_held_rows = sum(r.peak_rows for r in reservoirs)
    stats.peak_held_bytes = stats.peak_held_rows * rows.shape[-1] * rows.element_size()
    return rows


def compute_prototypes(
    model: Any,
    data: Any,
    *,
    num_prompts: int,
    num_layers: int,
    strategy: str,
    seed: int,
    max_images: int = 1000,
    batch_size: int = 64,
    kmeans_iters: int = 20,
    kmeans_max_tokens: int = 4096,
    num_workers: int = 0,
) -> tuple[torch.Tensor, PrototypeStats]:
    """SPT prototypes (num_layers, num_prompts, D) for blocks ``0 .. num_layers - 1`` of a frozen timm ViT.

    One streamed no-grad pass over at most ``max_images`` images of ``data`` (see :func:`iter_image_batches`).
    Deterministic for a given ``seed``, data and batch size.
    """
    _check_prototype_args(model, num_prompts, num_layers, strategy)
    started = time.perf_counter()
    data_gen = torch.Generator().manual_seed(seed)
    key_gen = torch.Generator().manual_seed(seed + 1)
    capacity = kmeans_max_tokens if strategy == "kmeans" else num_prompts
    reservoirs = [TokenReservoir(capacity, key_gen) for _ in range(num_layers)]
    stats = PrototypeStats(strategy, num_layers, num_prompts, capacity_per_layer=capacity)
    batches = iter_image_batches(
        data, max_images=max_images, batch_size=batch_size, generator=data_gen, num_workers=num_workers
    )
    _offer_layer_inputs(model, batches, reservoirs, strategy, stats)
    rows = _held_rows(reservoirs, stats)
    if strategy == "kmeans":
        gen = torch.Generator(device=rows.device).manual_seed(seed + 2)
        with torch.no_grad():
            rows = kmeans(rows, num_prompts, iters=kmeans_iters, generator=gen)
    stats.seconds = time.perf_counter() - started
    return rows, stats
