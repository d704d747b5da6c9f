"""``promptune bench`` / ``python -m models.bench``: build (or reuse) the zoo, run a benchmark profile,
write the report and plots. Imports only ``models`` (it runs on machines without the service installed)."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ZOO_PROFILE_FOR = {"quick": "quick", "cpu": "full", "cpu-rpp": "demo", "cpu-spt-small": "demo", "gpu": "gpu"}


def _hardware(device: str) -> str:
    import torch

    cpu = f"{os.cpu_count()} CPU cores ({platform.machine()})"
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, {cpu}, torch {torch.__version__}"
    return f"{cpu}, no GPU used, torch {torch.__version__}"


def _registry(args: argparse.Namespace) -> Path:
    if args.registry:
        return Path(args.registry)
    from ..zoo.build import REGISTRY_NAME, build_zoo
    from .plan import get_profile

    prof = get_profile(args.profile)
    zoo_profile = args.zoo_profile or ZOO_PROFILE_FOR[args.profile]
    # an RPP-only profile (cpu-rpp) needs the CLIP alone
    only = None if prof.spt_backbones or prof.length_backbones else [prof.rpp_backbone]
    build_zoo(args.zoo, profile=zoo_profile, only=only, device=args.device)  # writes ZOO/backbones.json
    return Path(args.zoo) / REGISTRY_NAME


def _run(args: argparse.Namespace) -> int:
    import torch

    from . import run_bench, write_report

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    registry = _registry(args)
    t0 = time.perf_counter()
    results = run_bench(args.profile, registry, args.out, device=device, workers=args.workers,
                        threads=args.threads, max_minutes=args.max_minutes,
                        methods=args.methods.split(",") if args.methods else None)  # fmt: skip
    minutes = (time.perf_counter() - t0) / 60
    ok = sum(r.get("status") == "ok" for r in results)
    print(f"[bench] {ok}/{len(results)} runs ok in results; this call took {minutes:.1f} min")
    if args.report:
        header = (f"# Benchmarks ({args.profile} profile)\n\nHardware: {_hardware(device)}.\n\n"
                  f"Command: `promptune {shlex.join(sys.argv[1:])}`\n")  # fmt: skip
        write_report(args.out, args.report, header=header, plots_dir=Path(args.report).parent)
        print(f"[bench] report {args.report}")
    return 0 if ok == len(results) else 1


def _report(args: argparse.Namespace) -> int:
    from . import write_report

    header = Path(args.header).read_text() if args.header else ""
    write_report(args.results, args.out, header=header, plots_dir=args.plots, also=args.also)
    print(f"[bench] report {args.out}")
    return 0


def _grad_norms(args: argparse.Namespace) -> int:
    import torch

    from .grad_norms import grad_norm_table, run_grad_norms
    from .plan import get_profile

    torch.set_num_threads(args.threads)
    result = run_grad_norms(args.registry, get_profile(args.profile), args.out, batches=args.batches,
                            batch_size=args.batch_size)  # fmt: skip
    print("\n".join(grad_norm_table(result)))
    print(f"[bench] gradient norms {args.out}")
    return 0


def add_bench_parser(sub: Any, name: str | None = None) -> None:
    """Add ``run`` and ``report`` to ``sub`` (or under a ``name`` sub-command, as ``promptune bench``)."""
    bench = sub
    if name is not None:
        p = sub.add_parser(name, help="benchmarks on the zoo: the SPT and RPP tables")
        bench = p.add_subparsers(dest="bench_command", required=True)
    r = bench.add_parser("run", help="run (or continue) a benchmark profile")
    r.add_argument("--profile", choices=sorted(ZOO_PROFILE_FOR), default="quick")
    r.add_argument("--zoo", default="zoo", help="zoo folder (built with the matching zoo profile if missing)")
    r.add_argument(
        "--zoo-profile", default=None, help="zoo profile (default: quick/full/gpu per bench profile)"
    )
    r.add_argument("--registry", default=None, help="use this backbones.json instead of building the zoo")
    r.add_argument("--out", default="bench-results", help="folder of results.jsonl (resumable)")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda")
    r.add_argument("--workers", type=int, default=1, help="worker processes")
    r.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    r.add_argument("--max-minutes", type=float, default=None, help="stop submitting runs after this long")
    r.add_argument("--methods", default=None, help="comma-separated rows to run now (default: all)")
    r.add_argument("--report", default=None, help="write the markdown report here (plots beside it)")
    r.set_defaults(func=_run)
    w = bench.add_parser("report", help="write the report and plots from results.jsonl")
    w.add_argument("--results", required=True, help="folder holding results.jsonl")
    w.add_argument("--out", required=True, help="markdown file to write")
    w.add_argument("--plots", default=None, help="folder for the PNG plots")
    w.add_argument("--header", default=None, help="markdown file prepended to the report")
    w.add_argument("--also", action="append", default=[],
                   help="another results folder appended as its own section (its header.md, plots, "
                        "grad_norms.json beside its results.jsonl); repeatable")  # fmt: skip
    w.set_defaults(func=_report)
    g = bench.add_parser("grad-norms", help="gradient norm of each prompt tensor per layer, every RPP row")
    g.add_argument("--profile", choices=sorted(ZOO_PROFILE_FOR), default="cpu-rpp")
    g.add_argument("--registry", required=True, help="backbones.json holding the profile's CLIP")
    g.add_argument("--out", required=True, help="JSON file to write (grad_norms.json)")
    g.add_argument("--batches", type=int, default=4, help="fixed source batches")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--threads", type=int, default=1, help="torch threads")
    g.set_defaults(func=_grad_norms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.bench")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
