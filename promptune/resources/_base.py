"""What every resource shares: its client's transport, JSON calls, pages and the default Idempotency-Key."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from promptune._transport import Request
from promptune._types import Page, parse_page

if TYPE_CHECKING:
    from promptune._client import Client

T = TypeVar("T")


def segment(value: str) -> str:
    """An id as one path segment (an id with a slash must not reach another route)."""
    if not value:
        raise ValueError("an id must not be empty")
    return quote(str(value), safe="")


def idempotency_headers(key: str | None) -> dict[str, str]:
    """A fresh key unless one is given: the same key is sent on every retry of this one call."""
    return {"Idempotency-Key": key or str(uuid.uuid4())}


def query(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


class Resource:
    def __init__(self, client: Client) -> None:
        self._client = client

    def _request(self, request: Request) -> Any:
        response = self._client._transport.request(request)
        return response.json() if response.content else None

    def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self._request(Request("GET", path, params=params))

    def _page(self, path: str, parse: Callable[[Mapping[str, Any]], T], params: dict[str, Any]) -> Page[T]:
        def fetch(cursor: str) -> Page[T]:
            return self._page(path, parse, {**params, "cursor": cursor})

        return parse_page(self._get(path, query(**params)), parse, fetch)

    @staticmethod
    def _all(page: Page[T]) -> Iterator[T]:
        return page.auto_paging_iter()
