"""One error shape for every 4xx/5xx: ``{"error": {"code", "message", "param"}}`` (OpenAI's convention).

FastAPI's own validation errors and Starlette's 404/405 are rewritten into it; unexpected exceptions
become a plain 500 ``internal`` (logged server-side, never a traceback in the body).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.errors import ServiceError

log = logging.getLogger("promptune.api")

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
}


_RESPONSE_DESCRIPTIONS = {
    400: "malformed request body",
    401: "missing, malformed or revoked API key",
    404: "no such object for this tenant",
    409: "the object's state does not allow this",
    413: "request body or a file in it is too large",
    415: "wrong request content type",
    422: "invalid request",
    429: "too many jobs",
    503: "a dependency (e.g. backbone weights) is unavailable",
}


def error_responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` documenting our error body for each status code (routers and routes)."""
    from app.schemas import ErrorResponse

    return {
        code: {"model": ErrorResponse, "description": _RESPONSE_DESCRIPTIONS[code]} for code in status_codes
    }


class ApiError(ServiceError):
    """A :class:`ServiceError` with its HTTP status; raised by routes and dependencies, rendered by
    :func:`install_error_handlers`."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(code, message, param)
        self.status_code = status_code
        self.headers = headers


def not_found(what: str, param: str | None = None) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found", param=param)


def error_body(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "param": param}}


def error_response(
    status_code: int, code: str, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message, param), status_code=status_code, headers=headers)


def _validation_param(loc: Any) -> str | None:
    # ("body", "config", "epochs") -> "config.epochs"; drop the location prefix.
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "cookie")]
    return ".".join(parts) or None


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.code, exc.message, exc.param, exc.headers)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, None, dict(exc.headers or {}) or None)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = _validation_param(first.get("loc", ()))
    message = str(first.get("msg", "invalid request"))
    if param:
        message = f"{param}: {message}"
    return error_response(422, "invalid_request", message, param)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unhandled)
