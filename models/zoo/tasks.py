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
"""

from __future__ import annotations

import dataclasses
import io
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from . import world as W

DEFAULT_SIZES = {"train": 1000, "val": 200, "test": 500}


@dataclasses.dataclass
class TaskSplit:
    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclasses.dataclass
class Task:
    """A labelled image task with named splits (``train``, ``val``, ``test``; base-to-new adds more).

    ``templates`` turn a class name into text for zero-shot CLIP (``"a picture of a {}."``);
    ``class_prompts``, when set, gives the texts of each class explicitly (an ensemble averaged by the
    zero-shot classifier) for tasks whose class names alone are not caption-like (``count``: "three"
    becomes "three circles", "three stars", ...). ``zero_shot`` is False where captions never describe
    the label (digits, distance), so a zero-shot score would be meaningless.
    """

    name: str
    group: str
    class_names: list[str]
    splits: dict[str, TaskSplit]
    templates: tuple[str, ...] = ("a {}",)
    class_prompts: list[list[str]] | None = None
    zero_shot: bool = True
    description: str = ""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return int(next(iter(self.splits.values())).images.shape[-1])

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self.splits:
            raise KeyError(f"task {self.name!r} has no split {name!r} (has {', '.join(self.splits)})")
        s = self.splits[name]
        return s.images, s.labels

    def texts(self) -> list[list[str]]:
        """The zero-shot texts of every class (explicit prompts, else templates x class name)."""
        if self.class_prompts is not None:
            return [list(p) for p in self.class_prompts]
        return [[t.format(c) for t in self.templates] for c in self.class_names]

    def pil_images(self, split: str) -> list[Any]:
        from PIL import Image

        images, _ = self.split(split)
        return [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "group": self.group,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "splits": {k: len(v) for k, v in self.splits.items()},
            "zero_shot": self.zero_shot,
            "description": self.description,
        }


def _sub_seed(seed: int, *parts: object) -> int:
    """A stable 63-bit seed from a base seed and names (crc32-chained; never Python's salted hash)."""
    value = int(seed) & 0xFFFFFFFF
    for part in parts:
        value = zlib.crc32(f"{part}".encode(), value)
    return (int(seed) << 32) ^ value


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def _balanced_counts(total: int, k: int) -> list[int]:
    base, extra = divmod(total, k)
    return [base + (1 if i < extra else 0) for i in range(k)]


def _world_split(
    task: str,
    split: str,
    seed: int,
    n: int,
    image_size: int,
    classes: Sequence[dict[str, Any]],
    common: dict[str, Any],
) -> TaskSplit:
    """``n`` images, balanced over ``classes`` (each a dict of world constraints), shuffled."""
    images, labels = [], []
    for label, (constraints, k) in enumerate(zip(classes, _balanced_counts(n, len(classes)), strict=True)):
        if k == 0:
            continue
        batch = W.sample_scenes(
            k, _sub_seed(seed, task, split, label), image_size=image_size, **{**common, **constraints}
        )
        images.append(W.render_scenes(batch))
        labels.append(np.full(k, label, dtype=np.int64))
    img = np.concatenate(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8)
    lab = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    order = np.random.default_rng(_sub_seed(seed, task, split, "order")).permutation(len(lab))
    return TaskSplit(_to_tensor(img[order]), torch.from_numpy(lab[order]))


def _world_task(
    name: str,
    group: str,
    class_names: Sequence[str],
    classes: Sequence[dict[str, Any]],
    common: dict[str, Any],
    *,
    seed: int,
    image_size: int,
    sizes: dict[str, int],
    **task_kwargs: Any,
) -> Task:
    splits = {
        split: _world_split(name, split, seed, n, image_size, classes, common) for split, n in sizes.items()
    }
    return Task(name=name, group=group, class_names=list(class_names), splits=splits, **task_kwargs)


def _plural(shape: str) -> str:
    return W.PLURALS[shape]


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


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


# ---- RPP suite ----------------------------------------------------------------------------------

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


# ---- ImageFolder zip writer ---------------------------------------------------------------------

_ZIP_DATE = (2024, 1, 1, 0, 0, 0)  # fixed member timestamps: the same task always gives the same bytes


def _folder_name(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in " -_.," else "_" for ch in name).strip(" .")
    return cleaned or "_"


def write_imagefolder_zip(
    task: Task, path: str | Path, *, splits: dict[str, str] | Sequence[str] | None = None
) -> Path:
    """Write ``task`` as an ImageFolder zip: ``<split>/<class name>/<n>.png``.

    ``splits`` selects the task splits to write, or maps task split -> folder name (for base-to-new,
    ``{"train": "train", "val": "val", "test_base": "test"}``). Default: whichever of train/val/test exist.
    PNG bytes and zip metadata are deterministic, so the same task gives a byte-identical file.
    """
    from PIL import Image

    mapping: dict[str, str]
    if splits is None:
        mapping = {s: s for s in ("train", "val", "test") if s in task.splits}
    elif isinstance(splits, dict):
        mapping = dict(splits)
    else:
        mapping = {s: s for s in splits}
    folders = [_folder_name(c) for c in task.class_names]
    if len(set(folders)) != len(folders):
        raise ConfigError("class_names", "two class names map to the same folder name")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for split, folder in mapping.items():
            images, labels = task.split(split)
            for i, (img, label) in enumerate(zip(images, labels.tolist(), strict=True)):
                buf = io.BytesIO()
                Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="PNG", optimize=False)
                info = zipfile.ZipInfo(f"{folder}/{folders[label]}/{i:05d}.png", date_time=_ZIP_DATE)
                zf.writestr(info, buf.getvalue())
    tmp.replace(path)
    return path
