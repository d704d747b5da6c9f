"""Schedule a profile's runs over worker processes; every finished run is one line of ``results.jsonl``.

Resumable: runs whose ``run_id`` already has an ``ok`` line are skipped, so an interrupted benchmark (a
time limit, a lost machine) continues where it stopped. Phase 1 runs the learning-rate grids with the first
seed; phase 2 the other seeds at the rates chosen on validation, and the prompt-length runs.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .plan import BenchProfile, get_profile, run_groups, seed_runs, select_runs

RESULTS_NAME = "results.jsonl"
GRACE_SECONDS = 90  # after the time budget, in-flight runs get this long to finish

# ---- worker side -------------------------------------------------------------------------------------

_CTX: dict[str, Any] = {}


def _init_worker(registry: str, profile: str | BenchProfile, device: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    prof = profile if isinstance(profile, BenchProfile) else get_profile(profile)
    _CTX.update(registry=json.loads(Path(registry).read_text()), profile=prof, device=device)


class _InProcess:
    """The pool interface, run in this process (``workers=0``: tests, notebooks, custom profiles)."""

    class _Done:
        def __init__(self, value: Any) -> None:
            self.value = value

        def ready(self) -> bool:
            return True

        def get(self) -> Any:
            return self.value

    def apply_async(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> _Done:
        return self._Done(fn(*args))

    def terminate(self) -> None:
        return None


@functools.lru_cache(maxsize=16)
def _task(name: str, sizes: tuple[tuple[str, int], ...], seed: int) -> Any:
    from ..zoo.tasks import build_task

    default = (("train", 1000), ("val", 200), ("test", 500))
    if name == "digits" and sizes == default:
        return build_task(name, seed=seed)  # the fixed split the zoo's ViTs pretrained on (train only)
    return build_task(name, seed=seed, sizes=dict(sizes))


@functools.lru_cache(maxsize=2)
def _suite(profile_name: str) -> dict[str, Any]:
    from ..zoo.tasks import rpp_suite

    p = get_profile(profile_name)
    return rpp_suite(seed=p.task_seed, source_per_class=dict(p.rpp_source_per_class),
                     target_per_class=p.rpp_target_per_class)  # fmt: skip


def _backbone(name: str) -> Any:
    """A fresh copy per run: full fine-tuning changes backbone weights, nothing else may see that."""
    from ..backbones.loader import load_backbone
    from ..backbones.spec import BackboneSpec

    if name not in _CTX["registry"]:
        raise KeyError(f"backbone {name!r} is not in the registry (has {', '.join(_CTX['registry'])})")
    return load_backbone(BackboneSpec.from_dict(_CTX["registry"][name]))


def execute(run: dict[str, Any]) -> dict[str, Any]:
    """Run one benchmark cell; never raises (a failure is a result with its traceback)."""
    import torch

    profile: BenchProfile = _CTX["profile"]
    device = torch.device(_CTX["device"])
    t0 = time.perf_counter()
    try:
        backbone = _backbone(run["backbone"])
        if run["table"] == "rpp":
            from .rpp_runs import run_rpp

            out = run_rpp(run, backbone, _suite(profile.name), profile, device)
        else:
            from .spt_runs import run_spt

            task = _task(run["task"], profile.task_sizes, profile.task_seed)
            out = run_spt(run, backbone, task, profile, device)
        out["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
        out = {
            "status": "error",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    out["wall_seconds"] = round(time.perf_counter() - t0, 3)
    out["device"] = str(device)
    out["pid"] = os.getpid()
    return {**run, **out}


# ---- scheduler side ----------------------------------------------------------------------------------


def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a kill: that run simply runs again
    return rows


def _run_phase(pool: Any, runs: list[dict[str, Any]], out: Path, deadline: float, workers: int,
               log: Callable[[str], None]) -> int:  # fmt: skip
    """Keep ``2 * workers`` runs in flight; stop submitting at the deadline; returns runs finished."""
    pending = list(runs)
    in_flight: list[Any] = []
    done = 0
    with out.open("a") as fh:
        while pending or in_flight:
            while pending and len(in_flight) < 2 * workers and time.time() < deadline:
                in_flight.append(pool.apply_async(execute, (pending.pop(0),)))
            if not in_flight:
                break
            ready = [r for r in in_flight if r.ready()]
            if not ready:
                if time.time() > deadline + GRACE_SECONDS:
                    log(f"[bench] {len(in_flight)} runs still in flight after the grace period: abandoned")
                    break
                time.sleep(0.05)
                continue
            for r in ready:
                in_flight.remove(r)
                row = r.get()
                fh.write(json.dumps(row, sort_keys=True) + "\n")
                fh.flush()
                done += 1
                status = row["status"] if row["status"] == "ok" else f"ERROR {row['error']}"
                log(f"[bench] {done}/{len(runs)} {row['table']} {row['backbone']} {row['task']} {row['method']} "
                    f"lr {row['lr']:g} seed {row['seed']}: val {row.get('val_acc', float('nan')):.3f} "
                    f"test {row.get('test_acc', float('nan')):.3f} ({row['wall_seconds']:.1f}s) {status}")  # fmt: skip
    return done


def run_bench(profile: str | BenchProfile, registry: str | Path, out_dir: str | Path, *, device: str = "cpu",
              workers: int = 1, threads: int = 1, max_minutes: float | None = None,
              methods: list[str] | None = None,
              log: Callable[[str], None] = print) -> list[dict[str, Any]]:  # fmt: skip
    """Run (or continue) a profile; returns every result row in ``out_dir/results.jsonl``.

    ``methods`` restricts this call to those table rows (the rest stay for a later call).
    """
    prof = profile if isinstance(profile, BenchProfile) else get_profile(profile)
    prof.check()
    if not Path(registry).is_file():
        raise FileNotFoundError(f"no backbone registry at {registry} (build the zoo first)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / RESULTS_NAME
    deadline = time.time() + (max_minutes * 60 if max_minutes else 1e12)
    if workers == 0:
        _init_worker(str(Path(registry).resolve()), prof, device, threads)
        return _schedule(_InProcess(), prof, results_path, deadline, 1, methods, log)
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    args = (str(Path(registry).resolve()), prof.name, device, threads)
    with ctx.Pool(workers, initializer=_init_worker, initargs=args, maxtasksperchild=50) as pool:
        rows = _schedule(pool, prof, results_path, deadline, workers, methods, log)
        pool.terminate()
    return rows


def _schedule(pool: Any, prof: BenchProfile, results_path: Path, deadline: float, workers: int,
              methods: list[str] | None, log: Callable[[str], None]) -> list[dict[str, Any]]:  # fmt: skip
    """Group by group: the select runs, then the seed runs at the chosen rates."""
    for group in run_groups(prof):
        for phase in ("select", "seed"):
            results = read_results(results_path)
            finished = {r["run_id"] for r in results if r.get("status") == "ok"}
            planned = select_runs(prof) if phase == "select" else seed_runs(prof, results)
            planned = [
                r for r in planned if r["backbone"] in group and (not methods or r["method"] in methods)
            ]
            todo = [r for r in planned if r["run_id"] not in finished]
            log(
                f"[bench] {'+'.join(group)} {phase}: {len(planned)} runs, {len(planned) - len(todo)} done before"
            )
            _run_phase(pool, todo, results_path, deadline, workers, log)
            if time.time() >= deadline:
                log("[bench] time budget spent: stopping (run again to continue)")
                return read_results(results_path)
    return read_results(results_path)
