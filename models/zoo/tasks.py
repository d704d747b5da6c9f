"""Tasks on the procedural world (and scikit-learn's digits): a mini VTAB-1k and an RPP suite.

Every builder returns a :class:`Task`: class names and named splits of ``uint8`` image tensors
``(N, 3, H, W)`` with ``int64`` labels, deterministic from ``seed``. Splits are drawn from disjoint seed
streams (world tasks) or disjoint index sets (digits), and classes are balanced within each split.

Mini VTAB-1k (:data:`VTAB_TASKS`, 1,000 training images per task by default, like VTAB-1k's 800 + 200):

==============  ============  =============================================================
task            group         label
==============  ============  =============================================================
digits          natural       sklearn ``load_digits`` (8x8 scans, upscaled), 10 classes
shapes          natural       object category: the shape, 8 classes
texture         specialised   plain / striped / dotted objects
background      specialised   black / gray / white / striped / noisy / checkered / gradient
count           structured    1 to 5 objects
position        structured    centre / left / right / top / bottom
orientation     structured    up / right / down / left (triangles, arrows, crescents)
distance        structured    near / medium / far gap between two objects
size            structured    small / large
==============  ============  =============================================================

RPP suite (:func:`rpp_suite`): a many-class *source* set for prompt pretraining (the ImageNet-21K role:
``size x colour x texture x shape`` names such as ``"small red striped circle"``, 288 classes, two
colours held out) and held-out *targets*: new class names (the held-out colours; a count x shape label
space), new domains (unseen backgrounds, pixel noise / blur, outline drawing style) and a base-to-new split.

The code is split by concern: :class:`Task` and the shared split helpers in :mod:`.task_base`, the RPP
suite in :mod:`.rpp_tasks`, the ImageFolder zip writer in :mod:`.imagefolder`. This module holds the mini
VTAB-1k builders and re-exports the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from . import world as W
from .imagefolder import write_imagefolder_zip
from .rpp_tasks import (
    RPP_HELD_OUT_COLOURS,
    RPP_SOURCE_BACKGROUNDS,
    RPP_SOURCE_COLOURS,
    RPP_TEMPLATES,
    base_to_new_task,
    object_class_name,
    rpp_source_task,
    rpp_suite,
    rpp_targets,
)
from .task_base import Task, TaskSplit, _a, _plural, _sub_seed, _world_task

__all__ = [
    "DEFAULT_SIZES",
    "EXTRA_TASKS",
    "RPP_HELD_OUT_COLOURS",
    "RPP_SOURCE_BACKGROUNDS",
    "RPP_SOURCE_COLOURS",
    "RPP_TEMPLATES",
    "VTAB_TASKS",
    "ZERO_SHOT_TASKS",
    "Task",
    "TaskSplit",
    "background_task",
    "base_to_new_task",
    "build_task",
    "colour_task",
    "count_task",
    "digits_task",
    "distance_task",
    "object_class_name",
    "orientation_task",
    "position_task",
    "rpp_source_task",
    "rpp_suite",
    "rpp_targets",
    "shapes_task",
    "size_task",
    "texture_task",
    "vtab_tasks",
    "write_imagefolder_zip",
]
DEFAULT_SIZES = {"train": 1000, "val": 200, "test": 500}
# ---- mini VTAB-1k -------------------------------------------------------------------------------


def digits_task(*, seed: int = 0, image_size: int = 32, sizes: dict[str, int] | None = None) -> Task:
    """scikit-learn's 1,797 8x8 digit scans, upscaled (bilinear) to ``image_size``, grey as RGB.

    The split is fixed (``seed`` is accepted for a uniform API and ignored): the zoo's ViTs pretrain on
    the ``train`` split, so ``val`` and ``test`` must be the same images whatever seed a benchmark uses.
    """
    from sklearn.datasets import load_digits

    sizes = dict(sizes or {"train": 1000, "val": 200, "test": 597})
    data = load_digits()
    x = torch.from_numpy(data.images.astype(np.float32) / 16.0)[:, None]
    x = torch.nn.functional.interpolate(
        x, size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    images = (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(data.target.astype(np.int64))
    total = sum(sizes.values())
    if total > len(labels):
        raise ConfigError("sizes", f"digits has {len(labels)} images, asked for {total}")
    del seed  # fixed split, see above
    order = torch.from_numpy(np.random.default_rng(_sub_seed(0, "digits")).permutation(len(labels)))
    splits, indices, start = {}, {}, 0
    for split, n in sizes.items():
        idx = order[start : start + n]
        splits[split] = TaskSplit(images[idx].clone(), labels[idx].clone())
        indices[split] = idx.tolist()
        start += n
    return Task(
        name="digits",
        group="natural",
        class_names=[str(d) for d in range(10)],
        splits=splits,
        zero_shot=False,
        description="scikit-learn load_digits, 8x8 greyscale scans upscaled; 10 classes",
        meta={"source": "sklearn.datasets.load_digits", "indices": indices},
    )


_NO_CORRUPTION = {"corruption": "none"}


def shapes_task(**kw: Any) -> Task:
    classes = [{"shape": s} for s in W.SHAPES]
    return _world_task(
        "shapes", "natural", W.SHAPES, classes, {**_NO_CORRUPTION, "count": (1, 2, 3)},
        class_prompts=[[_a(s), f"one {s}", f"two {_plural(s)}", f"three {_plural(s)}"] for s in W.SHAPES],
        description="object category: which shape (any colour, size, count 1-3, texture, background)",
        **kw,
    )  # fmt: skip


def texture_task(**kw: Any) -> Task:
    classes = [{"texture": t} for t in W.TEXTURES]
    common = {**_NO_CORRUPTION, "size": "large", "count": (1, 2), "style": "filled"}
    return _world_task(
        "texture", "specialised", W.TEXTURES, classes, common,
        class_prompts=[[_a(f"{t} {s}") for s in W.SHAPES] for t in W.TEXTURES],
        description="object texture: plain, striped or dotted (large filled objects)",
        **kw,
    )  # fmt: skip


def background_task(**kw: Any) -> Task:
    classes = [{"background": b} for b in W.BACKGROUNDS]
    return _world_task(
        "background", "specialised", W.BACKGROUNDS, classes, dict(_NO_CORRUPTION),
        class_prompts=[[f"{_a(s)} on {_a(b)} background" for s in W.SHAPES] for b in W.BACKGROUNDS],
        description="background kind: three plain tones, stripes, noise, checks, gradient",
        **kw,
    )  # fmt: skip


def count_task(**kw: Any) -> Task:
    names = list(W.COUNT_WORDS)
    classes = [{"count": c} for c in W.COUNTS]
    prompts = [[_a(s) if c == 1 else f"{names[c - 1]} {_plural(s)}" for s in W.SHAPES] for c in W.COUNTS]
    return _world_task(
        "count", "structured", names, classes, {**_NO_CORRUPTION, "size": "small", "position": "anywhere"},
        class_prompts=prompts,
        description="how many objects (1-5 small objects anywhere)",
        **kw,
    )  # fmt: skip


def position_task(**kw: Any) -> Task:
    classes = [{"position": p} for p in W.POSITIONS]
    return _world_task(
        "position", "structured", W.POSITIONS, classes, {**_NO_CORRUPTION, "count": 1},
        class_prompts=[[f"{_a(s)} {W.POSITION_PHRASES[p]}" for s in W.SHAPES] for p in W.POSITIONS],
        description="where a single object is: centre, left, right, top, bottom",
        **kw,
    )  # fmt: skip


def orientation_task(**kw: Any) -> Task:
    classes = [{"orientation": o} for o in W.ORIENTATIONS]
    return _world_task(
        "orientation", "structured", W.ORIENTATIONS, classes, {**_NO_CORRUPTION, "count": 1},
        class_prompts=[[f"{_a(s)} pointing {o}" for s in W.ASYMMETRIC_SHAPES] for o in W.ORIENTATIONS],
        description="which way a triangle, arrow or crescent points",
        **kw,
    )  # fmt: skip


def distance_task(**kw: Any) -> Task:
    classes = [{"distance": d} for d in W.DISTANCES]
    return _world_task(
        "distance", "structured", W.DISTANCES, classes, {**_NO_CORRUPTION, "size": "small"},
        zero_shot=False,
        description="how far apart two objects are (near / medium / far centre-to-centre gap)",
        **kw,
    )  # fmt: skip


def size_task(**kw: Any) -> Task:
    classes = [{"size": z} for z in W.SIZES]
    return _world_task(
        "size", "structured", W.SIZES, classes, {**_NO_CORRUPTION, "count": (1, 2, 3)},
        class_prompts=[[_a(f"{z} {s}") for s in W.SHAPES] for z in W.SIZES],
        description="object size: small or large",
        **kw,
    )  # fmt: skip


def colour_task(**kw: Any) -> Task:
    """Not part of the VTAB set (too easy); used to check a CLIP's zero-shot colour naming."""
    classes = [{"colour": c} for c in W.COLOUR_NAMES]
    return _world_task(
        "colour", "extra", W.COLOUR_NAMES, classes, dict(_NO_CORRUPTION),
        class_prompts=[[_a(f"{c} {s}") for s in W.SHAPES] for c in W.COLOUR_NAMES],
        description="object colour (8 names)",
        **kw,
    )  # fmt: skip


VTAB_TASKS: dict[str, Callable[..., Task]] = {
    "digits": digits_task,
    "shapes": shapes_task,
    "texture": texture_task,
    "background": background_task,
    "count": count_task,
    "position": position_task,
    "orientation": orientation_task,
    "distance": distance_task,
    "size": size_task,
}
EXTRA_TASKS: dict[str, Callable[..., Task]] = {"colour": colour_task}
# The world tasks a CLIP's zero-shot accuracy is reported on (captions describe these labels).
ZERO_SHOT_TASKS = ("colour", "shapes", "count", "texture", "background", "position", "orientation", "size")


def build_task(
    name: str, *, seed: int = 0, image_size: int = 32, sizes: dict[str, int] | None = None
) -> Task:
    """One mini VTAB-1k (or extra) task by name."""
    builders = {**VTAB_TASKS, **EXTRA_TASKS}
    if name not in builders:
        raise ConfigError("task", f"unknown task {name!r} (known: {', '.join(builders)})")
    if name == "digits":
        return digits_task(seed=seed, image_size=image_size, sizes=sizes)
    return builders[name](seed=seed, image_size=image_size, sizes=dict(sizes or DEFAULT_SIZES))


def vtab_tasks(
    *,
    seed: int = 0,
    image_size: int = 32,
    sizes: dict[str, int] | None = None,
    names: Sequence[str] | None = None,
) -> list[Task]:
    return [build_task(n, seed=seed, image_size=image_size, sizes=sizes) for n in (names or VTAB_TASKS)]
