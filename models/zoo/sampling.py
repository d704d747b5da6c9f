"""Sampling scene records: :func:`sample_scenes` (attribute constraints) and object placement."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from .scene import (
    ASYMMETRIC_SHAPES,
    BACKGROUNDS,
    COLOUR_NAMES,
    COLOURS,
    CORRUPTIONS,
    COUNTS,
    DISTANCES,
    MAX_OBJECTS,
    ORIENTATIONS,
    POSITIONS,
    SHAPES,
    SIZES,
    STYLES,
    TEXTURES,
    SceneBatch,
)

# Radius of an object as a fraction of the image side, before a +-10 % jitter.
_RADIUS = {"small": 0.10, "large": 0.18}
# Where object centres may fall, as [x0, x1, y0, y1] fractions of the image side. A single object uses the
# tight, mutually disjoint boxes (so a position label is unambiguous); a group uses wider boxes.
_REGIONS_SINGLE = {
    "centre": (0.42, 0.58, 0.42, 0.58),
    "left": (0.0, 0.30, 0.32, 0.68),
    "right": (0.70, 1.0, 0.32, 0.68),
    "top": (0.32, 0.68, 0.0, 0.30),
    "bottom": (0.32, 0.68, 0.70, 1.0),
}
_REGIONS_GROUP = {
    "centre": (0.25, 0.75, 0.25, 0.75),
    "left": (0.0, 0.42, 0.12, 0.88),
    "right": (0.58, 1.0, 0.12, 0.88),
    "top": (0.12, 0.88, 0.0, 0.42),
    "bottom": (0.12, 0.88, 0.58, 1.0),
}
_ANYWHERE = (0.0, 1.0, 0.0, 1.0)
# Centre-to-centre distance of a pair, as a fraction of the image side, per distance bin (gaps between bins
# keep the labels clean).
_DISTANCE_RANGES = {"near": (0.20, 0.32), "medium": (0.42, 0.54), "far": (0.66, 0.90)}
_BACKGROUND_LEVELS = {"black": 0.07, "gray": 0.45, "white": 0.93}


def _choices(name: str, value: Any, vocab: Sequence[Any]) -> np.ndarray | None:
    """Allowed vocabulary indices for a constraint: None (default), one value, or a sequence of values."""
    if value is None:
        return None
    values = [value] if isinstance(value, str | int) else list(value)
    if not values:
        raise ConfigError(name, "must allow at least one value")
    out = []
    for v in values:
        if v not in vocab:
            raise ConfigError(name, f"unknown value {v!r} (allowed: {', '.join(map(str, vocab))})")
        out.append(vocab.index(v))
    return np.asarray(sorted(set(out)), dtype=np.int64)


def _draw(
    rng: np.random.Generator, n: int, allowed: np.ndarray | None, default_p: Sequence[float]
) -> np.ndarray:
    if allowed is None:
        return rng.choice(len(default_p), size=n, p=np.asarray(default_p, dtype=np.float64))
    return allowed[rng.integers(0, len(allowed), size=n)]


def _uniform(k: int) -> list[float]:
    return [1.0 / k] * k


def sample_scenes(
    n: int,
    seed: int,
    *,
    image_size: int = 32,
    shape: Any = None,
    colour: Any = None,
    size: Any = None,
    count: Any = None,
    position: Any = None,
    orientation: Any = None,
    texture: Any = None,
    background: Any = None,
    style: Any = None,
    corruption: Any = None,
    distance: Any = None,
) -> SceneBatch:
    """Sample ``n`` scene records, deterministically from ``seed``.

    Each attribute argument constrains that attribute: ``None`` uses the world's default distribution,
    a value fixes it, a sequence of values samples uniformly among them. ``position="anywhere"`` (or a
    sequence containing it) allows the unconstrained layout. Constraining ``orientation`` restricts the
    shapes to the asymmetric ones; constraining ``distance`` makes every scene a pair (count 2).
    """
    if n < 0:
        raise ConfigError("n", "must be >= 0")
    if image_size < 16:
        raise ConfigError("image_size", "must be >= 16 pixels")
    rng = np.random.default_rng([int(seed), 0x5CE7E])

    dist_allowed = _choices("distance", distance, DISTANCES)
    orient_allowed = _choices("orientation", orientation, ORIENTATIONS)
    shape_allowed = _choices("shape", shape, SHAPES)
    if orient_allowed is not None:
        asym = np.asarray([SHAPES.index(s) for s in ASYMMETRIC_SHAPES])
        shape_allowed = asym if shape_allowed is None else np.intersect1d(shape_allowed, asym)
        if len(shape_allowed) == 0:
            raise ConfigError("orientation", f"needs an asymmetric shape ({', '.join(ASYMMETRIC_SHAPES)})")
    count_allowed = _choices("count", count, COUNTS)
    if dist_allowed is not None:
        if count_allowed is not None and COUNTS.index(2) not in count_allowed:
            raise ConfigError("distance", "applies to pairs only (count 2)")
        count_allowed = np.asarray([COUNTS.index(2)])

    pos_vocab = (*POSITIONS, "anywhere")
    pos_allowed = _choices("position", position, pos_vocab)

    s = _draw(rng, n, shape_allowed, _uniform(len(SHAPES)))
    c = _draw(rng, n, _choices("colour", colour, COLOUR_NAMES), _uniform(len(COLOUR_NAMES)))
    size_allowed = _choices("size", size, SIZES)
    z = _draw(rng, n, size_allowed, _uniform(len(SIZES)))
    k = _draw(rng, n, count_allowed, _uniform(len(COUNTS))) + 1
    if size_allowed is None:
        # Four or five large objects cannot be told apart when they overlap: draw those small.
        z = np.where(k >= 4, SIZES.index("small"), z)
    t = _draw(rng, n, _choices("texture", texture, TEXTURES), _uniform(len(TEXTURES)))
    b = _draw(rng, n, _choices("background", background, BACKGROUNDS), _uniform(len(BACKGROUNDS)))
    st = _draw(rng, n, _choices("style", style, STYLES), (0.8, 0.2))
    cr = _draw(rng, n, _choices("corruption", corruption, CORRUPTIONS), (0.8, 0.1, 0.1))

    # Orientation: only asymmetric shapes have one.
    o = _draw(rng, n, orient_allowed, _uniform(len(ORIENTATIONS)))
    is_asym = np.isin(s, [SHAPES.index(a) for a in ASYMMETRIC_SHAPES])
    o = np.where(is_asym, o, -1)

    # Position: by default a quarter of the scenes are "anywhere", and so are crowded ones that do not fit
    # in one region (three or more large objects, or five small ones).
    if pos_allowed is None:
        p = _draw(rng, n, None, [0.15] * 5 + [0.25])
        crowded = ((z == SIZES.index("large")) & (k >= 3)) | (k >= 5)
        p = np.where(crowded, len(POSITIONS), p)
    else:
        p = _draw(rng, n, pos_allowed, [])
    p = np.where(p == len(POSITIONS), -1, p)
    if dist_allowed is not None:
        p = np.full(n, -1)  # a pair at a given distance is placed anywhere
    d = _draw(rng, n, dist_allowed, _uniform(len(DISTANCES))) if dist_allowed is not None else np.full(n, -1)

    radius = np.asarray([_RADIUS[SIZES[i]] for i in range(len(SIZES))])[z] * rng.uniform(0.9, 1.1, size=n)
    jitter = rng.uniform(-0.2, 0.2, size=n)  # about +-11 degrees
    angle = np.where(o >= 0, o, 0) * (math.pi / 2) + jitter
    base = np.asarray(list(COLOURS.values()), dtype=np.float64)[c]
    rgb = np.clip(base * rng.uniform(0.85, 1.1, size=(n, 1)) + rng.normal(0, 0.03, size=(n, 3)), 0.0, 1.0)

    centres = _place_all(rng, k, radius, np.where(p < 0, len(POSITIONS), p), d)
    # A pair always gets its distance bin when it falls inside one (a label for free).
    pair = (k == 2) & (d < 0)
    if pair.any():
        gap = np.linalg.norm(centres[pair, 0] - centres[pair, 1], axis=-1)
        bins = np.full(gap.shape, -1)
        for j, name in enumerate(DISTANCES):
            lo, hi = _DISTANCE_RANGES[name]
            bins[(gap >= lo) & (gap <= hi)] = j
        d = d.copy()
        d[pair] = bins

    bg_levels = rng.uniform(0.15, 0.75, size=(n, 2))
    bg_levels[:, 1] = np.clip(
        bg_levels[:, 0] + rng.choice([-1.0, 1.0], size=n) * rng.uniform(0.2, 0.35, size=n), 0.05, 0.95
    )
    tint = rng.normal(0, 0.04, size=(n, 1, 3))
    bg_rgb = np.clip(bg_levels[:, :, None] + tint, 0.0, 1.0)
    for name, level in _BACKGROUND_LEVELS.items():
        sel = b == BACKGROUNDS.index(name)
        bg_rgb[sel] = np.clip(level + rng.normal(0, 0.03, size=(int(sel.sum()), 1, 3)), 0.0, 1.0)

    return SceneBatch(
        image_size=int(image_size),
        shape=s.astype(np.int64),
        colour=c.astype(np.int64),
        size=z.astype(np.int64),
        count=k.astype(np.int64),
        position=p.astype(np.int64),
        orientation=o.astype(np.int64),
        texture=t.astype(np.int64),
        background=b.astype(np.int64),
        style=st.astype(np.int64),
        corruption=cr.astype(np.int64),
        distance=d.astype(np.int64),
        centres=centres,
        radius=radius,
        angle=angle,
        rgb=rgb,
        tex_period=rng.uniform(2.6, 3.6, size=n) * image_size / 32,
        tex_angle=rng.uniform(0, math.pi, size=n),
        tex_phase=rng.uniform(0, 1, size=n),
        bg_rgb=bg_rgb,
        bg_period=rng.uniform(4.0, 8.0, size=n) * image_size / 32,
        bg_angle=rng.uniform(0, math.pi, size=n),
        bg_phase=rng.uniform(0, 1, size=n),
        noise_seed=rng.integers(0, 2**62, size=n, dtype=np.int64),
    )


def _region_table(regions: dict[str, tuple[float, float, float, float]]) -> np.ndarray:
    return np.asarray([regions[name] for name in POSITIONS] + [_ANYWHERE], dtype=np.float64)


_SINGLE_TABLE = _region_table(_REGIONS_SINGLE)
_GROUP_TABLE = _region_table(_REGIONS_GROUP)
_CANDIDATES = 48  # candidate centres per object; the first one clear of the others wins


def _place_all(
    rng: np.random.Generator,
    count: np.ndarray,
    radius: np.ndarray,
    position: np.ndarray,
    distance: np.ndarray,
) -> np.ndarray:
    """Object centres ``(n, MAX_OBJECTS, 2)`` inside each scene's region, mostly without overlap.

    Vectorised over scenes: each object slot draws candidate centres and keeps the first that clears the
    objects already placed by ``2.1 * radius`` (else the least overlapping one). Pairs with a distance bin
    draw a first centre and a direction, and keep the first partner that lands inside the image.
    """
    n = len(count)
    box = np.where((count == 1)[:, None], _SINGLE_TABLE[position], _GROUP_TABLE[position])
    margin = radius * 1.02
    x0, x1 = np.maximum(box[:, 0], margin), np.minimum(box[:, 1], 1.0 - margin)
    y0, y1 = np.maximum(box[:, 2], margin), np.minimum(box[:, 3], 1.0 - margin)
    mid_x, mid_y = (box[:, 0] + box[:, 1]) / 2, (box[:, 2] + box[:, 3]) / 2
    x0, x1 = np.where(x0 > x1, mid_x, x0), np.where(x0 > x1, mid_x, x1)
    y0, y1 = np.where(y0 > y1, mid_y, y0), np.where(y0 > y1, mid_y, y1)
    lo = np.stack([x0, y0], axis=-1)[:, None, None, :]
    span = np.stack([x1 - x0, y1 - y0], axis=-1)[:, None, None, :]
    cand = lo + rng.random((n, MAX_OBJECTS, _CANDIDATES, 2)) * span

    centres = np.full((n, MAX_OBJECTS, 2), np.nan)
    centres[:, 0] = cand[:, 0, 0]
    min_gap = (2.1 * radius)[:, None]
    rows = np.arange(n)
    for j in range(1, MAX_OBJECTS):
        gaps = np.linalg.norm(cand[:, j, :, None, :] - centres[:, None, :j, :], axis=-1).min(
            axis=-1
        )  # (n, T)
        ok = gaps >= min_gap
        pick = np.where(ok.any(axis=1), ok.argmax(axis=1), gaps.argmax(axis=1))
        centres[:, j] = cand[rows, j, pick]

    pairs = np.nonzero(distance >= 0)[0]
    if len(pairs):
        ranges = np.asarray([_DISTANCE_RANGES[name] for name in DISTANCES])[distance[pairs]]  # (m, 2)
        first = cand[pairs, 0]  # (m, T, 2)
        theta = rng.uniform(0, 2 * math.pi, size=first.shape[:2])
        gap = ranges[:, :1] + rng.random(first.shape[:2]) * (ranges[:, 1:] - ranges[:, :1])
        second = first + gap[..., None] * np.stack([np.cos(theta), np.sin(theta)], axis=-1)
        inside = (
            (second[..., 0] >= x0[pairs, None])
            & (second[..., 0] <= x1[pairs, None])
            & (second[..., 1] >= y0[pairs, None])
            & (second[..., 1] <= y1[pairs, None])
        )
        pick = inside.argmax(axis=1)
        m = np.arange(len(pairs))
        a, b = first[m, pick], second[m, pick]
        # None inside (rare): a diagonal pair at the bin's lower edge, which always fits.
        half = ranges[:, 0] / (2 * math.sqrt(2))
        fallback = ~inside.any(axis=1)
        a[fallback] = 0.5 - half[fallback, None]
        b[fallback] = 0.5 + half[fallback, None]
        centres[pairs, 0], centres[pairs, 1] = a, b

    centres[np.arange(MAX_OBJECTS)[None, :] >= count[:, None]] = np.nan
    return centres
