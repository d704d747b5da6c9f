"""The web console's static files: content types, security headers on every response, no way out of the folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.errors import ApiError
from app.api.routes import console
from tests.api.test_datasets import assert_error

FILES = {
    "index.html": (b"<!doctype html><title>t</title>", "text/html; charset=utf-8"),
    "js/app.js": (b"export const x = 1;\n", "text/javascript; charset=utf-8"),
    "js/app.js.map": (b"{}", "application/json; charset=utf-8"),
    "css/site.css": (b"body { margin: 0 }\n", "text/css; charset=utf-8"),
    "img/logo.svg": (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
    "img/logo.png": (b"\x89PNG\r\n\x1a\n", "image/png"),
    "favicon.ico": (b"\x00\x00\x01\x00", "image/x-icon"),
    "robots.txt": (b"User-agent: *\n", "text/plain; charset=utf-8"),
}
SECRET = b"SECRET-OUTSIDE-THE-CONSOLE"


@pytest.fixture
def static_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A console folder of our own with one file per served suffix, and files beside it that must stay private."""
    root = tmp_path / "console" / "static"
    for name, (data, _) in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "notes.py").write_bytes(b"print('not served')")
    (root / "js" / ".hidden.js").write_bytes(b"hidden")
    (tmp_path / "console" / "secret.js").write_bytes(SECRET)
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (root / "js" / "leak.js").symlink_to(tmp_path / "secret.txt")
    monkeypatch.setattr(console, "STATIC_DIR", root.resolve())
    return root


def assert_security_headers(response) -> None:
    for name, value in console.SECURITY_HEADERS.items():
        assert response.headers[name] == value, (name, response.request.url)
    csp = response.headers["content-security-policy"]
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp and "http" not in csp


def test_static_files_have_their_content_types_and_security_headers(
    client: TestClient, static_dir: Path
) -> None:
    for name, (data, content_type) in FILES.items():
        response = client.get(f"/console/static/{name}")
        assert response.status_code == 200, (name, response.text)
        assert response.headers["content-type"] == content_type, name
        assert response.content == data
        assert_security_headers(response)


def test_index_is_served_at_console_and_console_slash(client: TestClient, static_dir: Path) -> None:
    for path in ("/console", "/console/"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        assert response.content == FILES["index.html"][0]
        assert_security_headers(response)


def test_root_redirects_to_the_console(client: TestClient) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == "/console/"
    assert_security_headers(response)


def test_unchanged_files_answer_304(client: TestClient, static_dir: Path) -> None:
    first = client.get("/console/static/js/app.js")
    again = client.get("/console/static/js/app.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert_security_headers(again)
    (static_dir / "js" / "app.js").write_bytes(b"export const x = 2; // a new deployment\n")
    changed = client.get("/console/static/js/app.js", headers={"If-None-Match": first.headers["etag"]})
    assert changed.status_code == 200 and b"x = 2" in changed.content


@pytest.mark.parametrize(
    "path",
    [
        "/console/static/../../main.py",
        "/console/static/..%2f..%2fsecret.txt",
        "/console/static/%2e%2e/secret.js",
        "/console/static/%2e%2e%2fsecret.js",
        "/console/static/js/%2e%2e/%2e%2e/%2e%2e/secret.txt",
        "/console/static//etc/passwd",
        "/console/static/%2fetc%2fpasswd",
        f"/console/static/{Path(__file__).resolve()}",
        "/console/static/js/leak.js",  # a symlink leading out of the folder
        "/console/static/js/.hidden.js",
        "/console/static/notes.py",  # an unknown suffix
        "/console/static/missing.js",
        "/console/static/js",  # a folder
        "/console/static/",
        "/console/static/js%00.js",
        "/console/static/js%5c..%5c..%5csecret.txt",
    ],
)
def test_nothing_outside_the_folder_or_of_another_type_is_served(
    client: TestClient, static_dir: Path, path: str
) -> None:
    response = client.get(path)
    assert response.status_code == 404, (path, response.text)
    assert SECRET not in response.content and b"not served" not in response.content
    assert_error(response, 404, "not_found")
    if (
        path.startswith("/console/static/")
        and response.json()["error"]["message"] == "console file not found"
    ):
        assert_security_headers(response)


@pytest.mark.parametrize(
    "path",
    ["../secret.js", "../../secret.txt", "/etc/passwd", "js/../../secret.js", "js/leak.js", "", "a\x00.js"],
)
def test_resolve_static_refuses_every_way_out(static_dir: Path, path: str) -> None:
    with pytest.raises(ApiError) as refused:
        console.resolve_static(path)
    assert refused.value.status_code == 404


def test_resolve_static_finds_files_inside(static_dir: Path) -> None:
    assert console.resolve_static("js/../css/site.css") == (static_dir / "css" / "site.css").resolve()


def test_the_shipped_console_page_is_served(client: TestClient) -> None:
    """The real folder (no monkeypatch): the page loads its ES module from /console/static."""
    response = client.get("/console/")
    assert response.status_code == 200, response.text
    assert '<script type="module" src="/console/static/js/app.js">' in response.text
    assert_security_headers(response)


def test_console_routes_are_not_in_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/console")]
