"""What a benchmark profile runs: the SPT table, prompt-length robustness and the RPP table.

Every run is a plain dict (JSON-able; its ``run_id`` is a hash of it). Learning rates are chosen per
(table, backbone, task, method) on the validation split with the first seed ("select" runs); the other
seeds then run at the chosen rate ("seed" runs). Test accuracy never takes part in a choice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from ..errors import ConfigError

SPT_INITS = ("random", "mean-pool", "max-pool", "kmeans")
# name -> how the model is built (see spt_runs.build_spt_method); lr grid family in brackets
SPT_METHODS: dict[str, dict[str, Any]] = {
    "linear": {"family": "linear"},
    "full-ft": {"family": "full-ft"},
    "vpt-shallow": {"family": "prompt", "mode": "shallow", "init": "xavier"},
    "vpt-deep": {"family": "prompt", "mode": "deep", "init": "xavier"},
    **{f"spt-shallow-{i}": {"family": "prompt", "mode": "shallow", "init": i} for i in SPT_INITS},
    **{f"spt-deep-{i}": {"family": "prompt", "mode": "deep", "init": i} for i in SPT_INITS},
}
# name -> RPPConfig overrides (kd_weight of rpp-kd comes from the profile)
# Every row names its carry mode (docs/methods.md A.6), so a change of RPPConfig.carry's default does not
# change what a row means. Depth None = blocks - 1 for every deep row, so rows differ only where named.
_ADD = {"carry": "add"}
_REPLACE = {"carry": "replace"}
RPP_METHODS: dict[str, dict[str, Any]] = {
    "zero-shot": {"text_design": "none", "vision_design": "none", "kd_weight": 0.0},
    "coop": {"text_design": "coop", "vision_design": "none", "kd_weight": 0.0},
    "shared": {"text_design": "shared", "vision_design": "shared", "kd_weight": 0.0, **_ADD},
    "rpp-nokd": {"text_design": "qkv", "vision_design": "qkv", "kd_weight": 0.0, **_ADD},
    "rpp-kd": {"text_design": "qkv", "vision_design": "qkv", **_ADD},
    # IVLP / VPT-deep as published: each prompted layer's prompts overwrite the previous slot output.
    "shared-replace": {"text_design": "shared", "vision_design": "shared", "kd_weight": 0.0, **_REPLACE},
    # SAPL as the second-hand review describes it (layer-wise replacement of the q/k/v copies).
    "rpp-replace-nokd": {"text_design": "qkv", "vision_design": "qkv", "kd_weight": 0.0, **_REPLACE},
    "rpp-replace-kd": {"text_design": "qkv", "vision_design": "qkv", **_REPLACE},
    # Under replace only the last prompted layer's P_q can learn, so the one depth where every P_q learns
    # is 1 (a shallow q/k/v prompt whose slot output flows through every later block; carry is then moot).
    "rpp-replace-kd-depth1": {
        "text_design": "qkv",
        "vision_design": "qkv",
        "text_depth": 1,
        "vision_depth": 1,
        **_REPLACE,
    },
}
VTAB_TASKS = (
    "digits",
    "shapes",
    "texture",
    "background",
    "count",
    "position",
    "orientation",
    "distance",
    "size",
)


@dataclasses.dataclass(frozen=True)
class BenchProfile:
    """Budgets and grids of one benchmark profile (``quick`` for CI, ``cpu``, ``gpu``)."""

    name: str
    seeds: tuple[int, ...] = (0, 1, 2)
    # SPT table
    spt_backbones: tuple[str, ...] = ("zoo-vit-mae-tiny", "zoo-vit-sup-tiny")
    spt_tasks: tuple[str, ...] = VTAB_TASKS
    spt_methods: tuple[str, ...] = tuple(SPT_METHODS)
    task_sizes: tuple[tuple[str, int], ...] = (("train", 1000), ("val", 200), ("test", 500))
    epochs: int = 30
    batch_size: int = 64
    warmup_epochs: float = 3.0
    weight_decay: float = 1e-4
    shallow_prompts: int = 16
    deep_prompts: int = 8
    lr_grid: tuple[tuple[str, tuple[float, ...]], ...] = (
        ("linear", (1e-3, 3e-3, 1e-2)),
        ("full-ft", (1e-4, 3e-4, 1e-3)),
        ("prompt", (1e-3, 3e-3, 1e-2)),
    )
    # prompt-length robustness: these methods at these M, at the lr chosen for the table's M
    length_methods: tuple[str, ...] = ("vpt-deep", "spt-deep-mean-pool", "spt-deep-kmeans")
    length_backbones: tuple[str, ...] = ("zoo-vit-mae-tiny",)
    length_tasks: tuple[str, ...] = ("count", "shapes", "orientation", "digits")
    prompt_lengths: tuple[int, ...] = (4, 8, 16, 32)
    # RPP table
    rpp_backbone: str = "zoo-clip-tiny"
    rpp_methods: tuple[str, ...] = tuple(RPP_METHODS)
    rpp_source_per_class: tuple[tuple[str, int], ...] = (("train", 16), ("val", 4), ("test", 4))
    rpp_target_per_class: int = 10
    rpp_epochs: int = 10
    rpp_batch_size: int = 128
    rpp_lr_grid: tuple[float, ...] = (2e-3, 5e-3)
    rpp_sampled_classes: int = 64
    rpp_kd_weight: float = 1.0
    rpp_b2n_epochs: int = 5
    task_seed: int = 2025  # world seed of every benchmark task (no pretraining stream uses it)

    def lr_grid_for(self, method: str, table: str = "spt") -> tuple[float, ...]:
        if table == "rpp":
            return (0.0,) if method == "zero-shot" else self.rpp_lr_grid
        family = SPT_METHODS[method]["family"]
        return dict(self.lr_grid)[family]

    def check(self) -> None:
        for m in (*self.spt_methods, *self.length_methods):
            if m not in SPT_METHODS:
                raise ConfigError("spt_methods", f"unknown method {m!r}; known: {', '.join(SPT_METHODS)}")
        for m in self.rpp_methods:
            if m not in RPP_METHODS:
                raise ConfigError("rpp_methods", f"unknown method {m!r}; known: {', '.join(RPP_METHODS)}")
        if not self.seeds:
            raise ConfigError("seeds", "at least one seed")


PROFILES: dict[str, BenchProfile] = {
    # One task, one seed, small budgets: proves the whole pipeline in a few minutes on two CPU cores (CI).
    "quick": BenchProfile(
        name="quick",
        seeds=(0,),
        spt_backbones=("zoo-vit-mae-tiny",),
        spt_tasks=("count",),
        spt_methods=("linear", "vpt-deep", "spt-deep-mean-pool"),
        task_sizes=(("train", 200), ("val", 50), ("test", 100)),
        epochs=3,
        warmup_epochs=0.5,
        lr_grid=(("linear", (1e-2,)), ("full-ft", (1e-3,)), ("prompt", (1e-2,))),
        length_methods=("vpt-deep",),
        length_tasks=("count",),
        prompt_lengths=(4,),
        rpp_methods=("zero-shot", "rpp-kd"),
        rpp_source_per_class=(("train", 2), ("val", 1), ("test", 1)),
        rpp_target_per_class=2,
        rpp_epochs=1,
        rpp_lr_grid=(5e-3,),
        rpp_b2n_epochs=1,
    ),  # fmt: skip
    # The full grid at CPU-sized budgets (hours on two cores).
    "cpu": BenchProfile(name="cpu", epochs=20, rpp_epochs=5),
    # The RPP table alone (every row, 3 seeds) at budgets that fit about 90 minutes on one CPU core, on the
    # zoo's demo CLIP (docs/benchmarks.md, "CPU RPP table"). No SPT or prompt-length runs.
    "cpu-rpp": BenchProfile(
        name="cpu-rpp",
        spt_backbones=(),
        spt_methods=(),
        length_methods=(),
        length_backbones=(),
        length_tasks=(),
        # rows in priority order (a time limit cuts the tail of the seed phase)
        rpp_methods=(
            "zero-shot",
            "shared",
            "shared-replace",
            "rpp-nokd",
            "rpp-replace-nokd",
            "rpp-kd",
            "rpp-replace-kd",
            "rpp-replace-kd-depth1",
            "coop",
        ),
        # one run measured 1.5 s per batch-128 step on one thread (36 steps an epoch) plus ~30 s of evaluation
        rpp_epochs=2,
        rpp_batch_size=64,
        rpp_lr_grid=(5e-3, 1e-2),
        rpp_b2n_epochs=1,
    ),  # fmt: skip
    # Issue 15's no-GPU item for the SPT table: the rows it lacks (full fine-tuning, SPT-shallow max-pool
    # and k-means) beside linear and SPT-shallow mean-pool, one task, one seed, on the zoo's demo MAE ViT.
    # A smoke-sized check that the rows run and where they land, not a replacement for the GPU rows.
    "cpu-spt-small": BenchProfile(
        name="cpu-spt-small",
        seeds=(0,),
        spt_backbones=("zoo-vit-mae-tiny",),
        spt_tasks=("count",),
        spt_methods=(
            "linear",
            "full-ft",
            "spt-shallow-mean-pool",
            "spt-shallow-max-pool",
            "spt-shallow-kmeans",
        ),
        task_sizes=(("train", 500), ("val", 100), ("test", 200)),
        epochs=10,
        warmup_epochs=1.0,
        lr_grid=(("linear", (3e-3, 1e-2)), ("full-ft", (1e-4, 3e-4)), ("prompt", (3e-3, 1e-2))),
        length_methods=(),
        length_backbones=(),
        length_tasks=(),
        rpp_methods=(),
    ),  # fmt: skip
    # The grid for a lent GPU, in priority order (a time limit cuts the tail): deep prompts first, the
    # prompt-length runs on two tasks at M = 4, 16, 32 (M = 8 is the table's own column).
    "gpu": BenchProfile(
        name="gpu",
        spt_methods=(
            "vpt-deep",
            "spt-deep-mean-pool",
            "spt-deep-kmeans",
            "spt-deep-random",
            "spt-deep-max-pool",
            "linear",
            "vpt-shallow",
            "spt-shallow-mean-pool",
            "spt-shallow-random",
            "spt-shallow-max-pool",
            "spt-shallow-kmeans",
            "full-ft",
        ),
        length_methods=("vpt-deep", "spt-deep-mean-pool"),
        length_tasks=("count", "shapes"),
        prompt_lengths=(4, 16, 32),
    ),  # fmt: skip
}


def get_profile(name: str) -> BenchProfile:
    if name not in PROFILES:
        raise ConfigError("profile", f"must be one of {', '.join(PROFILES)}, got {name!r}")
    return PROFILES[name]


def run_id(run: dict[str, Any]) -> str:
    body = {k: v for k, v in run.items() if k != "run_id"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _with_id(run: dict[str, Any]) -> dict[str, Any]:
    return {**run, "run_id": run_id(run)}


def run_groups(profile: BenchProfile) -> list[tuple[str, ...]]:
    """Backbone groups run one after another (select, then seeds), so a time limit still leaves finished
    tables: the RPP CLIP with the first ViT (the MAE one: the papers' headline claim), then the others."""
    first = (profile.rpp_backbone, *profile.spt_backbones[:1], *profile.length_backbones)
    rest = tuple(b for b in profile.spt_backbones[1:] if b not in first)
    return [tuple(dict.fromkeys(first))] + ([rest] if rest else [])


def select_runs(profile: BenchProfile) -> list[dict[str, Any]]:
    """Seed-0 runs over each learning-rate grid (RPP first: they are the longest)."""
    seed = profile.seeds[0]
    runs = [
        _with_id({"table": "rpp", "phase": "select", "backbone": profile.rpp_backbone, "task": "rpp-suite",
                  "method": m, "lr": lr, "seed": seed, "profile": profile.name})
        for m in profile.rpp_methods for lr in profile.lr_grid_for(m, "rpp")
    ]  # fmt: skip
    runs += [
        _with_id({"table": "spt", "phase": "select", "backbone": b, "task": t, "method": m, "lr": lr,
                  "seed": seed, "num_prompts": None, "profile": profile.name})
        for b in profile.spt_backbones for m in profile.spt_methods for t in profile.spt_tasks
        for lr in profile.lr_grid_for(m)
    ]  # fmt: skip
    return runs


def chosen_lr(
    results: list[dict[str, Any]], table: str, backbone: str, task: str, method: str
) -> float | None:
    """The select run with the best validation accuracy (ties: lower lr)."""
    cands = [
        r for r in results
        if r.get("status") == "ok" and r["phase"] == "select" and r["table"] == table
        and r["backbone"] == backbone and r["task"] == task and r["method"] == method
    ]  # fmt: skip
    if not cands:
        return None
    best = max(cands, key=lambda r: (r["val_acc"], -r["lr"]))
    return float(best["lr"])


def seed_runs(profile: BenchProfile, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The remaining seeds at the chosen rates, and the prompt-length runs (every seed)."""
    runs: list[dict[str, Any]] = []
    for m in profile.rpp_methods:
        lr = chosen_lr(results, "rpp", profile.rpp_backbone, "rpp-suite", m)
        if lr is None or m == "zero-shot":
            continue
        runs += [
            _with_id({"table": "rpp", "phase": "seed", "backbone": profile.rpp_backbone, "task": "rpp-suite",
                      "method": m, "lr": lr, "seed": s, "profile": profile.name})
            for s in profile.seeds[1:]
        ]  # fmt: skip
    for b in profile.spt_backbones:
        for m in profile.spt_methods:
            for t in profile.spt_tasks:
                lr = chosen_lr(results, "spt", b, t, m)
                if lr is None:
                    continue
                runs += [
                    _with_id({"table": "spt", "phase": "seed", "backbone": b, "task": t, "method": m, "lr": lr,
                              "seed": s, "num_prompts": None, "profile": profile.name})
                    for s in profile.seeds[1:]
                ]  # fmt: skip
    for b in profile.length_backbones:
        for m in profile.length_methods:
            for t in profile.length_tasks:
                lr = chosen_lr(results, "spt", b, t, m)
                if lr is None:
                    continue
                runs += [
                    _with_id({"table": "length", "phase": "seed", "backbone": b, "task": t, "method": m,
                              "lr": lr, "seed": s, "num_prompts": n, "profile": profile.name})
                    for n in profile.prompt_lengths for s in profile.seeds
                ]  # fmt: skip
    return runs
