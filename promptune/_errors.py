"""The SDK's exceptions: one base, API errors by HTTP status, and the two transport failures.

Every API error carries the server's ``{"error": {"code", "message", "param"}}`` fields, the HTTP status and
the ``X-Request-ID`` when the server sent one, so a caller can branch on ``code`` rather than on text.
"""

from __future__ import annotations

from typing import Any


class PromptuneError(Exception):
    """The base of every error this package raises; ``code`` is a machine-readable name."""

    code = "client_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class APIConnectionError(PromptuneError):
    """The server could not be reached, or the connection broke before an answer came (after retries)."""

    code = "connection_error"


class APITimeoutError(APIConnectionError):
    """The request timed out (after retries)."""

    code = "timeout"


class APIError(PromptuneError):
    """The server answered with an error status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message, code=code)
        self.status, self.param, self.request_id = status, param, request_id
        self.retry_after, self.body = retry_after, body

    def __str__(self) -> str:
        param = f" (param {self.param})" if self.param else ""
        return f"{self.status} {self.code}: {self.message}{param}"


class BadRequestError(APIError):
    pass


class AuthenticationError(APIError):
    pass


class PermissionDeniedError(APIError):
    pass


class NotFoundError(APIError):
    pass


class ConflictError(APIError):
    pass


class PayloadTooLargeError(APIError):
    pass


class UnsupportedMediaTypeError(APIError):
    pass


class UnprocessableEntityError(APIError):
    pass


class RateLimitError(APIError):
    pass


class InternalServerError(APIError):
    pass


class ServiceUnavailableError(APIError):
    pass


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def error_class(status: int) -> type[APIError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return InternalServerError if status >= 500 else APIError
