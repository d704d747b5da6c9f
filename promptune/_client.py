"""The Client: configuration, the HTTP connection pool, and the resources."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import httpx

from promptune._errors import PromptuneError
from promptune._files import FilePart
from promptune._transport import Backoff, Request, Transport
from promptune._types import Prediction
from promptune._version import __version__
from promptune.resources.catalogue import Backbones, Methods
from promptune.resources.datasets import Datasets
from promptune.resources.jobs import Jobs
from promptune.resources.models import Models
from promptune.resources.predict import Predict

DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 2
DEFAULT_MAX_PREDICT_IMAGES = 64  # the server's PROMPTUNE_MAX_PREDICT_IMAGES default
# Uploads and event streams may stay quiet for long: the server ingests a large upload before it answers,
# and an event stream sends a keep-alive only every 15 s.
UPLOAD_READ_TIMEOUT = 600.0
STREAM_READ_TIMEOUT = 45.0


class Client:
    """A Promptune API client.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:8000`` (default: ``PROMPTUNE_BASE_URL``).
        api_key: the tenant's key (default: ``PROMPTUNE_API_KEY``).
        timeout: seconds for connecting and for each read (uploads and event streams allow longer reads).
        max_retries: retries of a failed request (docs/sdk.md, "Retries", says which requests).
        max_predict_images: images per prediction request; larger batches are split (the server's
            ``PROMPTUNE_MAX_PREDICT_IMAGES``).
        max_reconnects: consecutive reconnections of an event stream before giving up.
        http_client: an ``httpx.Client`` to use instead of the client's own (its base URL and headers are
            set here; closing it stays with the caller).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_predict_images: int = DEFAULT_MAX_PREDICT_IMAGES,
        max_reconnects: int = 5,
        backoff: Backoff | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        base_url = base_url or os.environ.get("PROMPTUNE_BASE_URL")
        api_key = api_key or os.environ.get("PROMPTUNE_API_KEY")
        if not base_url:
            raise PromptuneError(
                "no server given: pass base_url= (or --base-url) or set PROMPTUNE_BASE_URL",
                code="missing_base_url",
            )
        if not api_key:
            raise PromptuneError(
                "no API key given: pass api_key= (or --api-key) or set PROMPTUNE_API_KEY",
                code="missing_api_key",
            )
        if max_predict_images < 1 or max_retries < 0:
            raise ValueError("max_predict_images must be at least 1 and max_retries at least 0")
        self.base_url = base_url.rstrip("/")
        self.max_predict_images, self.max_reconnects = max_predict_images, max_reconnects
        self._upload_timeout = httpx.Timeout(timeout, read=max(timeout, UPLOAD_READ_TIMEOUT))
        self._stream_read_timeout = max(timeout, STREAM_READ_TIMEOUT)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=timeout)
        self._http.base_url = httpx.URL(self.base_url)
        self._http.headers.update(
            {"Authorization": f"Bearer {api_key}", "User-Agent": f"promptune-python/{__version__}"}
        )
        self._transport = Transport(self._http, max_retries=max_retries, backoff=backoff)
        self.datasets = Datasets(self)
        self.jobs = Jobs(self)
        self.models = Models(self)
        self.predict = Predict(self)
        self.backbones = Backbones(self)
        self.methods = Methods(self)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(base_url={self.base_url!r})"

    def _predict_batches(self, path: str, parts: list[FilePart], form: Mapping[str, Any]) -> list[Prediction]:
        """Predictions for ``parts`` in order, ``max_predict_images`` per request.

        The prediction POSTs change nothing on the server, so they are retried like GETs (a 503 from a
        full queue says to come back after ``Retry-After``).
        """
        data = {name: str(value) for name, value in form.items()}
        predictions: list[Prediction] = []
        for start in range(0, len(parts), self.max_predict_images):
            batch = parts[start : start + self.max_predict_images]
            request = Request("POST", path, data=data, files=batch, repeatable=True)
            body = self._transport.request(request).json()
            predictions += [Prediction.from_json(p) for p in body["predictions"]]
        return predictions
