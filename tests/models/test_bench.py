"""The benchmark runner: plans, learning-rate choice on validation only, resumability, the report, and
the quick profile end to end on the zoo's quick weights (what CI runs of ``promptune bench``)."""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest
import torch

from models.bench import get_profile, run_bench, write_report
from models.bench.plan import SPT_METHODS, chosen_lr, run_id, seed_runs, select_runs
from models.bench.report import final_rows
from models.errors import ConfigError
from tests.zoo_fixture import zoo_cache_dir


def test_gpu_profile_plans_every_row_with_unique_ids() -> None:
    prof = get_profile("gpu")
    runs = select_runs(prof)
    ids = [r["run_id"] for r in runs]
    assert len(ids) == len(set(ids))
    spt = [r for r in runs if r["table"] == "spt"]
    assert {r["method"] for r in spt} == set(SPT_METHODS)  # linear, full FT, VPT and SPT x 4 inits
    assert len(spt) == 2 * 12 * 9 * 3  # backbones x methods x tasks x lr grid
    assert {r["seed"] for r in runs} == {0}
    assert run_id(runs[0]) == runs[0]["run_id"]


def test_learning_rate_is_chosen_on_validation_never_on_test() -> None:
    prof = get_profile("gpu")
    base = {"status": "ok", "phase": "select", "table": "spt", "backbone": "zoo-vit-mae-tiny", "task": "count",
            "method": "vpt-deep"}  # fmt: skip
    results = [
        {**base, "lr": 1e-3, "val_acc": 0.50, "test_acc": 0.90},  # best on test: must not win
        {**base, "lr": 3e-3, "val_acc": 0.60, "test_acc": 0.10},
        {**base, "lr": 1e-2, "val_acc": 0.60, "test_acc": 0.20},  # tie on val: the lower lr wins
    ]
    assert chosen_lr(results, "spt", "zoo-vit-mae-tiny", "count", "vpt-deep") == 3e-3
    seeds = [r for r in seed_runs(prof, results) if r["table"] == "spt"]
    assert {(r["lr"], r["seed"]) for r in seeds} == {(3e-3, 1), (3e-3, 2)}
    length = [r for r in seed_runs(prof, results) if r["table"] == "length"]
    assert length and {r["lr"] for r in length} == {3e-3}  # prompt-length runs inherit the choice
    rows = final_rows([{**r, "run_id": str(i), "seed": 0} for i, r in enumerate(results)])
    assert [r["lr"] for r in rows] == [3e-3]


def test_unknown_profile_names_the_field() -> None:
    with pytest.raises(ConfigError, match="profile"):
        get_profile("huge")


def _bench_zoo() -> Path:
    """The zoo's quick MAE ViT and CLIP, built once into the shared test cache (under its lock)."""
    from models.zoo.build import build_zoo

    folder = zoo_cache_dir() / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        build_zoo(
            folder, profile="quick", only=["zoo-vit-mae-tiny", "zoo-clip-tiny"], evaluate=False, log=None
        )
    return folder / "backbones.json"


@pytest.mark.slow
def test_quick_profile_end_to_end(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    registry = _bench_zoo()
    out = tmp_path / "bench"
    lines: list[str] = []
    rows = run_bench("quick", registry, out, workers=0, log=lines.append)
    assert rows and all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
    tables = {r["table"] for r in rows}
    assert tables == {"spt", "length", "rpp"}
    for r in rows:
        assert 0.0 <= r["test_acc"] <= 1.0 and r["wall_seconds"] > 0
    spt = {r["method"]: r for r in rows if r["table"] == "spt"}
    assert spt["spt-deep-mean-pool"]["init_seconds"] > 0  # the prototype init ran and was timed
    assert spt["linear"]["learned_parameters"] < spt["vpt-deep"]["learned_parameters"]
    rpp = next(r for r in rows if r["table"] == "rpp" and r["method"] == "rpp-kd")
    assert set(rpp["base_to_new"]) == {"base", "new", "hm"} and len(rpp["targets"]) == 5

    # resumable: a second call finds every run done and adds nothing
    again = run_bench("quick", registry, out, workers=0, log=lines.append)
    assert len(again) == len(rows)

    md = write_report(out, tmp_path / "benchmarks.md", header="# Quick", plots_dir=tmp_path / "plots")
    assert "## Claims" in md and "| spt-deep-mean-pool |" in md and "| rpp-kd |" in md
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {
        "spt_table.png",
        "prompt_length.png",
        "rpp_table.png",
    }


def test_full_finetune_is_the_only_row_that_trains_the_backbone() -> None:
    from models.backbones.loader import load_backbone
    from models.bench.spt_runs import build_spt_method
    from tests.tiny import tiny_vit_spec

    spec = tiny_vit_spec()
    prof = get_profile("quick")
    names = ["a", "b"]
    learned = {}
    for method in ("linear", "vpt-deep", "spt-shallow-kmeans", "full-ft"):
        model = build_spt_method(method, load_backbone(spec), names, prof)
        learned[method] = set(model.learned_parameters())
    assert learned["linear"] == {"head.weight", "head.bias"}
    assert learned["vpt-deep"] == learned["spt-shallow-kmeans"] == {"prompts", "head.weight", "head.bias"}
    assert any(n.startswith("vit.") for n in learned["full-ft"])
