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


def test_cpu_rpp_profile_plans_the_whole_rpp_table_only() -> None:
    from models.bench.cli import ZOO_PROFILE_FOR
    from models.bench.plan import RPP_METHODS, run_groups

    prof = get_profile("cpu-rpp")
    prof.check()
    runs = select_runs(prof)
    assert {r["table"] for r in runs} == {"rpp"}
    assert set(prof.rpp_methods) == set(RPP_METHODS)  # every old and new row
    assert len(runs) == 1 + (len(RPP_METHODS) - 1) * len(prof.rpp_lr_grid)  # zero-shot has no grid
    assert len({r["run_id"] for r in runs}) == len(runs)
    assert run_groups(prof) == [("zoo-clip-tiny",)]
    assert ZOO_PROFILE_FOR["cpu-rpp"] == "demo"
    # every deep-prompt row names its carry mode, so the RPPConfig default cannot change a row's meaning
    for name, overrides in RPP_METHODS.items():
        if overrides["text_design"] in ("shared", "qkv"):
            assert overrides["carry"] in ("add", "replace"), name
    assert RPP_METHODS["shared-replace"]["carry"] == RPP_METHODS["rpp-replace-kd"]["carry"] == "replace"
    assert RPP_METHODS["rpp-kd"]["carry"] == RPP_METHODS["shared"]["carry"] == "add"


def test_grad_norms_are_zero_exactly_for_the_dead_prompt_tensors() -> None:
    from models.backbones.loader import load_backbone
    from models.bench.grad_norms import design_config, grad_norm_table, measure
    from models.clip_prompting import dead_prompt_tensors
    from models.zoo.rpp_tasks import rpp_source_task
    from tests.tiny import tiny_clip_spec

    torch.manual_seed(0)
    backbone = load_backbone(tiny_clip_spec())  # 2 blocks per tower
    source = rpp_source_task(seed=0, per_class={"train": 1, "val": 1, "test": 1})
    prof = get_profile("cpu-rpp")
    designs = [
        "rpp-kd",
        "rpp-replace-kd",
        "rpp-replace-kd-depth1",
        "shared-replace",
        "rpp-replace-kd-alldepth",
    ]
    result = measure(backbone, source, prof, designs, batches=1, batch_size=8)
    for name in designs:
        cfg = design_config(name, prof, (2, 2))
        dead = {
            f"{tower} {t.replace('prompts_q', 'P_q')}"
            for tower, tower_cfg in (("text", cfg.text_tower()), ("vision", cfg.vision_tower()))
            for t in dead_prompt_tensors(tower_cfg, 2)
        }
        zero = {
            f"{r['tower']} {r['tensor']}[{layer}]"
            for r in result["designs"][name]["rows"]
            for layer, value in enumerate(r["norms"])
            if value == 0.0
        }
        assert zero == dead, name
    # the all-depth replace design: every P_q is dead, every P_k / P_v learns
    rows = result["designs"]["rpp-replace-kd-alldepth"]["rows"]
    assert all((min(r["norms"]) == 0.0) == (r["tensor"] == "P_q") for r in rows)
    table = "\n".join(grad_norm_table(result))
    assert "| rpp-replace-kd-alldepth | replace | 1 | vision | P_q | **0** | **0** |" in table


def test_report_compares_carry_modes_and_appends_folders(tmp_path: Path) -> None:
    import json

    def row(method: str, seed: int, acc: float) -> dict[str, object]:
        return {"table": "rpp", "phase": "select" if seed == 0 else "seed", "backbone": "b", "task": "rpp-suite",
                "method": method, "lr": 5e-3, "seed": seed, "status": "ok", "run_id": f"{method}{seed}",
                "val_acc": acc, "source_test_acc": acc, "test_acc": acc,
                "targets": {"rpp-x": {"val_acc": acc, "test_acc": acc}},
                "base_to_new": {"base": acc, "new": acc, "hm": acc}}  # fmt: skip

    main, extra = tmp_path / "main", tmp_path / "extra"
    for folder, rows in ((main, [row("shared", 0, 0.5)]),
                         (extra, [row("shared", s, 0.5) for s in range(3)]
                          + [row("shared-replace", s, 0.6) for s in range(3)])):  # fmt: skip
        folder.mkdir()
        (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (extra / "header.md").write_text("## Extra folder\n")
    md = write_report(main, tmp_path / "b.md", header="# Main", also=[extra])
    assert md.index("# Main") < md.index("## Extra folder") < md.index("#### RPP table")  # nested one down
    assert "## SPT table" not in md  # no SPT rows: no empty section
    assert "| shared-replace | 60.0 ± 0.0 |" in md  # source val column
    assert "carry, shared: replace (IVLP as published) − add: target mean +10.0 points (60.0 vs 50.0)" in md
