"""RPP configuration (Revisiting Prompt Pretraining, arXiv 2409.06166; docs/methods.md A).

Only the abstract of RPP is public. What is taken from it: unshared query/key/value prompts, and soft
labels from a frozen CLIP teacher's zero-shot probabilities added to the hard-label loss. The training
loss around them is POMP's (local contrast over K sampled classes with local correction, docs/methods.md A.4).
Everything else (where the prompts sit, carry mode, depth, KD direction and temperature) is INFERRED and
configurable; the defaults are documented field by field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from ..backbones.spec import BackboneSpec
from ..base import MethodConfig
from ..clip_prompting.config import CARRY_MODES, MAX_PROMPT_LENGTH, PromptTowerConfig
from ..config import option
from ..errors import ConfigError

DEFAULT_TEMPLATES = ("a photo of a {}.",)
SHORTHAND_DESIGNS = ("qkv", "shared", "coop")
MAX_TEMPLATES = 256

# Training defaults of RPP jobs (TrainConfig fields; registry.register_method(train_defaults=...)). RPP runs
# on CLIP backbones only, so one layer serves every kind. Where each number comes from:
# - lr 5e-3: the benchmark's RPP "select" rows (docs/benchmarks/results.jsonl, zoo-clip-tiny, AdamW, 10
#   epochs, batch 128, grid 2e-3 / 5e-3, chosen on the source validation split): 5e-3 won for rpp-kd
#   (the default design, 60.7 vs 60.6 %), rpp-nokd (60.9 vs 59.6 %) and shared (59.9 vs 58.9 %); only
#   coop preferred 2e-3 (60.9 vs 60.6 %). POMP's own 2e-3 is for SGD at batch 256 (docs/methods.md A.4).
# - warmup_epochs 1: the benchmark's warm-up (min(1, epochs / 2), models/bench/rpp_runs.py); a job with
#   fewer epochs gets at most half of them (app/core/job_plan.py).
TRAIN_DEFAULTS = {"*": {"lr": 5e-3, "warmup_epochs": 1.0}}


@dataclasses.dataclass
class RPPConfig(MethodConfig):
    """RPP on an open_clip CLIP.

    Args:
        text_design: ``qkv`` (RPP, default) | ``shared`` (IVLP) | ``coop`` (POMP's shallow context) | ``none``.
        vision_design: ``qkv`` (default) | ``shared`` | ``none``.
        text_length, vision_length: prompt tokens per tower (default 4, POMP's n_ctx; 0 disables a tower).
        text_depth, vision_depth: leading blocks with prompts; ``None`` = blocks - 1 (every tensor learns,
            see ``PromptTowerConfig``).
        carry: ``add`` (default, ours: every P_q learns at the default depth) or ``replace`` (VPT/IVLP
            layer-wise replacement, and RPP's SAPL layer as a second-hand review describes it; only the
            last prompted layer's P_q learns), for both towers. Kept at ``add`` by evidence: on the CPU
            RPP table's source validation split (docs/benchmarks.md) replace - add was +0.1 (shared),
            -0.3 (RPP without KD) and +0.4 (RPP with KD) points over 3 seeds, within noise.
        ctx_init: words initialising the layer-0 text prompt (``"a photo of a"``); must tokenize to
            ``text_length`` tokens. ``None`` = N(0, 0.02).
        init_std: std of the normal prompt init.
        num_sampled_classes: K of POMP's local contrast: each step scores the label plus K-1 sampled
            classes (shared by the batch). Capped to the number of classes. Default 1000 (POMP).
        local_correction: POMP's adaptive margin: negatives get + log10(N-1) - log10(#valid negatives).
        kd_weight: lambda of the KD term (0 = the structure-only ablation, no teacher is loaded).
        kd_temperature: tau; the KD term is tau^2 * KL(p_teacher || p_student) with p = softmax(logits / tau).
        teacher: ``None`` = the same frozen backbone reading the hand-crafted ``templates``; or a
            ``BackboneSpec`` dict for another open_clip model (e.g. a larger CLIP).
        templates: hand-crafted templates (``{}`` = class name). The teacher uses their ensemble; so does a
            student whose text tower has no prompts.
        cache_image_features: cache frozen image features per dataset ``index``: the teacher's always,
            the student's when its vision tower has no prompts. Only valid when the training transform is
            deterministic (no random augmentation): leave False otherwise.
    """

    text_design: str = option("qkv", choices=("none", "coop", "shared", "qkv"))
    vision_design: str = option("qkv", choices=("none", "shared", "qkv"))
    text_length: int = option(4, minimum=0, maximum=MAX_PROMPT_LENGTH)
    vision_length: int = option(4, minimum=0, maximum=MAX_PROMPT_LENGTH)
    text_depth: int | None = option(None, minimum=1)
    vision_depth: int | None = option(None, minimum=1)
    carry: str = option("add", choices=CARRY_MODES)
    ctx_init: str | None = None
    init_std: float = option(0.02, minimum=0.0, exclusive_minimum=True)
    num_sampled_classes: int = option(1000, minimum=2)
    local_correction: bool = option(True)
    kd_weight: float = option(1.0, minimum=0.0)
    kd_temperature: float = option(1.0, minimum=0.0, exclusive_minimum=True)
    teacher: dict[str, Any] | None = dataclasses.field(
        default=None, metadata={"backbone_family": "open_clip"}
    )
    templates: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    cache_image_features: bool = option(False)

    # The service's compact request fields (its REST contract since v1): one design, length and depth
    # for every prompted tower. ``coop`` is POMP's shallow text context alone (no vision prompts).
    shorthands: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "design": {
            "enum": list(SHORTHAND_DESIGNS),
            "description": "both towers' prompt design (sets text_design and vision_design); "
            "coop = a shallow text context alone",
        },
        "n_ctx": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_PROMPT_LENGTH,
            "description": "prompt tokens in every prompted tower (sets text_length / vision_length)",
        },
        "depth": {
            "type": ["integer", "null"],
            "minimum": 1,
            "description": "prompted blocks in every prompted tower (sets text_depth / vision_depth)",
        },
    }

    @classmethod
    def expand_shorthands(cls, values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        out = {k: v for k, v in values.items() if k not in cls.shorthands}
        origin: dict[str, str] = {}

        def put(shorthand: str, field: str, value: Any) -> None:
            if field in values:
                raise ConfigError(shorthand, f"give either {shorthand} or {field}, not both")
            out[field] = value
            origin[field] = shorthand

        design = values.get("design", "qkv")
        if design not in SHORTHAND_DESIGNS:
            choices = ", ".join(map(repr, SHORTHAND_DESIGNS))
            raise ConfigError("design", f"must be one of {choices}, got {design!r}")
        towers = ("text",) if design == "coop" else ("text", "vision")
        if "design" in values:
            put("design", "text_design", design)
            put("design", "vision_design", "none" if design == "coop" else design)
        for shorthand, suffix in (("n_ctx", "length"), ("depth", "depth")):
            if shorthand in values:
                for tower in towers:
                    put(shorthand, f"{tower}_{suffix}", values[shorthand])
        return out, origin

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.text_design == "coop" and self.text_depth not in (None, 1):
            raise ConfigError("text_depth", "coop is a shallow (layer-0) context: depth must be 1 or null")
        if self.ctx_init is not None:
            if not isinstance(self.ctx_init, str) or not self.ctx_init.strip():
                raise ConfigError("ctx_init", "must be non-empty words or null")
            if self.text_design == "none" or self.text_length == 0:
                raise ConfigError("ctx_init", "needs text prompts (text_design != 'none', text_length > 0)")
        if self.teacher is not None:
            if not isinstance(self.teacher, dict):
                raise ConfigError("teacher", "must be a backbone spec object or null")
            try:
                spec = BackboneSpec.from_dict(self.teacher)
            except ConfigError as exc:
                raise ConfigError(f"teacher.{exc.field}", exc.message.split(": ", 1)[-1]) from exc
            if spec.family != "open_clip":
                raise ConfigError("teacher.family", "the teacher must be an open_clip CLIP model")
            self.teacher = spec.to_dict()
        if isinstance(self.templates, tuple):
            self.templates = list(self.templates)
        if not isinstance(self.templates, list) or not self.templates:
            raise ConfigError("templates", "must be a non-empty list of strings containing '{}'")
        if len(self.templates) > MAX_TEMPLATES:
            raise ConfigError("templates", f"at most {MAX_TEMPLATES} templates")
        for template in self.templates:
            if not isinstance(template, str) or template.count("{}") != 1:
                raise ConfigError(
                    "templates", f"each template must contain '{{}}' exactly once, got {template!r}"
                )

    def text_tower(self) -> PromptTowerConfig:
        return PromptTowerConfig(
            design=self.text_design,
            length=self.text_length,
            depth=self.text_depth,
            carry=self.carry,
            init_std=self.init_std,
            init_words=self.ctx_init,
        )

    def vision_tower(self) -> PromptTowerConfig:
        return PromptTowerConfig(
            design=self.vision_design,
            length=self.vision_length,
            depth=self.vision_depth,
            carry=self.carry,
            init_std=self.init_std,
        )
