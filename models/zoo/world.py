"""A procedural image world: scenes of simple shapes, deterministic from a seed, with captions.

Each scene shows ``count`` copies of one kind of object (a shape with a colour, a size, a texture, an
orientation and a drawing style) placed in one region of the image, over a background, optionally
corrupted (pixel noise, blur). Every pixel follows from the scene record (:class:`SceneBatch`), and the
record follows from ``(seed, n, constraints)``, so the same call always gives the same pixels.

Rendering is vectorised with numpy over all objects of a batch (one ``(objects, H, W)`` coordinate grid
per shape kind), with optional supersampling for anti-aliased edges. Captions are drawn from several
templates and mention a random subset of the attributes, the way web captions describe images partially
("two small red circles on a striped background", "a picture of a blue star pointing left").

Example::

    batch = sample_scenes(256, seed=0, shape=("circle", "star"), count=(1, 2))
    images = render_scenes(batch)            # uint8 (256, 32, 32, 3)
    texts = make_captions(batch, seed=0)     # 256 strings
    batch.record(0)                          # {"shape": "star", "colour": "red", ...}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError

# Bumped whenever the sampling or the rendering changes pixels: part of every recipe hash that uses it.
WORLD_VERSION = 1

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "arrow", "crescent")
ASYMMETRIC_SHAPES = ("triangle", "arrow", "crescent")  # the shapes whose orientation is visible
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.88, 0.12, 0.10),
    "orange": (0.98, 0.55, 0.08),
    "yellow": (0.95, 0.90, 0.12),
    "green": (0.12, 0.68, 0.18),
    "cyan": (0.10, 0.82, 0.88),
    "blue": (0.12, 0.28, 0.92),
    "purple": (0.55, 0.18, 0.80),
    "pink": (0.98, 0.52, 0.78),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "large")
COUNTS = (1, 2, 3, 4, 5)
POSITIONS = ("centre", "left", "right", "top", "bottom")
ORIENTATIONS = ("up", "right", "down", "left")
TEXTURES = ("plain", "striped", "dotted")
BACKGROUNDS = ("black", "gray", "white", "striped", "noisy", "checkered", "gradient")
STYLES = ("filled", "outline")
CORRUPTIONS = ("none", "noise", "blur")
DISTANCES = ("near", "medium", "far")  # gap between the two objects of a pair (count == 2)

MAX_OBJECTS = max(COUNTS)
COUNT_WORDS = ("one", "two", "three", "four", "five")
PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "cross": "crosses",
    "diamond": "diamonds",
    "arrow": "arrows",
    "crescent": "crescents",
}
POSITION_PHRASES = {
    "centre": "in the centre",
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}

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


@dataclasses.dataclass
class SceneBatch:
    """The full record of ``n`` scenes (struct of arrays). Indices point into the vocabularies above.

    ``position``, ``orientation`` and ``distance`` are ``-1`` when not applicable (objects anywhere, a
    symmetric shape, not a pair in a distance bin). Everything below ``distance`` is the low-level state
    the renderer needs; it is fixed at sampling time, so each scene's pixels are a pure function of its own
    record (the same in any batch, subset or chunking).
    """

    image_size: int
    shape: np.ndarray
    colour: np.ndarray
    size: np.ndarray
    count: np.ndarray  # 1..5
    position: np.ndarray
    orientation: np.ndarray
    texture: np.ndarray
    background: np.ndarray
    style: np.ndarray
    corruption: np.ndarray
    distance: np.ndarray
    centres: np.ndarray  # (n, MAX_OBJECTS, 2) in [0, 1] (x, y); NaN for unused slots
    radius: np.ndarray  # (n,) fraction of the image side
    angle: np.ndarray  # (n,) radians: orientation quarter turns + a small jitter
    rgb: np.ndarray  # (n, 3) object colour after jitter
    tex_period: np.ndarray  # (n,) pixels
    tex_angle: np.ndarray
    tex_phase: np.ndarray
    bg_rgb: np.ndarray  # (n, 2, 3) the two background tones
    bg_period: np.ndarray
    bg_angle: np.ndarray
    bg_phase: np.ndarray
    noise_seed: np.ndarray  # (n,) seeds of each scene's pixel noise (noisy background, noise corruption)

    def __len__(self) -> int:
        return int(self.shape.shape[0])

    def record(self, i: int) -> dict[str, Any]:
        """The attributes of scene ``i`` by name (what captions and labels are made from)."""
        return {
            "shape": SHAPES[self.shape[i]],
            "colour": COLOUR_NAMES[self.colour[i]],
            "size": SIZES[self.size[i]],
            "count": int(self.count[i]),
            "position": POSITIONS[self.position[i]] if self.position[i] >= 0 else None,
            "orientation": ORIENTATIONS[self.orientation[i]] if self.orientation[i] >= 0 else None,
            "texture": TEXTURES[self.texture[i]],
            "background": BACKGROUNDS[self.background[i]],
            "style": STYLES[self.style[i]],
            "corruption": CORRUPTIONS[self.corruption[i]],
            "distance": DISTANCES[self.distance[i]] if self.distance[i] >= 0 else None,
        }

    def records(self) -> list[dict[str, Any]]:
        return [self.record(i) for i in range(len(self))]

    def subset(self, index: np.ndarray | Sequence[int]) -> SceneBatch:
        """The scenes at ``index``; they render to exactly the same pixels as in this batch."""
        idx = np.asarray(index)
        values = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            values[field.name] = value[idx] if isinstance(value, np.ndarray) else value
        return SceneBatch(**values)


# ---- sampling -----------------------------------------------------------------------------------


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


# ---- rendering ----------------------------------------------------------------------------------


def _shape_mask(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in object coordinates (unit = radius; v points down; asymmetric shapes point up)."""
    if kind == "circle":
        return u * u + v * v <= 1.0
    if kind == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.82
    if kind == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if kind == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.32) & (av <= 0.98)) | ((av <= 0.32) & (au <= 0.98))
    if kind == "triangle":  # apex up at v = -1, base at v = 0.8
        return (v <= 0.8) & (np.abs(u) <= 0.95 * (v + 1.0) / 1.8)
    if kind == "arrow":  # points up: head v in [-1, -0.1], shaft below
        head = (v >= -1.0) & (v <= -0.05) & (np.abs(u) <= 0.9 * (v + 1.0) / 0.95)
        shaft = (v > -0.1) & (v <= 1.0) & (np.abs(u) <= 0.3)
        return head | shaft
    if kind == "crescent":  # a disc with a bite taken from the top: the horns point up
        return (u * u + v * v <= 1.0) & (u * u + (v + 0.5) ** 2 > 0.62)
    if kind == "star":  # five points, outer radius 1, inner 0.45, a point at the top
        r = np.sqrt(u * u + v * v)
        theta = np.arctan2(u, -v)  # 0 at the top
        sector = 2 * math.pi / 5
        phi = np.abs(np.mod(theta + sector / 2, sector) - sector / 2)  # angle from the nearest point
        # Edge from the outer vertex (1, 0) to the inner vertex at angle sector/2 (polar, local frame).
        ix, iy = 0.45 * math.cos(sector / 2), 0.45 * math.sin(sector / 2)
        px, py = r * np.cos(phi), r * np.sin(phi)
        # Inside when on the origin's side of the edge line.
        cross = (ix - 1.0) * py - iy * (px - 1.0)
        return cross >= 0.0
    raise ValueError(kind)


def render_scenes(batch: SceneBatch, *, supersample: int = 2, chunk: int = 512) -> np.ndarray:
    """Render a batch to ``uint8`` images of shape ``(n, H, W, 3)``.

    ``supersample`` renders at that many times the resolution and averages down (anti-aliased edges).
    """
    n = len(batch)
    size = batch.image_size
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for start in range(0, n, chunk):
        idx = np.arange(start, min(n, start + chunk))
        out[idx] = _render_chunk(batch.subset(idx), supersample)
    return out


def _downsample(x: np.ndarray, ss: int) -> np.ndarray:
    """Average ``ss x ss`` blocks over axes 1 and 2 (strided slices: faster than a reshape-mean)."""
    if ss == 1:
        return x
    total = np.zeros_like(x[:, ::ss, ::ss])
    for a in range(ss):
        for b in range(ss):
            total += x[:, a::ss, b::ss]
    return total * np.float32(1.0 / (ss * ss))


def _scene_noise(batch: SceneBatch, index: np.ndarray, kind: int) -> np.ndarray:
    """Standard normal noise ``(len(index), H, W, 4)`` per scene, from that scene's own seed (``kind`` 0 for
    the background, 1 for the corruption), so a scene renders the same in any batch or subset."""
    size = batch.image_size
    out = np.empty((len(index), size, size, 4), dtype=np.float32)
    for j, i in enumerate(index):
        gen = np.random.default_rng([int(batch.noise_seed[i]), kind])
        out[j] = gen.standard_normal((size, size, 4), dtype=np.float32)
    return out


def _render_chunk(batch: SceneBatch, ss: int) -> np.ndarray:
    """Background and objects are rasterised at ``ss`` times the resolution, reduced to coverage (alpha)
    and premultiplied colour at the output resolution, and composited there ("over", slot by slot)."""
    n, size = len(batch), batch.image_size
    hi = size * ss
    grid = (np.arange(hi, dtype=np.float32) + 0.5) / ss  # pixel centres in output-pixel units
    gx = grid[None, None, :]
    gy = grid[None, :, None]

    # Background: a pattern value p in [0, 1] per pixel mixes the two tones.
    p = np.zeros((n, size, size), dtype=np.float32)
    bg = batch.background
    for name in ("striped", "checkered", "gradient"):
        sel = np.nonzero(bg == BACKGROUNDS.index(name))[0]
        if len(sel) == 0:
            continue
        ca = np.cos(batch.bg_angle[sel]).astype(np.float32)[:, None, None]
        sa = np.sin(batch.bg_angle[sel]).astype(np.float32)[:, None, None]
        period = batch.bg_period[sel].astype(np.float32)[:, None, None]
        phase = batch.bg_phase[sel].astype(np.float32)[:, None, None]
        if name == "striped":
            pat = (np.mod((gx * ca + gy * sa) / period + phase, 1.0) < 0.5).astype(np.float32)
        elif name == "checkered":
            cell = period * 0.75
            pat = np.mod(np.floor(gx / cell + phase) + np.floor(gy / cell + phase), 2.0)
        else:  # gradient along a random direction
            pat = np.clip(((gx - size / 2) * ca + (gy - size / 2) * sa) / size + 0.5, 0.0, 1.0)
        p[sel] = _downsample(pat, ss)
    tones = batch.bg_rgb.astype(np.float32)
    img = tones[:, 0, None, None, :] + p[..., None] * (tones[:, 1] - tones[:, 0])[:, None, None, :]
    noisy = np.nonzero(bg == BACKGROUNDS.index("noisy"))[0]
    if len(noisy):
        z = _scene_noise(batch, noisy, 0)
        low, chroma = z[..., :1] * np.float32(0.13), z[..., 1:] * np.float32(0.03)
        img[noisy] += low + chroma

    # Objects, flattened over the batch: each gets a square window around its centre, big enough for the
    # largest object in the chunk, shifted inside the image at the borders (an object lies inside the
    # image, so the shifted window still holds all of it).
    counts = batch.count
    obj_scene = np.repeat(np.arange(n), counts)
    obj_slot = np.concatenate([np.arange(k) for k in counts]) if n else np.zeros(0, dtype=np.int64)
    m = len(obj_scene)
    centres = (batch.centres[obj_scene, obj_slot] * size).astype(np.float32)  # output-pixel units
    w_out = min(size, int(math.ceil(2 * float(batch.radius.max(initial=0.0)) * size)) + 2)
    win = w_out * ss
    ox = np.clip(np.floor(centres[:, 0] - w_out / 2).astype(np.int64), 0, size - w_out)  # output pixels
    oy = np.clip(np.floor(centres[:, 1] - w_out / 2).astype(np.int64), 0, size - w_out)
    local = (np.arange(win, dtype=np.float32) + 0.5) / ss
    px = ox[:, None, None] + local[None, None, :]  # (m, 1, win): x of each window sample
    py = oy[:, None, None] + local[None, :, None]  # (m, win, 1)
    rad = (batch.radius[obj_scene] * size).astype(np.float32)[:, None, None]
    ang = batch.angle[obj_scene]
    ca = np.cos(ang).astype(np.float32)[:, None, None]
    sa = np.sin(ang).astype(np.float32)[:, None, None]
    dx = px - centres[:, 0, None, None]
    dy = py - centres[:, 1, None, None]
    # Rotate the sample into the object frame (a clockwise turn of the object by `ang`).
    u = (dx * ca + dy * sa) / rad
    v = (-dx * sa + dy * ca) / rad
    shapes = batch.shape[obj_scene]
    outline = batch.style[obj_scene] == STYLES.index("outline")
    mask = np.zeros((m, win, win), dtype=bool)
    for j, kind in enumerate(SHAPES):
        sel = np.nonzero(shapes == j)[0]
        if len(sel) == 0:
            continue
        mk = _shape_mask(kind, u[sel], v[sel])
        o = outline[sel]
        if o.any():
            mk[o] &= ~_shape_mask(kind, u[sel][o] / 0.6, v[sel][o] / 0.6)
        mask[sel] = mk

    # Texture: dark stripes or dots over the object colour, in image coordinates.
    tex = batch.texture[obj_scene]
    dark = np.zeros((m, win, win), dtype=bool)
    per = batch.tex_period[obj_scene].astype(np.float32)[:, None, None]
    phase = batch.tex_phase[obj_scene].astype(np.float32)[:, None, None]
    st = np.nonzero(tex == TEXTURES.index("striped"))[0]
    if len(st):
        ta = batch.tex_angle[obj_scene[st]].astype(np.float32)[:, None, None]
        t = (px[st] * np.cos(ta) + py[st] * np.sin(ta)) / per[st] + phase[st]
        dark[st] = np.mod(t, 1.0) < 0.45
    dt = np.nonzero(tex == TEXTURES.index("dotted"))[0]
    if len(dt):
        pp = per[dt] * 1.5
        mx = np.mod(px[dt] + phase[dt] * pp, pp) - pp / 2
        my = np.mod(py[dt] + phase[dt] * pp, pp) - pp / 2
        dark[dt] = mx * mx + my * my <= (0.25 * pp) ** 2
    col = batch.rgb[obj_scene].astype(np.float32)
    shade = col * 0.28 + 0.03
    # Coverage and premultiplied colour per output pixel: plain colour everywhere, minus the dark share.
    alpha = _downsample(mask.astype(np.float32), ss)  # (m, w_out, w_out)
    dark_share = _downsample((mask & dark).astype(np.float32), ss)
    premult = (
        alpha[..., None] * col[:, None, None, :] + dark_share[..., None] * (shade - col)[:, None, None, :]
    )

    # Composite slot by slot (later objects over earlier ones): one flat scatter per slot.
    flat = img.reshape(-1, 3)
    steps = np.arange(w_out)
    for k in range(MAX_OBJECTS):
        sel = np.nonzero(obj_slot == k)[0]
        if len(sel) == 0:
            break
        index = (
            obj_scene[sel][:, None, None] * (size * size)
            + (oy[sel][:, None, None] + steps[None, :, None]) * size
            + ox[sel][:, None, None]
            + steps[None, None, :]
        )
        a = alpha[sel]
        hit = a > 0
        target = index[hit]
        flat[target] = premult[sel][hit] + flat[target] * (1.0 - a[hit])[:, None]

    corr = batch.corruption
    blur = np.nonzero(corr == CORRUPTIONS.index("blur"))[0]
    if len(blur):
        img[blur] = _box_blur(img[blur])
    noise = np.nonzero(corr == CORRUPTIONS.index("noise"))[0]
    if len(noise):
        img[noise] = img[noise] + _scene_noise(batch, noise, 1)[..., :3] * np.float32(0.14)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _box_blur(img: np.ndarray) -> np.ndarray:
    """3x3 box blur with edge padding (at 32 px this already turns small stars into blobs)."""
    pad = np.pad(img, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    out = np.zeros_like(img)
    for dy in range(3):
        for dx in range(3):
            out += pad[:, dy : dy + img.shape[1], dx : dx + img.shape[2]]
    return out * np.float32(1.0 / 9.0)


# ---- captions -----------------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(record: dict[str, Any], rng: np.random.Generator | None = None, *, full: bool = False) -> str:
    """``"two small red striped circles pointing left"``; optional words dropped at random unless ``full``."""

    def keep(prob: float) -> bool:
        return full or rng is None or bool(rng.random() < prob)

    count = record["count"]
    words: list[str] = []
    if keep(0.6):
        words.append(record["size"])
    words.append(record["colour"])
    if record["style"] == "outline" and keep(0.8):
        words.append("outlined")
    if record["texture"] != "plain" and keep(0.8):
        words.append(record["texture"])
    elif record["texture"] == "plain" and not full and keep(0.15):
        words.append("plain")
    noun = record["shape"] if count == 1 else PLURALS[record["shape"]]
    if count == 1:
        lead = "one" if (not full and rng is not None and rng.random() < 0.3) else _article(words[0])
    else:
        lead = COUNT_WORDS[count - 1]
    phrase = " ".join([lead, *words, noun])
    if record["orientation"] is not None and keep(0.8):
        phrase += f" pointing {record['orientation']}"
    return phrase


def background_phrase(record: dict[str, Any]) -> str:
    return f"on {_article(record['background'])} {record['background']} background"


_TEMPLATES = (
    "{np}{pos}{bg}",
    "a picture of {np}{pos}{bg}",
    "an image of {np}{bg}{pos}",
    "there {be} {np}{pos}{bg}",
    "a photo of {np}{pos}{bg}",
    "{np}{bg}{pos}",
)


def caption(record: dict[str, Any], rng: np.random.Generator) -> str:
    """One varied caption for a scene record; always names count, colour and shape."""
    template = _TEMPLATES[int(rng.integers(0, len(_TEMPLATES)))]
    np_ = noun_phrase(record, rng)
    pos = f" {POSITION_PHRASES[record['position']]}" if record["position"] and rng.random() < 0.75 else ""
    bg = f" {background_phrase(record)}" if rng.random() < 0.6 else ""
    text = template.format(np=np_, pos=pos, bg=bg, be="is" if record["count"] == 1 else "are")
    if record["corruption"] != "none" and rng.random() < 0.6:
        text += ", blurred" if record["corruption"] == "blur" else ", grainy"
    return text


def make_captions(batch: SceneBatch, seed: int) -> list[str]:
    """One caption per scene, deterministic from ``seed``."""
    rng = np.random.default_rng([int(seed), 0xCA9])
    return [caption(batch.record(i), rng) for i in range(len(batch))]


# ---- streaming ----------------------------------------------------------------------------------


@dataclasses.dataclass
class World:
    """A seeded stream of (images, captions, scene batch); batch ``step`` is the same on every call."""

    image_size: int = 32
    seed: int = 0
    supersample: int = 2
    constraints: dict[str, Any] = dataclasses.field(default_factory=dict)

    def batch(self, step: int, batch_size: int) -> tuple[np.ndarray, list[str], SceneBatch]:
        scene_seed = self.seed * 1_000_003 + step
        scenes = sample_scenes(batch_size, scene_seed, image_size=self.image_size, **self.constraints)
        return render_scenes(scenes, supersample=self.supersample), make_captions(scenes, scene_seed), scenes

    def stream(self, batch_size: int, start: int = 0) -> Iterator[tuple[np.ndarray, list[str], SceneBatch]]:
        step = start
        while True:
            yield self.batch(step, batch_size)
            step += 1
