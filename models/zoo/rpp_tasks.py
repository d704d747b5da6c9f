"""The RPP suite: the many-class prompt-pretraining source and its held-out targets (see :mod:`.tasks`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from . import world as W
from .task_base import Task, TaskSplit, _plural, _sub_seed, _world_split, _world_task

RPP_HELD_OUT_COLOURS = ("cyan", "pink")
RPP_SOURCE_COLOURS = tuple(c for c in W.COLOUR_NAMES if c not in RPP_HELD_OUT_COLOURS)
RPP_SOURCE_BACKGROUNDS = ("black", "gray", "white", "striped", "noisy")
RPP_TEMPLATES = ("a {}", "a picture of a {}", "a photo of a {}", "{}")
_SOURCE_DOMAIN = {"background": RPP_SOURCE_BACKGROUNDS, "style": "filled", "corruption": "none", "count": 1}


def object_class_name(size: str, colour: str, texture: str, shape: str) -> str:
    """``"small red striped circle"``; plain texture is left unsaid (``"large blue star"``)."""
    words = [size, colour] + ([] if texture == "plain" else [texture]) + [shape]
    return " ".join(words)


def _object_classes(colours: Sequence[str]) -> tuple[list[str], list[dict[str, Any]]]:
    names, constraints = [], []
    for size in W.SIZES:
        for colour in colours:
            for texture in W.TEXTURES:
                for shape in W.SHAPES:
                    names.append(object_class_name(size, colour, texture, shape))
                    constraints.append({"size": size, "colour": colour, "texture": texture, "shape": shape})
    return names, constraints


def rpp_source_task(*, seed: int = 0, image_size: int = 32, per_class: dict[str, int] | None = None) -> Task:
    """The prompt-pretraining source: 288 ``size colour [texture] shape`` classes, source domain only."""
    per_class = dict(per_class or {"train": 16, "val": 4, "test": 4})
    names, classes = _object_classes(RPP_SOURCE_COLOURS)
    sizes = {k: v * len(names) for k, v in per_class.items()}
    return _world_task(
        "rpp-source", "rpp-source", names, classes, _SOURCE_DOMAIN, seed=seed, image_size=image_size,
        sizes=sizes, templates=RPP_TEMPLATES,
        description=f"{len(names)} object classes (colours {', '.join(RPP_SOURCE_COLOURS)}), "
        f"backgrounds {', '.join(RPP_SOURCE_BACKGROUNDS)}, filled, single object",
    )  # fmt: skip


def _source_subset(seed: int, k: int) -> tuple[list[str], list[dict[str, Any]]]:
    names, classes = _object_classes(RPP_SOURCE_COLOURS)
    pick = np.sort(
        np.random.default_rng(_sub_seed(seed, "rpp-subset")).choice(len(names), size=k, replace=False)
    )
    return [names[i] for i in pick], [classes[i] for i in pick]


def rpp_targets(
    *, seed: int = 0, image_size: int = 32, per_class: int = 10, subset_classes: int = 96
) -> list[Task]:
    """Held-out targets for zero-shot transfer after prompt pretraining on :func:`rpp_source_task`.

    Each has a ``test`` split (``per_class`` images per class) and a small ``val`` split (2 per class).
    """
    sizes = {"val": 2, "test": per_class}
    out: list[Task] = []

    names, classes = _object_classes(RPP_HELD_OUT_COLOURS)
    out.append(_world_task(
        "rpp-new-colours", "rpp-target", names, classes, _SOURCE_DOMAIN, seed=seed, image_size=image_size,
        sizes={k: v * len(names) for k, v in sizes.items()}, templates=RPP_TEMPLATES,
        description="new class names: the colours held out of the source set", meta={"shift": "classes"},
    ))  # fmt: skip

    count_names = [
        f"{W.COUNT_WORDS[c - 1]} {s if c == 1 else _plural(s)}" for c in W.COUNTS for s in W.SHAPES
    ]
    count_classes = [{"count": c, "shape": s} for c in W.COUNTS for s in W.SHAPES]
    out.append(_world_task(
        "rpp-count-shape", "rpp-target", count_names, count_classes,
        {"background": RPP_SOURCE_BACKGROUNDS, "style": "filled", "corruption": "none", "size": "small",
         "position": "anywhere"},
        seed=seed, image_size=image_size, sizes={k: v * len(count_names) for k, v in sizes.items()},
        templates=("{}", "a picture of {}", "a photo of {}"),
        description="new label space: count x shape (\"three stars\")", meta={"shift": "classes"},
    ))  # fmt: skip

    sub_names, sub_classes = _source_subset(seed, subset_classes)
    sub_sizes = {k: v * len(sub_names) for k, v in sizes.items()}
    domains = (
        (
            "rpp-domain-background",
            {"background": ("checkered", "gradient")},
            "unseen backgrounds (checkered, gradient)",
        ),
        ("rpp-domain-corruption", {"corruption": ("noise", "blur")}, "pixel noise or blur"),
        ("rpp-domain-outline", {"style": "outline"}, "objects drawn as outlines"),
    )
    for name, shift, text in domains:
        out.append(_world_task(
            name, "rpp-target", sub_names, sub_classes, {**_SOURCE_DOMAIN, **shift}, seed=seed,
            image_size=image_size, sizes=sub_sizes, templates=RPP_TEMPLATES,
            description=f"new domain: {text}; {len(sub_names)} source classes", meta={"shift": "domain"},
        ))  # fmt: skip
    return out


def base_to_new_task(*, seed: int = 0, image_size: int = 32, per_class: dict[str, int] | None = None) -> Task:
    """colour x shape (64 classes) split into 32 base and 32 new classes, every colour and shape in both.

    Splits: ``train`` / ``val`` (base classes only), ``test_base``, ``test_new``. Labels index the full
    class list; ``meta["base"]`` / ``meta["new"]`` list the class indices of each half.
    """
    per_class = dict(per_class or {"train": 16, "val": 4, "test": 10})
    names = [f"{c} {s}" for c in W.COLOUR_NAMES for s in W.SHAPES]
    constraints = [{"colour": c, "shape": s} for c in W.COLOUR_NAMES for s in W.SHAPES]
    # A Latin-square split: class (c, s) is base when (c + s + offset) is even, so each colour and each
    # shape has four base and four new classes.
    offset = int(np.random.default_rng(_sub_seed(seed, "b2n")).integers(0, 2))
    base = [i for i in range(len(names)) if (i // len(W.SHAPES) + i % len(W.SHAPES) + offset) % 2 == 0]
    new = [i for i in range(len(names)) if i not in set(base)]
    common = {"count": 1, "corruption": "none"}
    splits: dict[str, TaskSplit] = {}
    for split, subset in (("train", base), ("val", base), ("test_base", base), ("test_new", new)):
        per = per_class["test" if split.startswith("test") else split]
        part = _world_split("rpp-base-to-new", split, seed, per * len(subset), image_size,
                            [constraints[i] for i in subset], common)  # fmt: skip
        mapping = torch.as_tensor(subset, dtype=torch.int64)
        splits[split] = TaskSplit(part.images, mapping[part.labels])
    return Task(
        name="rpp-base-to-new", group="rpp-target", class_names=names, splits=splits, templates=RPP_TEMPLATES,
        description="base-to-new: tune on 32 base colour-shape classes, test on base and on 32 new ones",
        meta={"shift": "base-to-new", "base": base, "new": new},
    )  # fmt: skip


def rpp_suite(*, seed: int = 0, image_size: int = 32, source_per_class: dict[str, int] | None = None,
              target_per_class: int = 10) -> dict[str, Any]:  # fmt: skip
    """``{"source": Task, "targets": [Task, ...], "base_to_new": Task}``."""
    return {
        "source": rpp_source_task(seed=seed, image_size=image_size, per_class=source_per_class),
        "targets": rpp_targets(seed=seed, image_size=image_size, per_class=target_per_class),
        "base_to_new": base_to_new_task(seed=seed, image_size=image_size),
    }
