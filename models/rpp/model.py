"""RPP: prompt pretraining of a frozen CLIP with unshared q/k/v prompts and teacher soft labels."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..backbones.spec import Backbone, BackboneSpec
from ..base import PromptMethod
from ..clip_prompting import PromptedCLIP
from ..clip_prompting.zeroshot import encode_in_chunks, template_text_features
from ..errors import ConfigError, DataError
from .config import RPPConfig
from .loss import (
    candidate_accuracy,
    kd_loss,
    local_contrast_logits,
    local_contrast_loss,
    sample_negative_classes,
)


class FeatureCache:
    """Frozen per-image features keyed by dataset ``index`` (valid only for deterministic transforms)."""

    def __init__(self) -> None:
        self._rows: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def clear(self) -> None:
        self._rows.clear()

    @torch.no_grad()
    def get_or_compute(self, indices: Sequence[int], images: torch.Tensor, compute: Any) -> torch.Tensor:
        """Rows for ``indices``; only the misses go through ``compute(images[misses])``."""
        missing = [i for i, key in enumerate(indices) if key not in self._rows]
        if missing:
            fresh = compute(images[missing]).detach()
            for row, i in enumerate(missing):
                self._rows[indices[i]] = fresh[row]
        return torch.stack([self._rows[key] for key in indices]).to(images.device)


class RPPModel(PromptMethod):
    """A frozen open_clip CLIP + prompts (``prompted.text_prompts``, ``prompted.vision_prompts``).

    ``forward(images)`` gives ``s * cos(image, class text)`` over ``class_names`` with the learned prompts.
    ``training_loss`` is POMP's local contrast (+ local correction) plus ``kd_weight`` x KD from the
    teacher's zero-shot probabilities over the same candidate classes.
    """

    config_cls = RPPConfig
    config: RPPConfig

    def __init__(
        self, backbone: Backbone, config: RPPConfig | Mapping[str, Any], class_names: Sequence[str]
    ) -> None:
        if isinstance(config, Mapping):
            config = RPPConfig.from_dict(config)
        if not isinstance(config, RPPConfig):
            raise ConfigError("config", f"RPP needs an RPPConfig, got {type(config).__name__}")
        super().__init__(backbone, config, class_names)
        if backbone.family != "open_clip":
            raise ConfigError("backbone", f"RPP runs on open_clip backbones, got family {backbone.family!r}")
        self._check_names(class_names)
        try:
            self.prompted = PromptedCLIP(
                backbone.model, config.text_tower(), config.vision_tower(), backbone.tokenizer
            )
        except ConfigError as exc:
            if exc.field != "text_init_words":
                raise
            raise ConfigError("ctx_init", exc.message.split(": ", 1)[-1]) from exc
        # Non-module state (kept out of state_dict / named_parameters): lazily loaded teacher and caches.
        self._teacher_backbone: Backbone | None = None
        self._names_version = 0
        self._tokens: tuple[int, torch.Tensor] | None = None
        self._text_cache: tuple[tuple[Any, ...], torch.Tensor] | None = None
        self._teacher_text: tuple[tuple[Any, ...], torch.Tensor] | None = None
        self._student_images = FeatureCache()
        self._teacher_images = FeatureCache()

    # ---- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _check_names(names: Iterable[Any]) -> None:
        names = list(names)
        if not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise DataError("class names must be a non-empty list of non-empty strings")

    @property
    def device(self) -> torch.device:
        device: torch.device = self.prompted.clip.logit_scale.device
        return device

    def _prompt_versions(self, module: torch.nn.Module | None) -> tuple[int, ...]:
        # Parameter._version increases with every in-place update (optimizer steps, load_state_dict),
        # so cached features are recomputed exactly when the prompts changed.
        return () if module is None else tuple(p._version for p in module.parameters())

    def _class_tokens(self) -> torch.Tensor:
        if self._tokens is None or self._tokens[0] != self._names_version:
            self._tokens = (self._names_version, self.prompted.tokenize(self.class_names))
        return self._tokens[1]

    def _uses_cache(self) -> bool:
        return self.config.cache_image_features

    # ---- text ------------------------------------------------------------------------------------
    def _student_text(self, class_ids: torch.Tensor) -> torch.Tensor:
        """Normalised student text features for ``class_ids`` (with grad through the text prompts)."""
        if self.prompted.text_prompted:
            tokens = self._class_tokens()[class_ids.cpu()]
            return encode_in_chunks(self.prompted.encode_text, tokens, self.device)
        return self.encode_text_features()[class_ids.to(self.device)]

    def encode_text_features(
        self, class_names: Sequence[str] | None = None, templates: Sequence[str] | None = None
    ) -> torch.Tensor:
        """(C, d) normalised text features with the learned text prompts (templates when it has none).

        Defaults to ``self.class_names`` (cached until the prompts or the class names change); other
        class lists are encoded without touching the method's state (zero-shot transfer).
        """
        own = class_names is None
        names = list(self.class_names if class_names is None else class_names)
        templates = list(templates or self.config.templates)
        text_prompts = self.prompted.text_prompts
        needs_grad = (
            torch.is_grad_enabled()
            and text_prompts is not None
            and any(p.requires_grad for p in text_prompts.parameters())
        )
        key = (self._names_version, tuple(templates), self._prompt_versions(text_prompts), str(self.device))
        if own and not needs_grad and self._text_cache is not None and self._text_cache[0] == key:
            return self._text_cache[1]
        if text_prompts is None:
            features = template_text_features(
                self.prompted.clip.encode_text,
                self.prompted.require_tokenizer(),
                names,
                templates,
                self.device,
            )
        else:
            tokens = self._class_tokens() if own else self.prompted.tokenize(names)
            with torch.set_grad_enabled(needs_grad):
                features = encode_in_chunks(self.prompted.encode_text, tokens, self.device)
        if own and not needs_grad:
            features = features.detach()
            self._text_cache = (key, features)
        return features

    # ---- image -----------------------------------------------------------------------------------
    def encode_image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image features with the learned vision prompts."""
        return self.prompted.encode_image(images.to(self.device))

    def _student_image(self, images: torch.Tensor, indices: list[int] | None) -> torch.Tensor:
        if self.prompted.vision_prompted or indices is None or not self._uses_cache():
            return self.encode_image_features(images)
        return self._student_images.get_or_compute(indices, images, self.encode_image_features)

    # ---- teacher ---------------------------------------------------------------------------------
    def _teacher(self) -> Backbone:
        if self.config.teacher is None:
            return self.backbone
        if self._teacher_backbone is None:
            from ..backbones.loader import load_backbone

            self._teacher_backbone = load_backbone(BackboneSpec.from_dict(self.config.teacher))
        teacher_model: Any = self._teacher_backbone.model
        if teacher_model.logit_scale.device != self.device:
            self._teacher_backbone.model.to(self.device)
        return self._teacher_backbone

    def _teacher_text_features(self) -> torch.Tensor:
        teacher = self._teacher()
        key = (self._names_version, tuple(self.config.templates), str(self.device))
        if self._teacher_text is None or self._teacher_text[0] != key:
            model: Any = teacher.model
            if teacher.tokenizer is None:
                raise ConfigError("teacher", "the teacher backbone has no tokenizer")
            features = template_text_features(
                model.encode_text,
                teacher.tokenizer,
                self.class_names,
                self.config.templates,
                self.device,
            )
            self._teacher_text = (key, features)
        return self._teacher_text[1]

    def _teacher_input(self, images: torch.Tensor, teacher: Backbone) -> torch.Tensor:
        """Re-express student-preprocessed images in the teacher's size and normalisation if they differ."""
        mine, theirs = self.backbone.preprocessing, teacher.preprocessing
        if (mine.image_size, mine.mean, mine.std) == (theirs.image_size, theirs.mean, theirs.std):
            return images

        def _stats(values: tuple[float, float, float]) -> torch.Tensor:
            return torch.tensor(values, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)

        raw = images * _stats(mine.std) + _stats(mine.mean)
        if theirs.image_size != mine.image_size:
            size = (theirs.image_size, theirs.image_size)
            raw = F.interpolate(raw, size=size, mode="bicubic", align_corners=False)
        return (raw - _stats(theirs.mean)) / _stats(theirs.std)

    @torch.no_grad()
    def _teacher_image(
        self, images: torch.Tensor, indices: list[int] | None, student_frozen: torch.Tensor | None
    ) -> torch.Tensor:
        if student_frozen is not None:  # same frozen CLIP, no vision prompts: identical features
            return student_frozen.detach()
        teacher = self._teacher()

        model: Any = teacher.model

        def compute(x: torch.Tensor) -> torch.Tensor:
            features: torch.Tensor = model.encode_image(self._teacher_input(x, teacher), normalize=True)
            return features

        if indices is None or not self._uses_cache():
            return compute(images)
        return self._teacher_images.get_or_compute(indices, images, compute)

    # ---- PromptMethod ----------------------------------------------------------------------------
    def prepare(self, train_data: Any, *, seed: int) -> None:
        names = getattr(train_data, "class_names", None)
        if names is not None and list(names) != self.class_names:
            raise DataError("the training data's class names differ from the method's class names")
        if self.config.kd_weight > 0:
            self._teacher_text_features()

    def training_loss(
        self, batch: Mapping[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        device = self.device
        images = batch["image"].to(device)
        labels = torch.as_tensor(batch["label"]).to(device=device, dtype=torch.long)
        index = batch.get("index")
        indices = [int(i) for i in torch.as_tensor(index).tolist()] if index is not None else None
        num_classes = len(self.class_names)
        if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise DataError(f"labels must lie in [0, {num_classes})")

        negative_ids = sample_negative_classes(num_classes, cfg.num_sampled_classes, generator).to(device)
        image_features = self._student_image(images, indices)
        candidates = torch.cat([labels, negative_ids])
        unique_ids, inverse = torch.unique(candidates, return_inverse=True)
        text = self._student_text(unique_ids)  # only the batch labels + sampled classes are encoded
        batch_size = labels.shape[0]
        scale = self.prompted.logit_scale()
        logits = local_contrast_logits(
            image_features,
            text[inverse[:batch_size]],
            text[inverse[batch_size:]],
            labels,
            negative_ids,
            scale,
            num_classes=num_classes,
            local_correction=cfg.local_correction,
        )
        ce = local_contrast_loss(logits)
        logs = {"ce": float(ce.detach()), "acc": float(candidate_accuracy(logits.detach()))}
        loss = ce
        if cfg.kd_weight > 0:
            with torch.no_grad():
                same_teacher = cfg.teacher is None and not self.prompted.vision_prompted
                teacher_images = self._teacher_image(
                    images, indices, image_features if same_teacher else None
                )
                teacher_text = self._teacher_text_features()
                teacher_model: Any = self._teacher().model
                teacher_scale = teacher_model.logit_scale.exp()
                teacher_logits = local_contrast_logits(
                    teacher_images.float(),
                    teacher_text[labels],
                    teacher_text[negative_ids],
                    labels,
                    negative_ids,
                    teacher_scale,
                    num_classes=num_classes,
                    local_correction=cfg.local_correction,
                )
            kd = kd_loss(logits, teacher_logits, cfg.kd_temperature)
            loss = ce + cfg.kd_weight * kd
            logs["kd"] = float(kd.detach())
        logs["loss"] = float(loss.detach())
        return loss, logs

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        image_features = self.encode_image_features(images)
        text_features = self.encode_text_features()
        return self.prompted.logit_scale() * image_features @ text_features.t().to(image_features.dtype)

    # ---- zero-shot transfer / metadata -------------------------------------------------------------
    def set_class_names(self, names: Sequence[str]) -> None:
        """Re-target the method to another class list (zero-shot transfer); clears every cache."""
        self._check_names(names)
        self.class_names = list(names)
        self._names_version += 1
        self._tokens = None
        self._text_cache = None
        self._teacher_text = None
        self._student_images.clear()
        self._teacher_images.clear()

    def metadata(self) -> dict[str, Any]:
        text, vision = self.prompted.text_prompts, self.prompted.vision_prompts
        return {
            "templates": list(self.config.templates),
            "text_design": self.config.text_design if text is not None else "none",
            "vision_design": self.config.vision_design if vision is not None else "none",
            "text_length": text.length if text is not None else 0,
            "vision_length": vision.length if vision is not None else 0,
            "text_depth": text.depth if text is not None else 0,
            "vision_depth": vision.depth if vision is not None else 0,
            "carry": self.config.carry,
            "text_prompt_format": self.prompted.prompt_template() if text is not None else None,
            "ctx_init": self.config.ctx_init,
            "teacher": self.config.teacher,
            "kd_weight": self.config.kd_weight,
            "kd_temperature": self.config.kd_temperature,
            "num_sampled_classes": self.config.num_sampled_classes,
            "local_correction": self.config.local_correction,
            "logit_scale": float(self.prompted.logit_scale().detach()),
        }
