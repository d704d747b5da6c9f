"""Captions of scene records: varied templates that mention a random subset of the attributes."""

from __future__ import annotations

from typing import Any

import numpy as np

from .scene import COUNT_WORDS, PLURALS, POSITION_PHRASES, SceneBatch


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
