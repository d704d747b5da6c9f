"""Rendering scene records to pixels: numpy, vectorised over every object of a batch, supersampled."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .scene import BACKGROUNDS, CORRUPTIONS, MAX_OBJECTS, SHAPES, STYLES, TEXTURES, SceneBatch


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
    img = _render_background(batch, ss)
    win = _object_windows(batch, ss)
    mask = _object_masks(batch, win)
    dark = _texture_marks(batch, win)
    col = batch.rgb[win.scene].astype(np.float32)
    shade = col * 0.28 + 0.03
    # Coverage and premultiplied colour per output pixel: plain colour everywhere, minus the dark share.
    alpha = _downsample(mask.astype(np.float32), ss)  # (m, w_out, w_out)
    dark_share = _downsample((mask & dark).astype(np.float32), ss)
    premult = (
        alpha[..., None] * col[:, None, None, :] + dark_share[..., None] * (shade - col)[:, None, None, :]
    )
    _composite_objects(img, win, alpha, premult)
    _apply_corruptions(batch, img)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _render_background(batch: SceneBatch, ss: int) -> np.ndarray:
    """The background ``(n, H, W, 3)`` float32: a pattern value p in [0, 1] per pixel (rasterised at ``ss``
    times the resolution and averaged down) mixes the scene's two tones; noisy ones get per-scene noise."""
    n, size = len(batch), batch.image_size
    hi = size * ss
    grid = (np.arange(hi, dtype=np.float32) + 0.5) / ss  # pixel centres in output-pixel units
    gx = grid[None, None, :]
    gy = grid[None, :, None]
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
    return img


class _Windows(NamedTuple):
    """The square sampling window of every object of a chunk, flattened over the batch (``m`` objects)."""

    scene: np.ndarray  # (m,) the object's scene in the chunk
    slot: np.ndarray  # (m,) its slot in that scene (compositing order)
    centres: np.ndarray  # (m, 2) float32 x, y in output pixels
    size: int  # window side in output pixels
    ox: np.ndarray  # (m,) window's left edge in output pixels
    oy: np.ndarray  # (m,) window's top edge
    px: np.ndarray  # (m, 1, size * ss) x of each supersampled window column
    py: np.ndarray  # (m, size * ss, 1) y of each supersampled window row


def _object_windows(batch: SceneBatch, ss: int) -> _Windows:
    """Each object gets a square window around its centre, big enough for the largest object in the chunk
    (so one array holds them all), shifted inside the image at the borders (an object lies inside the
    image, so the shifted window still holds all of it)."""
    n, size = len(batch), batch.image_size
    counts = batch.count
    obj_scene = np.repeat(np.arange(n), counts)
    obj_slot = np.concatenate([np.arange(k) for k in counts]) if n else np.zeros(0, dtype=np.int64)
    centres = (batch.centres[obj_scene, obj_slot] * size).astype(np.float32)  # output-pixel units
    w_out = min(size, int(math.ceil(2 * float(batch.radius.max(initial=0.0)) * size)) + 2)
    win = w_out * ss
    ox = np.clip(np.floor(centres[:, 0] - w_out / 2).astype(np.int64), 0, size - w_out)  # output pixels
    oy = np.clip(np.floor(centres[:, 1] - w_out / 2).astype(np.int64), 0, size - w_out)
    local = (np.arange(win, dtype=np.float32) + 0.5) / ss
    px = ox[:, None, None] + local[None, None, :]  # (m, 1, win): x of each window sample
    py = oy[:, None, None] + local[None, :, None]  # (m, win, 1)
    return _Windows(obj_scene, obj_slot, centres, w_out, ox, oy, px, py)


def _object_masks(batch: SceneBatch, win: _Windows) -> np.ndarray:
    """Inside mask ``(m, win, win)`` of each object's shape at the supersampled window samples (an outline
    is the shape minus the same shape scaled to 60 %)."""
    obj_scene = win.scene
    rad = (batch.radius[obj_scene] * batch.image_size).astype(np.float32)[:, None, None]
    ang = batch.angle[obj_scene]
    ca = np.cos(ang).astype(np.float32)[:, None, None]
    sa = np.sin(ang).astype(np.float32)[:, None, None]
    dx = win.px - win.centres[:, 0, None, None]
    dy = win.py - win.centres[:, 1, None, None]
    # Rotate the sample into the object frame (a clockwise turn of the object by `ang`).
    u = (dx * ca + dy * sa) / rad
    v = (-dx * sa + dy * ca) / rad
    shapes = batch.shape[obj_scene]
    outline = batch.style[obj_scene] == STYLES.index("outline")
    side = win.px.shape[-1]
    mask = np.zeros((len(obj_scene), side, side), dtype=bool)
    for j, kind in enumerate(SHAPES):
        sel = np.nonzero(shapes == j)[0]
        if len(sel) == 0:
            continue
        mk = _shape_mask(kind, u[sel], v[sel])
        o = outline[sel]
        if o.any():
            mk[o] &= ~_shape_mask(kind, u[sel][o] / 0.6, v[sel][o] / 0.6)
        mask[sel] = mk
    return mask


def _texture_marks(batch: SceneBatch, win: _Windows) -> np.ndarray:
    """Where each object's texture darkens it ``(m, win, win)``: stripes or dots, in image coordinates (so a
    pattern does not turn with the object)."""
    obj_scene, px, py = win.scene, win.px, win.py
    tex = batch.texture[obj_scene]
    side = px.shape[-1]
    dark = np.zeros((len(obj_scene), side, side), dtype=bool)
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
    return dark


def _composite_objects(img: np.ndarray, win: _Windows, alpha: np.ndarray, premult: np.ndarray) -> None:
    """Composite the objects "over" ``img`` in place, slot by slot (later objects over earlier ones), with
    one flat scatter per slot: within a slot every object belongs to a different scene, so none collide."""
    size = img.shape[1]
    flat = img.reshape(-1, 3)
    steps = np.arange(win.size)
    for k in range(MAX_OBJECTS):
        sel = np.nonzero(win.slot == k)[0]
        if len(sel) == 0:
            break
        index = (
            win.scene[sel][:, None, None] * (size * size)
            + (win.oy[sel][:, None, None] + steps[None, :, None]) * size
            + win.ox[sel][:, None, None]
            + steps[None, None, :]
        )
        a = alpha[sel]
        hit = a > 0
        target = index[hit]
        flat[target] = premult[sel][hit] + flat[target] * (1.0 - a[hit])[:, None]


def _apply_corruptions(batch: SceneBatch, img: np.ndarray) -> None:
    """Blur or add per-scene pixel noise to the corrupted scenes of ``img``, in place."""
    corr = batch.corruption
    blur = np.nonzero(corr == CORRUPTIONS.index("blur"))[0]
    if len(blur):
        img[blur] = _box_blur(img[blur])
    noise = np.nonzero(corr == CORRUPTIONS.index("noise"))[0]
    if len(noise):
        img[noise] = img[noise] + _scene_noise(batch, noise, 1)[..., :3] * np.float32(0.14)


def _box_blur(img: np.ndarray) -> np.ndarray:
    """3x3 box blur with edge padding (at 32 px this already turns small stars into blobs)."""
    pad = np.pad(img, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    out = np.zeros_like(img)
    for dy in range(3):
        for dx in range(3):
            out += pad[:, dy : dy + img.shape[1], dx : dx + img.shape[2]]
    return out * np.float32(1.0 / 9.0)
