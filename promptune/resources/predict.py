"""client.predict: zero-shot classification with an open_clip backbone (POST /v1/predict/zero-shot)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from promptune._files import ImageInput, image_parts
from promptune._types import Prediction
from promptune.resources._base import Resource, query


class Predict(Resource):
    def zero_shot(
        self,
        images: ImageInput | Iterable[ImageInput],
        classes: Sequence[str],
        *,
        templates: Sequence[str] | None = None,
        backbone: str | None = None,
        model_id: str | None = None,
        top_k: int | None = None,
    ) -> list[Prediction]:
        """Classify images among arbitrary class names, one Prediction each, in order.

        ``templates``: prompts with ``{}`` once each (default: the server's); ``backbone``: an open_clip
        backbone (default: the server's); ``model_id``: a model of a zero-shot method (e.g. rpp) whose
        learned prompts classify.
        """
        if isinstance(classes, str):
            raise TypeError("classes must be a list of class names, not one string")
        form = query(
            classes=json.dumps(list(classes)),
            templates=None if templates is None else json.dumps(list(templates)),
            backbone=backbone,
            model_id=model_id,
            top_k=top_k,
        )
        return self._client._predict_batches("/v1/predict/zero-shot", image_parts(images), form)
