"""SPT prototype initialisation: exact token provenance, pooled windows, k-means, determinism, flat memory."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset, IterableDataset

from models.backbones.timm_loader import load_timm_backbone
from models.errors import DataError
from models.spt.prototypes import (
    TokenReservoir,
    compute_prototypes,
    kmeans,
    pool_windows,
    pooled_candidates,
)
from tests.tiny import tiny_vit_spec

M = 6  # prompts per layer in these tests
BATCH = 8


class Images(Dataset):
    """Items like models.data's: {"image", "label", "index"}."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.images = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": i % 3, "index": i}


class Stream(IterableDataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __iter__(self):
        for i, image in enumerate(self.images):
            yield {"image": image, "label": 0, "index": i}


@pytest.fixture(scope="module")
def vit():
    return load_timm_backbone(tiny_vit_spec()).model


def reference_layer_inputs(model, images: torch.Tensor) -> list[torch.Tensor]:
    """Tokens entering each block, taken independently with forward hooks on the plain timm model."""
    caught: dict[str, torch.Tensor] = {}
    hooks = [model.patch_embed.register_forward_hook(lambda m, i, o: caught.__setitem__("0", o))]
    for i, block in enumerate(model.blocks):
        hooks.append(
            block.register_forward_hook(lambda m, inp, out, i=i: caught.__setitem__(str(i + 1), out))
        )
    per_layer: list[list[torch.Tensor]] = [[] for _ in model.blocks]
    try:
        with torch.no_grad():
            for batch in images.split(BATCH):  # the same batches the init streams
                model.forward_features(batch)
                per_layer[0].append(caught["0"])
                for layer in range(1, len(model.blocks)):
                    per_layer[layer].append(caught[str(layer)][:, model.num_prefix_tokens :])
    finally:
        for hook in hooks:
            hook.remove()
    return [torch.cat(chunks) for chunks in per_layer]  # each (num_images, N, D)


def rows_found(rows: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """For each row of ``rows`` (M, D): is it bit-identical to some row of ``candidates`` (K, D)?"""
    return (rows[:, None, :] == candidates[None, :, :]).all(-1).any(-1)


@pytest.mark.parametrize(("num_layers", "shape"), [(1, (1, M, 64)), (2, (2, M, 64))])
@pytest.mark.parametrize("strategy", ["random", "mean-pool", "max-pool", "kmeans"])
def test_shapes(vit, num_layers, shape, strategy) -> None:
    protos, stats = compute_prototypes(
        vit, Images(20), num_prompts=M, num_layers=num_layers, strategy=strategy, seed=0, batch_size=BATCH
    )
    assert tuple(protos.shape) == shape and torch.isfinite(protos).all()
    assert stats.images == 20 and stats.num_layers == num_layers
    assert not protos.requires_grad and not protos.is_inference()


def test_random_rows_are_exact_rows_of_each_layer_input(vit) -> None:
    data = Images(20)
    protos, _ = compute_prototypes(
        vit, data, num_prompts=M, num_layers=2, strategy="random", seed=3, batch_size=BATCH
    )
    inputs = reference_layer_inputs(vit, data.images)
    for layer in range(2):
        tokens = inputs[layer].reshape(-1, 64)
        assert rows_found(protos[layer], tokens).all(), f"layer {layer}: a row is not an input token"
        # nearest-neighbour distance is exactly 0
        nearest = (protos[layer][:, None, :] - tokens[None, :, :]).pow(2).sum(-1).min(dim=1).values
        assert torch.equal(nearest, torch.zeros(M))
        # the M rows are M distinct tokens (sampling without replacement)
        assert torch.unique(protos[layer], dim=0).shape[0] == M
    # layer 0 comes before the positional embedding: with a huge pos_embed the rows still match patch_embed
    with torch.no_grad():
        saved = vit.pos_embed.clone()
        vit.pos_embed.add_(100.0)
    try:
        shallow, _ = compute_prototypes(
            vit, data, num_prompts=M, num_layers=1, strategy="random", seed=3, batch_size=BATCH
        )
        patches = vit.patch_embed(data.images).reshape(-1, 64)
        assert rows_found(shallow[0], patches).all()
    finally:
        with torch.no_grad():
            vit.pos_embed.copy_(saved)


def test_layer_one_rows_come_from_the_unprompted_block_output_without_cls(vit) -> None:
    data = Images(16)
    protos, _ = compute_prototypes(
        vit, data, num_prompts=M, num_layers=2, strategy="random", seed=5, batch_size=BATCH
    )
    with torch.no_grad():
        x = vit.blocks[0](vit._pos_embed(vit.patch_embed(data.images[:BATCH])))
        y = vit.blocks[0](vit._pos_embed(vit.patch_embed(data.images[BATCH:])))
    cls = torch.cat([x[:, 0], y[:, 0]])
    assert not rows_found(protos[1], cls).any()


@pytest.mark.parametrize("strategy", ["mean-pool", "max-pool"])
def test_pooled_rows_equal_pooled_windows(vit, strategy) -> None:
    data = Images(20)
    protos, _ = compute_prototypes(
        vit, data, num_prompts=M, num_layers=2, strategy=strategy, seed=1, batch_size=BATCH
    )
    inputs = reference_layer_inputs(vit, data.images)
    windows = pool_windows(16, M)
    for layer in range(2):
        tokens = inputs[layer]
        pooled = [
            tokens[:, s:e].mean(dim=1) if strategy == "mean-pool" else tokens[:, s:e].amax(dim=1)
            for s, e in windows
        ]
        candidates = torch.stack(pooled, dim=1).reshape(-1, 64)  # every window of every image
        dist = torch.cdist(protos[layer].double(), candidates.double()).min(dim=1).values
        assert dist.max() < 1e-5, dist
        assert torch.unique(protos[layer], dim=0).shape[0] == M


def test_pool_windows() -> None:
    # SPT's defaults: 196 tokens, M = 20 -> 19 windows of 10, then the last 6 tokens
    windows = pool_windows(196, 20)
    assert (
        len(windows) == 20 and windows[:2] == [(0, 10), (10, 20)] and windows[-2:] == [(180, 190), (190, 196)]
    )
    # shallow default M = 100: 99 single-token windows, then the 97 remaining tokens
    windows = pool_windows(196, 100)
    assert len(windows) == 100 and windows[98] == (98, 99) and windows[-1] == (99, 196)
    # remainder 0: the last window pools the whole sequence (never an empty window)
    assert pool_windows(16, 5) == [(0, 4), (4, 8), (8, 12), (12, 16), (0, 16)]
    assert pool_windows(16, 1) == [(0, 16)]
    # more prompts than tokens: one window per token plus the whole sequence
    assert pool_windows(3, 10) == [(0, 1), (1, 2), (2, 3), (0, 3)]
    for n, m in [(196, 20), (196, 100), (16, 6), (7, 3), (50, 8)]:
        assert all(e > s for s, e in pool_windows(n, m))


def test_pooled_candidates_match_the_windows() -> None:
    tokens = torch.randn(3, 17, 5)
    for mode in ("mean-pool", "max-pool"):
        got = pooled_candidates(tokens, 6, mode)
        want = torch.stack(
            [
                tokens[:, s:e].mean(1) if mode == "mean-pool" else tokens[:, s:e].amax(1)
                for s, e in pool_windows(17, 6)
            ],
            dim=1,
        )
        assert got.shape == (3, 6, 5) and torch.allclose(got, want, atol=1e-6)


def test_kmeans_returns_finite_centroids_near_the_data(vit) -> None:
    data = Images(24)
    protos, stats = compute_prototypes(
        vit, data, num_prompts=M, num_layers=2, strategy="kmeans", seed=0, batch_size=BATCH, kmeans_iters=25
    )
    inputs = reference_layer_inputs(vit, data.images)
    assert stats.capacity_per_layer == 4096 and stats.candidates_per_layer == 24 * 16
    for layer in range(2):
        tokens = inputs[layer].reshape(-1, 64)
        c = protos[layer]
        assert torch.isfinite(c).all() and torch.unique(c, dim=0).shape[0] == M
        # centroids are means of data points: inside the data's bounding box ...
        assert (c >= tokens.min(0).values - 1e-5).all() and (c <= tokens.max(0).values + 1e-5).all()
        # ... and closer to their nearest token than tokens are to the data's mean on average
        nearest = torch.cdist(c, tokens).min(dim=1).values
        spread = (tokens - tokens.mean(0)).norm(dim=1).mean()
        assert nearest.max() < spread


def test_kmeans_recovers_separated_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    pts = (centres[:, None, :] + 0.1 * torch.randn(3, 50, 2, generator=g)).reshape(1, 150, 2)
    found = kmeans(pts, 3, iters=20, generator=torch.Generator().manual_seed(1))[0]
    order = torch.cdist(centres, found).argmin(1)
    assert torch.allclose(found[order], centres, atol=0.1)


@pytest.mark.parametrize("strategy", ["random", "mean-pool", "max-pool", "kmeans"])
def test_deterministic_under_a_seed(vit, strategy) -> None:
    data = Images(20)
    kwargs = {"num_prompts": M, "num_layers": 2, "strategy": strategy, "batch_size": BATCH, "max_images": 12}
    a, _ = compute_prototypes(vit, data, seed=7, **kwargs)
    b, _ = compute_prototypes(vit, data, seed=7, **kwargs)
    c, _ = compute_prototypes(vit, data, seed=8, **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_at_most_init_max_images_are_used_and_memory_stays_flat(vit) -> None:
    kwargs = {"num_prompts": M, "num_layers": 2, "strategy": "random", "seed": 0, "batch_size": BATCH}
    _, small = compute_prototypes(vit, Images(8), **kwargs)
    _, large = compute_prototypes(vit, Images(200), max_images=160, **kwargs)
    assert small.images == 8 and large.images == 160
    assert large.candidates_per_layer == 20 * small.candidates_per_layer
    # the rows held do not grow with the images: at most 2 * M per layer (reservoir + one batch's pick)
    assert large.peak_held_rows <= 2 * M * 2 and small.peak_held_rows <= 2 * M * 2
    _, km = compute_prototypes(
        vit,
        Images(200),
        num_prompts=M,
        num_layers=2,
        strategy="kmeans",
        seed=0,
        batch_size=BATCH,
        kmeans_max_tokens=100,
    )
    assert km.capacity_per_layer == 100 and km.peak_held_rows <= 2 * 100 * 2


def test_reservoir_size_is_bounded_and_sampling_is_uniform() -> None:
    res = TokenReservoir(10, torch.Generator().manual_seed(0))
    for _ in range(50):
        res.offer(torch.randn(4, 16, 3))
        assert res.held == 10 and res.peak_rows <= 20
    assert res.offered == 50 * 64
    # every one of 100 rows offered in 10 batches is kept with probability 10/100
    counts = torch.zeros(100)
    ids = torch.arange(100.0).reshape(10, 1, 10, 1)
    for trial in range(400):
        res = TokenReservoir(10, torch.Generator().manual_seed(trial))
        for batch in ids:
            res.offer(batch.transpose(0, 1).reshape(1, 10, 1))
        kept = res.rows[:, 0].long()
        assert torch.unique(kept).numel() == 10
        counts[kept] += 1
    assert counts.sum() == 4000 and counts.min() > 15 and counts.max() < 70  # expectation 40 each


def test_sources_tensor_iterable_and_tuples(vit) -> None:
    images = Images(12).images
    kwargs = {"num_prompts": M, "num_layers": 2, "strategy": "random", "seed": 2, "batch_size": BATCH}
    from_dataset, _ = compute_prototypes(vit, Images(12), **kwargs)
    from_tensor, _ = compute_prototypes(vit, images, **kwargs)
    from_stream, s = compute_prototypes(vit, Stream(images), max_images=12, **kwargs)
    pairs = [(img, 0) for img in images]
    from_pairs, _ = compute_prototypes(vit, pairs, **kwargs)
    assert torch.equal(from_dataset, from_tensor) and torch.equal(from_dataset, from_stream)
    assert torch.equal(from_dataset, from_pairs) and s.images == 12
    _, capped = compute_prototypes(vit, Stream(images), max_images=5, **kwargs)
    assert capped.images == 5


def test_too_few_tokens_is_a_data_error(vit) -> None:
    with pytest.raises(DataError, match="needs 40"):
        compute_prototypes(vit, Images(2), num_prompts=40, num_layers=1, strategy="random", seed=0)
    with pytest.raises(DataError, match="no training images"):
        compute_prototypes(vit, Images(0), num_prompts=4, num_layers=1, strategy="random", seed=0)
