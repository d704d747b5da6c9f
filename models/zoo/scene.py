"""The scene vocabularies of the procedural world and :class:`SceneBatch`, the record of a batch of scenes.

Shared by sampling (:mod:`.sampling`), rendering (:mod:`.render`) and captions (:mod:`.captions`); the
public entry point is :mod:`.world`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

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
