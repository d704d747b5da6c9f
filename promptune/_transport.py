"""HTTP with retries: exponential backoff with jitter, ``Retry-After`` honoured, errors mapped to types.

The retry rule (docs/sdk.md): a failed request is tried again, at most ``max_retries`` times, when
- the connection could not be made (nothing reached the server), whatever the request; or
- the request is safe to repeat and the failure is a broken connection, a timeout, or a 429, 502, 503 or
  504 answer. Safe to repeat: GET, HEAD, OPTIONS, PUT and DELETE; a POST that carries an
  ``Idempotency-Key`` (uploads and job creation always do); and the prediction POSTs, which change nothing.
A POST without a key (e.g. cancelling a job) is never sent twice.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from promptune._errors import APIConnectionError, APIError, APITimeoutError, error_class
from promptune._files import FilePart

log = logging.getLogger("promptune")

RETRY_STATUSES = frozenset({429, 502, 503, 504})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Connection failures in which the request never left this machine: always safe to retry.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
MAX_RETRY_AFTER = 60.0  # a longer Retry-After is not waited for: the error is raised instead


@dataclass(frozen=True)
class Backoff:
    """Delays between attempts: ``initial * 2**retry`` capped at ``maximum``, times a jitter in [0.5, 1]."""

    initial: float = 0.5
    maximum: float = 8.0

    def delay(self, retry: int) -> float:
        return min(self.maximum, self.initial * 2**retry) * random.uniform(0.5, 1.0)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number of seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def api_error(response: httpx.Response) -> APIError:
    """The typed error for an error response (its body read)."""
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    detail = body.get("error") if isinstance(body, dict) else None
    if not isinstance(detail, dict):
        detail = {
            "code": f"http_{response.status_code}",
            "message": response.text[:500] or response.reason_phrase,
        }
    return error_class(response.status_code)(
        response.status_code,
        str(detail.get("code") or f"http_{response.status_code}"),
        str(detail.get("message") or ""),
        detail.get("param"),
        response.headers.get("x-request-id"),
        parse_retry_after(response.headers.get("retry-after")),
        body,
    )


@dataclass
class Request:
    """What to send; files are opened afresh for every attempt, so a retried upload re-reads them."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    data: Mapping[str, str] | None = None
    files: Sequence[FilePart] = ()
    headers: Mapping[str, str] | None = None
    repeatable: bool = False  # safe to send again (see the module docstring), beyond SAFE_METHODS
    timeout: httpx.Timeout | None = None

    @property
    def retry_safe(self) -> bool:
        keyed = any(k.lower() == "idempotency-key" for k in (self.headers or {}))
        return self.repeatable or keyed or self.method.upper() in SAFE_METHODS


class Transport:
    def __init__(
        self,
        http: httpx.Client,
        *,
        max_retries: int,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.http, self.max_retries = http, max_retries
        self.backoff, self.sleep = backoff or Backoff(), sleep

    def request(self, request: Request) -> httpx.Response:
        """Send with retries; returns a successful (2xx/3xx) response with its body read (a connection
        that breaks while the body arrives counts as a failed attempt)."""
        with self.stream(request, read_body=True) as response:
            return response

    @contextlib.contextmanager
    def stream(self, request: Request, *, read_body: bool = False) -> Iterator[httpx.Response]:
        """Send with retries; yields the successful response, its body unread unless ``read_body``.

        Errors while the caller reads a streamed body are the caller's to handle (httpx.TransportError).
        """
        retry = 0
        while True:
            with contextlib.ExitStack() as files:
                try:
                    response = self._send(request, files, read_body)
                except httpx.TransportError as exc:
                    if retry < self.max_retries and (request.retry_safe or isinstance(exc, _NOT_SENT)):
                        self._wait(request, retry, None, type(exc).__name__)
                        retry += 1
                        continue
                    raise _transport_error(exc) from exc
                try:
                    if response.status_code < 400:
                        yield response
                        return
                    response.read()
                finally:
                    response.close()
            error = api_error(response)
            if not (retry < self.max_retries and request.retry_safe and error.status in RETRY_STATUSES):
                raise error
            if error.retry_after is not None and error.retry_after > MAX_RETRY_AFTER:
                raise error
            self._wait(request, retry, error.retry_after, f"{error.status} {error.code}")
            retry += 1

    def _send(self, request: Request, files: contextlib.ExitStack, read_body: bool) -> httpx.Response:
        opened = [(part.field, files.enter_context(part.open())) for part in request.files]
        built = self.http.build_request(
            request.method,
            request.path,
            params=request.params,
            json=request.json,
            data=request.data,
            files=opened or None,
            headers=request.headers,
            timeout=request.timeout if request.timeout is not None else httpx.USE_CLIENT_DEFAULT,
        )
        return self.http.send(built, stream=not read_body)

    def _wait(self, request: Request, retry: int, retry_after: float | None, reason: str) -> None:
        delay = retry_after if retry_after is not None else self.backoff.delay(retry)
        log.info(
            "retrying %s %s in %.2f s (retry %d of %d): %s",
            request.method,
            request.path,
            delay,
            retry + 1,
            self.max_retries,
            reason,
            extra={"promptune_retry_delay": delay, "promptune_retry_reason": reason},
        )
        self.sleep(delay)


def _transport_error(exc: httpx.TransportError) -> APIConnectionError:
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"request timed out: {exc}")
    return APIConnectionError(f"connection failed: {exc}")
