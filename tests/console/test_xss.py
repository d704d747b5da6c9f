"""Hostile names through the console: a class folder and a dataset name that are HTML/script payloads are
shown as text, run nothing, and trip no CSP violation; a static check that the console's scripts never use
an HTML sink and its page has no inline script, style or handler."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.console.conftest import new_page, shot, sign_in
from tests.e2e.conftest import Stack

STATIC = Path(__file__).resolve().parents[2] / "app" / "console" / "static"
CLASS_PAYLOAD = "<img src=x onerror=window.__pwned=1>"
NAME_PAYLOAD = "<script>window.__pwned=2</script><b>bold</b>"
# Assigning HTML strings, or evaluating strings as code: none of these may appear in the console's JS.
HTML_SINKS = re.compile(
    r"\.innerHTML\b|\.outerHTML\b|insertAdjacentHTML|document\.write|\beval\s*\(|new\s+Function\b|"
    r"createContextualFragment|DOMParser|srcdoc"
)


def _payload_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for label, shade in ((CLASS_PAYLOAD, 40), ("plain", 200)):
            for i in range(4):
                buffer = io.BytesIO()
                Image.new("RGB", (16, 16), (shade, i * 40, 0)).save(buffer, "PNG")
                zf.writestr(f"train/{label}/{i}.png", buffer.getvalue())
    return path


@pytest.mark.services
@pytest.mark.browser
def test_hostile_names_are_text(browser: Any, stack: Stack, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    context, page, problems = new_page(browser)
    sign_in(page, stack.base_url, stack.key)
    page.set_input_files("#upload-zip", str(_payload_zip(tmp_path / "payload.zip")))
    page.fill("#dataset-name", NAME_PAYLOAD)
    page.click("form[data-testid=upload-form] button[type=submit]")
    expect(page.get_by_test_id("upload-done")).to_contain_text(NAME_PAYLOAD)
    expect(page.get_by_test_id("datasets-table")).to_contain_text(NAME_PAYLOAD)
    page.get_by_test_id("uploaded-link").click()
    expect(page.get_by_test_id("dataset-name")).to_have_text(NAME_PAYLOAD)
    class_cells = page.get_by_test_id("class-counts").locator("th.class-name")
    expect(class_cells).to_have_text([CLASS_PAYLOAD, "plain"])
    expect(page.locator("[data-testid=thumbnails] h3")).to_have_text([CLASS_PAYLOAD, "plain"])
    expect(page.locator("img.thumb[data-loaded=true]")).to_have_count(6)
    # The payload's markup never became elements: no <img src=x>, no <script>, no <b> from the name.
    assert page.locator("img[src=x]").count() == 0
    assert page.locator("main script, main b").count() == 0
    shot(page, "09-hostile-names")
    # The job form lists the dataset by name as an <option>'s text.
    page.goto(f"{stack.base_url}/console/#/jobs/new")
    expect(page.locator("#job-dataset option").filter(has_text=NAME_PAYLOAD)).to_have_count(1)
    assert page.evaluate("window.__pwned") is None
    # Delete takes two steps: ask, then confirm.
    page.go_back()
    expect(page.get_by_test_id("dataset-name")).to_have_text(NAME_PAYLOAD)
    page.get_by_test_id("delete-dataset").click()
    expect(page.get_by_test_id("delete-dataset")).to_be_hidden()
    page.get_by_test_id("confirm-yes").click()
    expect(page.locator("h1")).to_have_text("Datasets")
    expect(page.get_by_test_id("datasets-table")).not_to_contain_text(NAME_PAYLOAD)
    assert page.evaluate("window.__pwned") is None
    problems.check()
    context.close()


def test_console_scripts_use_no_html_sinks() -> None:
    scripts = sorted(STATIC.rglob("*.js"))
    assert scripts, "no console scripts found"
    offenders = [
        f"{path.relative_to(STATIC)}:{number}: {line.strip()}"
        for path in scripts
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if HTML_SINKS.search(line)
    ]
    assert not offenders, "HTML sinks in the console's JS:\n" + "\n".join(offenders)


def test_console_page_has_no_inline_code_or_style() -> None:
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert re.search(r'\bsrc="/console/static/', tag), f"inline or foreign script: {tag}"
    assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html), "a script element with inline code"
    assert not re.search(r"\sstyle\s*=", html), "an inline style attribute"
    assert "<style" not in html, "an inline <style> element"
    assert not re.search(r"\son[a-z]+\s*=", html, re.IGNORECASE), "an inline event handler attribute"
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "a third-party origin"


def test_console_modules_stay_small() -> None:
    """Each module stays readable at a sitting (the brief: about 400 lines at most)."""
    for path in STATIC.rglob("*.js"):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines <= 400, f"{path.relative_to(STATIC)} has {lines} lines"
