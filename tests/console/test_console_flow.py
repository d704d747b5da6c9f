"""The console end to end in Chromium: sign in, upload the digits, train SPT from the generated form, watch
it live, read the model's report, predict in the playground; plus another tenant's view and sign-out."""

from __future__ import annotations

import base64
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest

from app.core.db import repo
from app.core.db.session import session_scope
from devstack.sample_data import CLASS_NAMES, write_digits_zip
from devstack.stack import Proc
from tests.console.conftest import new_page, shot, sign_in
from tests.e2e.conftest import Stack

pytestmark = [pytest.mark.services, pytest.mark.browser]

EPOCHS = 3
JOB_TIMEOUT_MS = 240_000
UI_TIMEOUT_MS = 30_000
# A DataTransfer holding one PNG, as a drag from the desktop delivers it.
DROP_FILE = """(b64) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
  return transfer;
}"""


@pytest.fixture(scope="module")
def flow_state() -> dict[str, Any]:
    """Ids the flow creates, for the tests after it (another tenant must not see them)."""
    return {}


def test_full_flow(
    browser: Any, stack: Stack, worker: Proc, tmp_path: Path, flow_state: dict[str, Any]
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=UI_TIMEOUT_MS)
    context, page, problems = new_page(browser)
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))

    # Sign-in: a wrong key shows the API's message; the right one opens the datasets.
    page.goto(f"{stack.base_url}/")  # redirects to /console/
    expect(page.locator("#api-key")).to_be_visible()
    expect(page.locator("nav")).to_be_hidden()
    shot(page, "01-sign-in")
    page.fill("#api-key", "pt_not_a_real_key")
    page.click("form[data-testid=signin-form] button[type=submit]")
    expect(page.get_by_test_id("signin-error")).to_contain_text("invalid or revoked API key")
    page.fill("#api-key", stack.key)
    page.click("form[data-testid=signin-form] button[type=submit]")
    expect(page.locator("h1")).to_have_text("Datasets")
    assert page.evaluate("sessionStorage.getItem('promptune.apiKey')") == stack.key

    # Upload the digits zip: the progress bar reaches 100 %, then the import report.
    archive = write_digits_zip(tmp_path / "digits.zip", per_class=10)
    page.set_input_files("#upload-zip", str(archive))
    page.fill("#dataset-name", "digits")
    page.click("form[data-testid=upload-form] button[type=submit]")
    expect(page.get_by_test_id("upload-progress-text")).to_contain_text("100 %")
    expect(page.get_by_test_id("upload-progress")).to_have_attribute("value", "100")
    expect(page.get_by_test_id("upload-done")).to_contain_text("digits")
    expect(page.get_by_test_id("datasets-table").locator("tbody tr")).to_have_count(1)
    shot(page, "02-datasets")
    page.get_by_test_id("uploaded-link").click()
    expect(page.get_by_test_id("dataset-name")).to_have_text("digits")
    counts = page.get_by_test_id("class-counts")
    expect(counts.locator("tbody tr")).to_have_count(len(CLASS_NAMES))
    expect(counts.locator("tbody tr").first).to_contain_text(sorted(CLASS_NAMES)[0])
    expect(page.get_by_test_id("dataset-images")).to_have_text(str(10 * len(CLASS_NAMES)))
    expect(page.locator("img.thumb[data-loaded=true]")).to_have_count(3 * len(CLASS_NAMES))
    expect(page.get_by_test_id("skipped-files")).to_contain_text("none")
    dataset_id = page.url.rsplit("/", 1)[-1]
    flow_state["dataset_id"] = dataset_id
    shot(page, "03-dataset-view")

    # The job form, generated from the method's schema: SPT on demo-vit, 3 epochs, batch size 16.
    page.get_by_role("link", name="Train on this dataset").click()
    expect(page.locator("h1")).to_have_text("New job")
    page.select_option("#job-method", "spt")
    expect(page.locator("#job-backbone option[value=demo-vit]")).to_have_count(1)
    expect(page.locator("#cfg-epochs")).to_have_value("10")  # the schema's default
    expect(page.locator("#cfg-epochs")).to_have_attribute("min", "1")
    # The catalogue's backbones are listed but cannot be picked offline.
    expect(page.locator("#job-backbone option[value=vit-b-16-mae]")).to_be_disabled()
    assert page.locator("#job-dataset").input_value() == dataset_id
    page.select_option("#job-backbone", "demo-vit")
    # A bound checked before submit: nothing is sent, the field is named.
    page.fill("#cfg-epochs", "0")
    page.get_by_test_id("submit-job").click()
    expect(page.get_by_test_id("job-form-error")).to_contain_text("epochs")
    expect(page.get_by_test_id("job-form-error")).to_contain_text("config.epochs")
    # A value the schema allows but this server refuses: the API's message and param next to the form.
    page.fill("#cfg-epochs", "5000")
    page.get_by_test_id("submit-job").click()
    expect(page.get_by_test_id("job-form-error")).to_contain_text("on this server")
    expect(page.get_by_test_id("job-form-error")).to_contain_text("invalid_config")
    page.fill("#cfg-epochs", str(EPOCHS))
    page.fill("#cfg-batch_size", "16")
    shot(page, "04-job-form")
    page.get_by_test_id("submit-job").click()

    # The live view: status, curves growing per epoch from the SSE metrics events, the model link.
    expect(page.get_by_test_id("job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    loss = page.get_by_test_id("loss-chart")
    expect(loss.locator("circle[data-series=train_loss]")).to_have_count(EPOCHS)
    expect(loss.locator("circle[data-series=val_loss]")).to_have_count(EPOCHS)
    expect(loss.locator("polyline")).to_have_count(2)
    expect(page.get_by_test_id("accuracy-chart").locator("circle[data-series=val_acc]")).to_have_count(EPOCHS)
    expect(page.get_by_test_id("job-progress")).to_have_attribute("value", "100")
    expect(page.get_by_test_id("event-log")).to_contain_text("metrics: epoch 3")
    expect(page.get_by_test_id("cancel-job")).to_be_hidden()
    flow_state["job_id"] = page.url.rsplit("/", 1)[-1]
    shot(page, "05-job-live-view")

    # The model's report: one per-class row per class, classes² heat-map cells, the card as text.
    page.get_by_test_id("model-link").click()
    expect(page.get_by_test_id("model-report")).to_be_visible()
    model_id = page.url.rsplit("/", 1)[-1]
    flow_state["model_id"] = model_id
    expect(page.get_by_test_id("per-class-table").locator("tbody tr")).to_have_count(len(CLASS_NAMES))
    expect(page.get_by_test_id("cm-cell")).to_have_count(len(CLASS_NAMES) ** 2)
    expect(page.get_by_test_id("report-loss-chart").locator("circle[data-series=train_loss]")).to_have_count(
        EPOCHS
    )
    expect(page.get_by_test_id("report-accuracy")).to_contain_text("%")
    expect(page.get_by_test_id("model-card")).to_contain_text("library_name")
    cells = page.get_by_test_id("cm-cell").all_text_contents()
    assert (
        sum(int(c) for c in cells)
        == stack.client().get(f"/v1/models/{model_id}/report").json()["num_samples"]
    )
    shot(page, "06-model-report")

    # Downloads: fetch -> blob -> <a download>.
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download archive").click()
    download = download_info.value
    assert download.suggested_filename == f"{model_id}.zip"
    with zipfile.ZipFile(download.path()) as archive_zip:
        assert "model.safetensors" in archive_zip.namelist()

    # The phone width: the nav wraps, wide tables scroll inside their box, the page itself does not.
    page.set_viewport_size({"width": 375, "height": 800})
    expect(page.get_by_test_id("confusion-matrix")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375 + 1
    shot(page, "07-model-report-375px")
    page.set_viewport_size({"width": 1280, "height": 900})

    # The playground with the tuned model: a digit image, its label, a latency.
    with zipfile.ZipFile(archive) as digits:
        name = next(n for n in digits.namelist() if n.startswith("test/") and n.endswith(".png"))
        png = digits.read(name)
    page.goto(f"{stack.base_url}/console/#/playground?model={model_id}")
    expect(page.locator("h1")).to_have_text("Playground")
    page.set_input_files("#pg-files", {"name": "digit.png", "mimeType": "image/png", "buffer": png})
    expect(page.get_by_test_id("picked")).to_contain_text("1 image")
    page.get_by_test_id("predict").click()
    expect(page.get_by_test_id("latency")).to_have_text(re.compile(r"Latency: \d+ ms"))
    label = page.get_by_test_id("prediction-label").text_content()
    assert label in CLASS_NAMES
    expect(page.locator(".bars li")).to_have_count(3)
    shot(page, "08-playground")

    # Zero-shot with typed class names on the demo CLIP, on an image dropped onto the drop zone.
    dropped = page.evaluate_handle(DROP_FILE, base64.b64encode(png).decode())
    page.dispatch_event("[data-testid=dropzone]", "drop", {"dataTransfer": dropped})
    expect(page.get_by_test_id("results")).to_contain_text("dropped.png")
    page.check("#pg-mode-zero")
    page.fill("#pg-classes", "cat, dog")
    page.select_option("#pg-backbone", "demo-clip")
    page.get_by_test_id("predict").click()
    expect(page.get_by_test_id("prediction-label")).to_have_text(re.compile(r"^(cat|dog)$"))
    expect(page.locator(".bars li")).to_have_count(2)

    # The key never went into a URL; sign-out forgets it.
    assert not [u for u in urls if stack.key in u]
    page.click("#sign-out")
    expect(page.locator("#api-key")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('promptune.apiKey')") is None
    problems.check()
    context.close()


def test_a_finished_job_shows_only_its_final_status(
    browser: Any, stack: Stack, flow_state: dict[str, Any]
) -> None:
    """Opening a finished job replays its history into the log and the curves, but the status badge never
    steps back through the statuses it had (queued, running) on the way."""
    from playwright.sync_api import expect

    if "job_id" not in flow_state:
        pytest.skip("needs the job of test_full_flow")
    context, page, problems = new_page(browser)
    sign_in(page, stack.base_url, stack.key)
    # Installed in the signed-in document: the job page below is a hash change, not a new document.
    page.evaluate(
        """() => {
          window.__badges = [];
          // Every node ever put into the badge, not its text when the observer runs: the observer runs
          // after a whole batch of replayed events, which would hide a status shown in between.
          new MutationObserver((records) => {
            for (const record of records) {
              const target = record.target.closest ? record.target : record.target.parentElement;
              if (!target || !target.closest('[data-testid="job-status"]')) continue;
              for (const node of record.addedNodes) window.__badges.push(node.textContent);
            }
          }).observe(document, { subtree: true, childList: true });
        }"""
    )
    page.goto(f"{stack.base_url}/console/#/jobs/{flow_state['job_id']}")
    expect(page.get_by_test_id("event-log")).to_contain_text("status: succeeded", timeout=UI_TIMEOUT_MS)
    expect(page.get_by_test_id("loss-chart").locator("circle")).not_to_have_count(0)
    seen = {text for text in page.evaluate("window.__badges") if text}
    assert seen == {"succeeded"}, seen
    problems.check()
    context.close()


def test_another_tenant_sees_nothing(browser: Any, stack: Stack, flow_state: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    if "model_id" not in flow_state:
        pytest.skip("needs the model of test_full_flow")
    with session_scope(stack.db_url) as session:
        tenant = repo.create_tenant(session=session, name="console-other")
        key_row, other_key = repo.create_api_key(session=session, tenant_id=tenant.id)
        prefix = key_row.prefix
    context, page, problems = new_page(browser)
    sign_in(page, stack.base_url, other_key)
    expect(page.get_by_test_id("datasets-table").locator("tbody tr")).to_have_count(0)
    expect(page.locator("main")).to_contain_text("No datasets yet")
    page.goto(f"{stack.base_url}/console/#/jobs")
    expect(page.get_by_test_id("jobs-table").locator("tbody tr")).to_have_count(0)
    page.goto(f"{stack.base_url}/console/#/models")
    expect(page.get_by_test_id("models-table").locator("tbody tr")).to_have_count(0)
    for route in (
        f"#/models/{flow_state['model_id']}",
        f"#/jobs/{flow_state['job_id']}",
        f"#/datasets/{flow_state['dataset_id']}",
    ):
        page.goto(f"{stack.base_url}/console/{route}")
        expect(page.locator("h1")).to_have_text("Not found")
        expect(page.locator("main .error")).to_contain_text("not_found")

    # A key revoked mid-session: the next call's 401 returns to sign-in with the API's message.
    with session_scope(stack.db_url) as session:
        assert repo.revoke_api_key(session=session, tenant_id=tenant.id, prefix=prefix)
    page.get_by_role("link", name="Jobs").click()
    expect(page.get_by_test_id("signin-error")).to_contain_text("invalid or revoked API key")
    expect(page.locator("nav")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('promptune.apiKey')") is None
    problems.check()
    context.close()


def test_folder_upload(browser: Any, stack: Stack, tmp_path: Path) -> None:
    """A folder picked with webkitdirectory is zipped in the browser (STORE) and imported as it is."""
    from playwright.sync_api import expect

    folder = tmp_path / "digits-folder"
    with zipfile.ZipFile(io.BytesIO(write_digits_zip(tmp_path / "d.zip", per_class=4).read_bytes())) as zf:
        zf.extractall(folder)
    (folder / ".DS_Store").write_bytes(b"hidden files are left out")
    expected = len(list(folder.rglob("*.png")))
    context, page, problems = new_page(browser)
    sign_in(page, stack.base_url, stack.key)
    page.set_input_files("#upload-folder", str(folder))
    page.click("form[data-testid=upload-form] button[type=submit]")
    expect(page.get_by_test_id("upload-progress-text")).to_contain_text(f"Imported {expected} images")
    page.get_by_test_id("uploaded-link").click()
    expect(page.get_by_test_id("dataset-images")).to_have_text(str(expected))
    expect(page.get_by_test_id("class-counts").locator("tbody tr")).to_have_count(len(CLASS_NAMES))
    expect(page.get_by_test_id("skipped-files")).to_contain_text("none")
    problems.check()
    context.close()


def test_event_stream_reconnects_without_repeats(
    browser: Any, stack: Stack, flow_state: dict[str, Any]
) -> None:
    """A stream that drops mid-frame is resumed with Last-Event-ID: every event shows once, none is lost."""
    from playwright.sync_api import expect

    if "job_id" not in flow_state:
        pytest.skip("needs the job of test_full_flow")
    job_id = flow_state["job_id"]
    events = stack.client().get(f"/v1/jobs/{job_id}/events").json()["data"]
    first = events[:2]
    frames = "".join(f"id: {e['id']}\nevent: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in first)
    cut = f'id: {events[2]["id"]}\nevent: {events[2]["type"]}\ndata: {{"trunc'
    resumed_from: list[str | None] = []

    def handle(route: Any) -> None:
        if "text/event-stream" not in route.request.headers.get("accept", ""):
            route.continue_()
        elif not resumed_from and not route.request.headers.get("last-event-id"):
            resumed_from.append(None)
            route.fulfill(
                status=200, headers={"Content-Type": "text/event-stream"}, body=": hi\n\n" + frames + cut
            )
        else:
            resumed_from.append(route.request.headers.get("last-event-id"))
            route.continue_()

    context, page, problems = new_page(browser)
    sign_in(page, stack.base_url, stack.key)
    page.route(f"**/v1/jobs/{job_id}/events", handle)
    page.goto(f"{stack.base_url}/console/#/jobs/{job_id}")
    expect(page.get_by_test_id("job-status")).to_have_text("succeeded")
    log = page.get_by_test_id("event-log")
    expect(log).to_contain_text("status: succeeded")
    expect(page.get_by_test_id("loss-chart").locator("circle[data-series=train_loss]")).to_have_count(EPOCHS)
    lines = [line for line in (log.text_content() or "").splitlines() if line]
    assert len(lines) == len(events), lines
    assert resumed_from == [None, str(first[-1]["id"])]
    problems.check()
    context.close()


def test_cancel_a_running_job_then_download_and_delete_the_model(
    browser: Any, stack: Stack, worker: Proc, flow_state: dict[str, Any]
) -> None:
    """Cancel from the live view stops a training job; the model page's checkpoint download is the stored
    checkpoint; delete (after its confirm) removes the model. Runs last: it deletes the flow's model."""
    import hashlib

    from playwright.sync_api import expect

    if "model_id" not in flow_state:
        pytest.skip("needs the model of test_full_flow")
    with stack.client() as client:
        body = {
            "method": "spt",
            "backbone": "demo-vit",
            "dataset_id": flow_state["dataset_id"],
            "config": {"epochs": 400, "batch_size": 4},  # minutes of training: it is running when cancelled
        }
        job = client.post("/v1/jobs", json=body).json()
        model = client.get(f"/v1/models/{flow_state['model_id']}").json()
    context, page, problems = new_page(browser)
    sign_in(page, stack.base_url, stack.key)
    page.goto(f"{stack.base_url}/console/#/jobs/{job['id']}")
    expect(page.get_by_test_id("job-status")).to_have_text("running", timeout=JOB_TIMEOUT_MS)
    page.get_by_test_id("cancel-job").click()
    expect(page.get_by_test_id("job-status")).to_have_text("cancelled", timeout=JOB_TIMEOUT_MS)
    expect(page.get_by_test_id("cancel-job")).to_be_hidden()

    page.goto(f"{stack.base_url}/console/#/models/{model['id']}")
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download checkpoint").click()
    download = download_info.value
    assert download.suggested_filename == f"{model['id']}.safetensors"
    digest = hashlib.sha256(Path(download.path()).read_bytes()).hexdigest()
    assert digest == model["checkpoint_sha256"]

    page.get_by_test_id("delete-model").click()
    page.get_by_test_id("confirm-yes").click()
    expect(page).to_have_url(re.compile(r"#/models$"), timeout=UI_TIMEOUT_MS)
    with stack.client() as client:
        assert client.get(f"/v1/models/{model['id']}").status_code == 404
    problems.check()
    context.close()
