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
    allowed = _allowed_indices(
        shape=shape,
        colour=colour,
        size=size,
        count=count,
        position=position,
        orientation=orientation,
        texture=texture,
        background=background,
        style=style,
        corruption=corruption,
        distance=distance,
    )
    # Every draw below comes from the one generator in a fixed order: reordering them changes every
    # scene of every seed (and so the zoo's data sets and checkpoints).
    labels = _draw_labels(rng, n, allowed)
    radius, angle, rgb = _draw_object_looks(rng, labels)
    p = labels["position"]
    centres = _place_all(rng, labels["count"], radius, np.where(p < 0, len(POSITIONS), p), labels["distance"])
    labels["distance"] = _label_pair_distances(labels["count"], labels["distance"], centres)
    return SceneBatch(
        image_size=int(image_size),
        **{name: value.astype(np.int64) for name, value in labels.items()},
        centres=centres,
        radius=radius,
        angle=angle,
        rgb=rgb,
        **_draw_surfaces(rng, labels["background"], image_size),
    )


def _allowed_indices(**constraints: Any) -> dict[str, np.ndarray | None]:
    """Each attribute constraint as allowed vocabulary indices (``None``: the default distribution).

    Applies the cross-attribute rules (an orientation needs an asymmetric shape, a distance needs a pair).
    The checks run in a fixed order so that, with several bad arguments, the same one is reported.
    """
    distance = _choices("distance", constraints["distance"], DISTANCES)
    orientation = _choices("orientation", constraints["orientation"], ORIENTATIONS)
    shape = _choices("shape", constraints["shape"], SHAPES)
    if orientation is not None:
        asym = np.asarray([SHAPES.index(s) for s in ASYMMETRIC_SHAPES])
        shape = asym if shape is None else np.intersect1d(shape, asym)
        if len(shape) == 0:
            raise ConfigError("orientation", f"needs an asymmetric shape ({', '.join(ASYMMETRIC_SHAPES)})")
    count = _choices("count", constraints["count"], COUNTS)
    if distance is not None:
        if count is not None and COUNTS.index(2) not in count:
            raise ConfigError("distance", "applies to pairs only (count 2)")
        count = np.asarray([COUNTS.index(2)])
    allowed = {"distance": distance, "orientation": orientation, "shape": shape, "count": count}
    allowed["position"] = _choices("position", constraints["position"], (*POSITIONS, "anywhere"))
    for name, vocab in (
        ("colour", COLOUR_NAMES),
        ("size", SIZES),
        ("texture", TEXTURES),
        ("background", BACKGROUNDS),
        ("style", STYLES),
        ("corruption", CORRUPTIONS),
    ):
        allowed[name] = _choices(name, constraints[name], vocab)
    return allowed


def _draw_labels(
    rng: np.random.Generator, n: int, allowed: dict[str, np.ndarray | None]
) -> dict[str, np.ndarray]:
    """The attribute labels of ``n`` scenes (vocabulary indices; ``-1`` where not applicable), keyed by
    :class:`SceneBatch` field. Pair distances are only the requested ones here: see
    :func:`_label_pair_distances`."""
    s = _draw(rng, n, allowed["shape"], _uniform(len(SHAPES)))
    c = _draw(rng, n, allowed["colour"], _uniform(len(COLOUR_NAMES)))
    z = _draw(rng, n, allowed["size"], _uniform(len(SIZES)))
    k = _draw(rng, n, allowed["count"], _uniform(len(COUNTS))) + 1
    if allowed["size"] is None:
        # Four or five large objects cannot be told apart when they overlap: draw those small.
        z = np.where(k >= 4, SIZES.index("small"), z)
    t = _draw(rng, n, allowed["texture"], _uniform(len(TEXTURES)))
    b = _draw(rng, n, allowed["background"], _uniform(len(BACKGROUNDS)))
    st = _draw(rng, n, allowed["style"], (0.8, 0.2))
    cr = _draw(rng, n, allowed["corruption"], (0.8, 0.1, 0.1))

    # Orientation: only asymmetric shapes have one.
    o = _draw(rng, n, allowed["orientation"], _uniform(len(ORIENTATIONS)))
    is_asym = np.isin(s, [SHAPES.index(a) for a in ASYMMETRIC_SHAPES])
    o = np.where(is_asym, o, -1)

    # Position: by default a quarter of the scenes are "anywhere", and so are crowded ones that do not fit
    # in one region (three or more large objects, or five small ones).
    if allowed["position"] is None:
        p = _draw(rng, n, None, [0.15] * 5 + [0.25])
        crowded = ((z == SIZES.index("large")) & (k >= 3)) | (k >= 5)
        p = np.where(crowded, len(POSITIONS), p)
    else:
        p = _draw(rng, n, allowed["position"], [])
    p = np.where(p == len(POSITIONS), -1, p)
    dist_allowed = allowed["distance"]
    if dist_allowed is not None:
        p = np.full(n, -1)  # a pair at a given distance is placed anywhere
    d = _draw(rng, n, dist_allowed, _uniform(len(DISTANCES))) if dist_allowed is not None else np.full(n, -1)
    return {
        "shape": s,
        "colour": c,
        "size": z,
        "count": k,
        "position": p,
        "orientation": o,
        "texture": t,
        "background": b,
        "style": st,
        "corruption": cr,
        "distance": d,
    }


def _draw_object_looks(
    rng: np.random.Generator, labels: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-scene object ``radius`` (fraction of the side), rotation ``angle`` (radians) and jittered ``rgb``:
    the labels plus small random variation, so that no two scenes are pixel copies."""
    n = len(labels["size"])
    radius = np.asarray([_RADIUS[SIZES[i]] for i in range(len(SIZES))])[labels["size"]] * rng.uniform(
        0.9, 1.1, size=n
    )
    jitter = rng.uniform(-0.2, 0.2, size=n)  # about +-11 degrees
    o = labels["orientation"]
    angle = np.where(o >= 0, o, 0) * (math.pi / 2) + jitter
    base = np.asarray(list(COLOURS.values()), dtype=np.float64)[labels["colour"]]
    rgb = np.clip(base * rng.uniform(0.85, 1.1, size=(n, 1)) + rng.normal(0, 0.03, size=(n, 3)), 0.0, 1.0)
    return radius, angle, rgb


def _label_pair_distances(count: np.ndarray, distance: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``distance`` with every unconstrained pair given the bin its placed gap falls in (a label for free;
    ``-1`` when the gap lies between bins)."""
    pair = (count == 2) & (distance < 0)
    if not pair.any():
        return distance
    gap = np.linalg.norm(centres[pair, 0] - centres[pair, 1], axis=-1)
    bins = np.full(gap.shape, -1)
    for j, name in enumerate(DISTANCES):
        lo, hi = _DISTANCE_RANGES[name]
        bins[(gap >= lo) & (gap <= hi)] = j
    distance = distance.copy()
    distance[pair] = bins
    return distance


def _draw_surfaces(
    rng: np.random.Generator, background: np.ndarray, image_size: int
) -> dict[str, np.ndarray]:
    """The renderer's surface state per scene, keyed by :class:`SceneBatch` field: background tones, the
    texture and background pattern geometry (periods in pixels, so scaled with ``image_size``) and the
    seed of the scene's pixel noise. Drawn in this order (a dict literal evaluates left to right)."""
    n = len(background)
    return {
        "bg_rgb": _draw_background_tones(rng, background),
        "tex_period": rng.uniform(2.6, 3.6, size=n) * image_size / 32,
        "tex_angle": rng.uniform(0, math.pi, size=n),
        "tex_phase": rng.uniform(0, 1, size=n),
        "bg_period": rng.uniform(4.0, 8.0, size=n) * image_size / 32,
        "bg_angle": rng.uniform(0, math.pi, size=n),
        "bg_phase": rng.uniform(0, 1, size=n),
        "noise_seed": rng.integers(0, 2**62, size=n, dtype=np.int64),
    }


def _draw_background_tones(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """The two tones ``(n, 2, 3)`` of each scene's background: two contrasting random grays with a shared
    tint for the patterned kinds, a fixed level with a little noise for black, gray and white."""
    n = len(background)
    bg_levels = rng.uniform(0.15, 0.75, size=(n, 2))
    bg_levels[:, 1] = np.clip(
        bg_levels[:, 0] + rng.choice([-1.0, 1.0], size=n) * rng.uniform(0.2, 0.35, size=n), 0.05, 0.95
    )
    tint = rng.normal(0, 0.04, size=(n, 1, 3))
    bg_rgb = np.clip(bg_levels[:, :, None] + tint, 0.0, 1.0)
    for name, level in _BACKGROUND_LEVELS.items():
        sel = background == BACKGROUNDS.index(name)
        bg_rgb[sel] = np.clip(level + rng.normal(0, 0.03, size=(int(sel.sum()), 1, 3)), 0.0, 1.0)
    return bg_rgb


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
    x0, x1, y0, y1 = _centre_bounds(count, radius, position)
    lo = np.stack([x0, y0], axis=-1)[:, None, None, :]
    span = np.stack([x1 - x0, y1 - y0], axis=-1)[:, None, None, :]
    cand = lo + rng.random((n, MAX_OBJECTS, _CANDIDATES, 2)) * span
    centres = _pick_apart(cand, radius)
    pairs = np.nonzero(distance >= 0)[0]
    if len(pairs):
        a, b = _place_pairs(
            rng, cand[pairs, 0], distance[pairs], (x0[pairs], x1[pairs], y0[pairs], y1[pairs])
        )
        centres[pairs, 0], centres[pairs, 1] = a, b
    centres[np.arange(MAX_OBJECTS)[None, :] >= count[:, None]] = np.nan
    return centres


def _centre_bounds(
    count: np.ndarray, radius: np.ndarray, position: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-scene bounds ``x0, x1, y0, y1`` for object centres: the position's region, shrunk so the object
    stays inside the image (collapsed to the region's middle when the region is narrower than that)."""
    box = np.where((count == 1)[:, None], _SINGLE_TABLE[position], _GROUP_TABLE[position])
    margin = radius * 1.02
    x0, x1 = np.maximum(box[:, 0], margin), np.minimum(box[:, 1], 1.0 - margin)
    y0, y1 = np.maximum(box[:, 2], margin), np.minimum(box[:, 3], 1.0 - margin)
    mid_x, mid_y = (box[:, 0] + box[:, 1]) / 2, (box[:, 2] + box[:, 3]) / 2
    x0, x1 = np.where(x0 > x1, mid_x, x0), np.where(x0 > x1, mid_x, x1)
    y0, y1 = np.where(y0 > y1, mid_y, y0), np.where(y0 > y1, mid_y, y1)
    return x0, x1, y0, y1


def _pick_apart(cand: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Greedy placement from candidates ``(n, MAX_OBJECTS, T, 2)``: slot 0 takes its first candidate, each
    later slot the first that clears the earlier slots by ``2.1 * radius``, else the one farthest from them."""
    n = len(cand)
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
    return centres


def _place_pairs(
    rng: np.random.Generator,
    first: np.ndarray,
    distance: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """The two centres ``(m, 2)`` each of ``m`` pairs whose gap must fall in a distance bin.

    ``first`` holds each pair's candidate first centres ``(m, T, 2)``; each gets a random direction and gap
    in the bin, and the first candidate whose partner lands inside ``bounds`` (x0, x1, y0, y1) wins.
    """
    x0, x1, y0, y1 = bounds
    ranges = np.asarray([_DISTANCE_RANGES[name] for name in DISTANCES])[distance]  # (m, 2)
    theta = rng.uniform(0, 2 * math.pi, size=first.shape[:2])
    gap = ranges[:, :1] + rng.random(first.shape[:2]) * (ranges[:, 1:] - ranges[:, :1])
    second = first + gap[..., None] * np.stack([np.cos(theta), np.sin(theta)], axis=-1)
    inside = (
        (second[..., 0] >= x0[:, None])
        & (second[..., 0] <= x1[:, None])
        & (second[..., 1] >= y0[:, None])
        & (second[..., 1] <= y1[:, None])
    )
    pick = inside.argmax(axis=1)
    m = np.arange(len(first))
    a, b = first[m, pick], second[m, pick]
    # None inside (rare): a diagonal pair at the bin's lower edge, which always fits.
    half = ranges[:, 0] / (2 * math.sqrt(2))
    fallback = ~inside.any(axis=1)
    a[fallback] = 0.5 - half[fallback, None]
    b[fallback] = 0.5 + half[fallback, None]
    return a, b
