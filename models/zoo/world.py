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

The implementation is split by concern: the vocabularies and :class:`SceneBatch` in :mod:`.scene`,
sampling in :mod:`.sampling`, rendering in :mod:`.render`, captions in :mod:`.captions`. This module is
the public entry point and re-exports all of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from .captions import background_phrase, caption, make_captions, noun_phrase
from .render import render_scenes
from .sampling import sample_scenes
from .scene import (
    ASYMMETRIC_SHAPES,
    BACKGROUNDS,
    COLOUR_NAMES,
    COLOURS,
    CORRUPTIONS,
    COUNT_WORDS,
    COUNTS,
    DISTANCES,
    MAX_OBJECTS,
    ORIENTATIONS,
    PLURALS,
    POSITION_PHRASES,
    POSITIONS,
    SHAPES,
    SIZES,
    STYLES,
    TEXTURES,
    SceneBatch,
)

__all__ = [
    "ASYMMETRIC_SHAPES",
    "BACKGROUNDS",
    "COLOURS",
    "COLOUR_NAMES",
    "CORRUPTIONS",
    "COUNTS",
    "COUNT_WORDS",
    "DISTANCES",
    "MAX_OBJECTS",
    "ORIENTATIONS",
    "PLURALS",
    "POSITIONS",
    "POSITION_PHRASES",
    "SHAPES",
    "SIZES",
    "STYLES",
    "TEXTURES",
    "WORLD_VERSION",
    "SceneBatch",
    "World",
    "background_phrase",
    "caption",
    "make_captions",
    "noun_phrase",
    "render_scenes",
    "sample_scenes",
]
# Bumped whenever the sampling or the rendering changes pixels: part of every recipe hash that uses it.
WORLD_VERSION = 1


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
