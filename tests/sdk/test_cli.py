"""The client verbs of the ``promptune`` command on the real stack: in-process through
``promptune.cli.main`` (output read with capsys) and as a real ``python -m promptune`` subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.stack import Proc
from promptune.cli import main
from tests.e2e.conftest import Stack
from tests.sdk.conftest import Trained, digit_pngs

pytestmark = pytest.mark.services


@pytest.fixture
def env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    monkeypatch.setenv("PROMPTUNE_BASE_URL", stack.base_url)
    monkeypatch.setenv("PROMPTUNE_API_KEY", stack.key)
    return stack


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what came before
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def images(tmp_path: Path) -> list[str]:
    paths = []
    for i, png in enumerate(digit_pngs(3)):
        path = tmp_path / f"digit-{i}.png"
        path.write_bytes(png)
        paths.append(str(path))
    return paths


def test_upload_create_watch_list_get(
    env: Stack, worker: Proc, digits_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = run_json(capsys, "datasets", "upload", str(digits_folder), "--name", "cli-digits")
    assert isinstance(dataset, dict) and dataset["name"] == "cli-digits" and dataset["num_classes"] == 10
    code, out, _ = run(capsys, "datasets", "list")
    assert code == 0 and dataset["id"] in out

    code, out, err = run(
        capsys, "jobs", "create", "--method", "spt", "--backbone", "demo-vit", "--dataset", dataset["id"],
        "--config", '{"batch_size": 8, "mode": "deep"}', "--set", "epochs=2", "--set", "init=random",
        "--seed", "4", "--watch",
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("job ") and "queued" in lines[0]
    assert any(line.startswith("epoch 1:") for line in lines) and any(
        line.startswith("epoch 2:") for line in lines
    )
    assert "succeeded" in lines[-1]  # stdout is not a terminal: plain lines, then the final job
    job_id = lines[0].split()[1]

    job = run_json(capsys, "jobs", "get", job_id)
    assert isinstance(job, dict) and job["status"] == "succeeded" and job["config"]["epochs"] == 2
    assert job["config"]["init"] == "random" and job["seed"] == 4
    listed = run_json(capsys, "jobs", "list", "--status", "succeeded", "--limit", "100")
    assert isinstance(listed, dict) and job_id in {j["id"] for j in listed["data"]}


def test_predict_zero_shot_and_models(
    env: Stack, trained: Trained, images: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_id = trained.job.model_id
    assert model_id
    code, out, err = run(capsys, "predict", model_id, *images, "--top-k", "2")
    assert code == 0, err
    assert [line.split(":")[0] for line in out.splitlines()] == images
    predictions = run_json(capsys, "predict", model_id, *images)
    assert isinstance(predictions, list) and [p["image"] for p in predictions] == images
    assert all(p["label"] in trained.dataset.classes for p in predictions)

    shots = run_json(capsys, "zero-shot", "--classes", "cat,dog,car", "--backbone", "demo-clip", *images)
    assert (
        isinstance(shots, list)
        and len(shots) == 3
        and all(p["label"] in {"cat", "dog", "car"} for p in shots)
    )

    listed = run_json(capsys, "models", "list", "--limit", "100")
    assert isinstance(listed, dict) and model_id in {m["id"] for m in listed["data"]}
    model = run_json(capsys, "models", "get", model_id)
    assert isinstance(model, dict) and model["method"] == "spt"
    code, out, err = run(capsys, "models", "download", model_id, str(tmp_path / "dl"))
    assert code == 0, err
    assert (tmp_path / "dl" / "model.safetensors").is_file() and "model.safetensors" in out
    report = run_json(capsys, "models", "report", model_id)
    assert isinstance(report, dict) and report["model_id"] == model_id and "confusion_matrix" in report
    code, out, err = run(capsys, "models", "report", model_id)
    assert code == 0 and "accuracy" in out, err


def test_watch_draws_a_progress_bar_on_a_terminal(
    env: Stack, trained: Trained, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, err = run(capsys, "jobs", "watch", trained.job.id)
    assert code == 0, err
    assert "epoch 3:" in out and f"job {trained.job.id} succeeded" in out


def test_errors_exit_1_with_the_code_and_usage_errors_exit_2(
    env: Stack, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "jobs", "get", "no-such-job")
    assert code == 1 and err.strip() == "error: not_found: job not found (param job_id)"
    code, _, err = run(capsys, "jobs", "create", "--method", "spt", "--backbone", "demo-vit", "--dataset", "x",
                       "--set", "epochs")  # fmt: skip
    assert code == 2 and "KEY=VALUE" in err
    code, _, err = run(capsys, "predict", "some-model", str(tmp_path / "missing.png"))
    assert code == 2 and "missing.png" in err
    with pytest.raises(SystemExit) as usage:
        main(["jobs", "create", "--backbone", "demo-vit"])  # --method and --dataset missing
    assert usage.value.code == 2


def test_python_dash_m_promptune_runs_the_client(env: Stack, tmp_path: Path) -> None:
    child_env = {**os.environ, "PROMPTUNE_BASE_URL": env.base_url, "PROMPTUNE_API_KEY": env.key}
    result = subprocess.run(
        [sys.executable, "-m", "promptune", "datasets", "list", "--json"],
        env=child_env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert isinstance(json.loads(result.stdout)["data"], list)

    del child_env["PROMPTUNE_API_KEY"]
    result = subprocess.run(
        [sys.executable, "-m", "promptune", "jobs", "list"],
        env=child_env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1 and result.stderr.startswith("error: missing_api_key:")


def test_the_server_command_offers_the_client_verbs(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main as server_main

    code = server_main(["datasets", "list", "--json"])
    assert code == 0 and isinstance(json.loads(capsys.readouterr().out)["data"], list)


def test_backbones_list(env: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "backbones", "list", "--available")
    assert code == 0 and "demo-vit" in out and "clip-vit-l-14-openai" not in out
    listed = run_json(capsys, "backbones", "list", "--family", "open_clip")
    assert isinstance(listed, dict)
    assert {b["family"] for b in listed["data"]} == {"open_clip"}
