"""client.backbones and client.methods: what the server can run (one page each: catalogues, not lists)."""

from __future__ import annotations

from promptune._types import Backbone, Method, Page
from promptune.resources._base import Resource, segment


class Backbones(Resource):
    def list(
        self, *, family: str | None = None, kind: str | None = None, available: bool | None = None
    ) -> Page[Backbone]:
        """The server's backbones (its file, the zoo, the built-in catalogue), with whether each can load
        now; ``available=True`` keeps those that can."""
        flag = None if available is None else str(available).lower()
        return self._page(
            "/v1/backbones", Backbone.from_json, {"family": family, "kind": kind, "available": flag}
        )

    def get(self, name: str) -> Backbone:
        return Backbone.from_json(self._get(f"/v1/backbones/{segment(name)}"))


class Methods(Resource):
    def list(self) -> Page[Method]:
        """The tuning methods, each with its family, capabilities and job config JSON Schema."""
        return self._page("/v1/methods", Method.from_json, {})

    def get(self, name: str) -> Method:
        return Method.from_json(self._get(f"/v1/methods/{segment(name)}"))
