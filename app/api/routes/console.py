"""The web console: static files served by the API itself, under ``/console`` (no auth: files only).

The console is a static page whose scripts call the /v1 API with the key the user types in, so serving it
needs no credentials and reads nothing of any tenant. Only files under ``app/console/static/`` with a known
suffix are served; a path that resolves outside that folder (``..``, ``%2e%2e``, an absolute path, a
symlink leading out) is 404, like a missing file. Every response, errors included, carries
:data:`SECURITY_HEADERS`.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, RedirectResponse

from app.api.errors import ApiError

STATIC_DIR = (Path(__file__).resolve().parents[2] / "console" / "static").resolve()
INDEX_FILE = "index.html"

# The one home of the console's Content-Security-Policy. Why each directive:
# - default-src 'none': anything not listed below is refused (objects, media, workers, manifests...).
# - script-src 'self': our own ES modules only; no inline script, no eval, no third-party CDN, so an
#   injected string (a dataset or class name rendered by mistake as HTML) cannot run code.
# - style-src 'self': our stylesheets only; no inline styles (CSS can exfiltrate through selectors).
# - img-src 'self' blob: data:: thumbnails come from our API, but the console draws them from blob: URLs
#   (it fetches them with the Authorization header, which an <img src> cannot send); data: for small
#   inline icons.
# - connect-src 'self': fetch() reaches this API only, so a key typed into the console never leaves it.
# - font-src 'self': no web-font origins.
# - base-uri 'none': an injected <base> cannot redirect our relative URLs.
# - form-action 'self': a form can only post back here.
# - frame-ancestors 'none': no other site may frame the console (clickjacking); X-Frame-Options below is
#   the same rule for older browsers.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",  # a .txt is never run as a script, whatever its bytes
    "Referrer-Policy": "no-referrer",  # console URLs never leak to links followed from it
    "X-Frame-Options": "DENY",
    # Revalidate every time (an ETag answers 304 when unchanged), so a deployment's new files load at once.
    "Cache-Control": "no-cache",
}

# Suffix -> Content-Type. `.js` must be text/javascript: browsers refuse ES modules of other types
# (with nosniff, strictly).
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".map": "application/json; charset=utf-8",
}

router = APIRouter(tags=["console"], include_in_schema=False)


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "console file not found", headers=dict(SECURITY_HEADERS))


def resolve_static(path: str, root: Path | None = None) -> Path:
    """The file ``path`` names under ``root`` (default :data:`STATIC_DIR`), or 404.

    404 when it resolves outside ``root``, is not a file, is hidden or has an unknown suffix.

    security: the path is resolved (``..`` and symlinks followed) and must stay inside ``root``; the check
    is on the resolved path, so every spelling of a traversal (encoded, doubled slashes, absolute) is
    refused the same way.
    """
    if not path or "\x00" in path or "\\" in path:
        raise _not_found()
    root = root or STATIC_DIR  # read at call time: tests point it at a folder of their own
    try:
        resolved = (root / path).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # missing, a symlink loop, an unusable name
        raise _not_found() from None
    if not resolved.is_relative_to(root) or not resolved.is_file():
        raise _not_found()
    hidden = any(part.startswith(".") for part in resolved.relative_to(root).parts)
    if hidden or resolved.suffix.lower() not in CONTENT_TYPES:
        raise _not_found()  # hidden files (editor swap files, .DS_Store) are never served
    return resolved


def _serve(request: Request, file: Path) -> Response:
    """The file with its type and the security headers; 304 when the browser's copy is current."""
    stat = os.stat(file)
    response = FileResponse(
        file, media_type=CONTENT_TYPES[file.suffix.lower()], headers=SECURITY_HEADERS, stat_result=stat
    )
    etag = response.headers["etag"]
    if etag in {tag.strip() for tag in request.headers.get("if-none-match", "").split(",")}:
        return Response(status_code=304, headers={**SECURITY_HEADERS, "ETag": etag})
    return response


@router.get("/", name="console_root")
def console_root() -> Response:
    return RedirectResponse("/console/", status_code=307, headers=SECURITY_HEADERS)


@router.get("/console", name="console_index")
@router.get("/console/", name="console_index_slash")
def console_index(request: Request) -> Response:
    return _serve(request, resolve_static(INDEX_FILE))


@router.get("/console/static/{path:path}", name="console_static")
def console_static(path: str, request: Request) -> Response:
    return _serve(request, resolve_static(path))
