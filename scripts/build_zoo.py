#!/usr/bin/env python3
"""Build Promptune's own pretrained zoo (tiny CLIP, supervised ViT, MAE ViT) and its backbones registry.

    python scripts/build_zoo.py                      # quick profile (about a minute), into ./zoo
    python scripts/build_zoo.py --profile full       # the real runs (~20 min per model on 2 CPU cores)
    python scripts/build_zoo.py --only zoo-clip-tiny --out /data/zoo --device cuda

Cached builds (same recipe, same sha256) are reused; --force rebuilds. The registry is written to
OUT/backbones.json (point PROMPTUNE_BACKBONES_FILE at it). See docs/zoo.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from models.zoo.build import PROFILES, RECIPES, build_zoo

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="zoo", help="output folder (default: ./zoo)")
    parser.add_argument("--profile", choices=PROFILES, default="quick")
    parser.add_argument(
        "--only", action="append", choices=sorted(RECIPES), help="build only this (repeatable)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if a matching build is cached")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--max-steps", type=int, default=None, help="override every recipe's step budget")
    parser.add_argument("--max-seconds", type=float, default=None, help="add a wall-time budget per model")
    parser.add_argument("--data-workers", type=int, default=None, help="processes rendering world batches")
    parser.add_argument("--no-eval", action="store_true", help="skip the CLIP zero-shot evaluation")
    parser.add_argument("--registry", default=None, help="registry path (default: OUT/backbones.json)")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    extra = {}
    if args.max_steps is not None:
        extra["max_steps"] = args.max_steps
    if args.max_seconds is not None:
        extra["max_seconds"] = args.max_seconds
    if args.data_workers is not None:
        extra["data_workers"] = args.data_workers
    names = args.only or list(RECIPES)
    result = build_zoo(
        args.out,
        profile=args.profile,
        only=names,
        force=args.force,
        device=args.device,
        overrides={n: dict(extra) for n in names} if extra else None,
        evaluate=not args.no_eval,
        registry_path=args.registry,
    )
    print(f"[zoo] built {result['built'] or 'nothing'}; cached {result['cached'] or 'nothing'}")
    for name, manifest in result["manifests"].items():
        line = f"[zoo] {name}: {manifest['steps']} steps, {manifest['train_seconds']} s, sha256 {manifest['sha256'][:16]}"
        zs = manifest.get("zero_shot", {}).get("mean")
        if zs:
            line += f"; zero-shot mean {zs['pretrained']:.3f} (random init {zs['random_init']:.3f})"
        print(line)
    registry = Path(args.registry) if args.registry else Path(args.out) / "backbones.json"
    print(f"[zoo] registry {registry.resolve()}: {json.dumps(sorted(result['registry']))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
