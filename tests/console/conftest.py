"""Browser tests of the web console against the real stack (uvicorn API, Redis, a Celery worker, SQLite).

Chromium comes from the system (Debian's ``chromium``; ``PROMPTUNE_CHROMIUM`` overrides the path) and is
driven by Playwright's Python package. Every page records its page errors, console errors and CSP
violations; a test fails on any of them (a 4xx the console shows on purpose is logged by Chromium as
"Failed to load resource", which is expected and not counted).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.stack import Proc
from tests.e2e.conftest import Stack, stack  # noqa: F401 - pytest fixture
from tests.services import redis_server  # noqa: F401 - pytest fixture

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
# Runs before any page script: collects CSP violations (the page's own scripts cannot hide them).
CSP_LISTENER = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(e.violatedDirective + ' ' + (e.blockedURI || ''));
});
"""


def chromium_path() -> str:
    return os.environ.get("PROMPTUNE_CHROMIUM") or shutil.which("chromium") or DEFAULT_CHROMIUM


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Module scope, not session: Playwright's sync API runs an event loop on this thread while it is
    # open, and the suite's later asyncio.run() calls (tests/serving, tests/reliability) refuse to start
    # inside it.
    path = chromium_path()
    if not Path(path).is_file():
        missing = f"no Chromium at {path} (install Debian's chromium or set PROMPTUNE_CHROMIUM)"
        if os.environ.get("PROMPTUNE_SETUP_BROWSER") == "1":  # scripts/test.sh (CI) installed it: must run
            pytest.fail(missing)
        pytest.skip(missing)
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Iterator[Proc]:  # noqa: F811
    proc = stack.start_worker("console")
    yield proc
    proc.stop()


class PageProblems:
    """Page errors, console errors and CSP violations seen by one page."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if message.type not in ("error", "warning"):
            return
        text = message.text
        if message.type == "error" and text.startswith("Failed to load resource"):
            return  # a 4xx the console handles (a wrong key, a missing model) is logged this way by Chromium
        if message.type == "warning" and "Content Security Policy" not in text:
            return
        self.errors.append(f"console {message.type}: {text}")

    def check(self) -> None:
        violations = self.page.evaluate("window.__cspViolations || []")
        assert not violations, f"CSP violations: {violations}"
        assert not self.errors, "\n".join(self.errors)


def new_page(browser: Any, *, width: int = 1280, height: int = 900) -> tuple[Any, Any, PageProblems]:
    context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
    context.add_init_script(CSP_LISTENER)
    page = context.new_page()
    return context, page, PageProblems(page)


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page: Any, base_url: str, key: str) -> None:
    from playwright.sync_api import expect

    page.goto(f"{base_url}/console/")
    page.fill("#api-key", key)
    page.click("form[data-testid=signin-form] button[type=submit]")
    expect(page.locator("#sign-out")).to_be_visible()
    expect(page.locator("h1")).to_have_text("Datasets")
