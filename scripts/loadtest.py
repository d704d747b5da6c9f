"""Bounded load test on loopback: job status and prediction endpoints of a real uvicorn (prints figures).

    python scripts/loadtest.py                              # SQLite, 8 concurrent clients
    python scripts/loadtest.py --database both --json var/loadtest.json
    python scripts/loadtest.py --status-requests 5000 --predict-requests 1000 --concurrency 16

It builds a world in a temp folder (tests/reliability/world.py: an uploaded dataset, an SPT model and an
RPP model trained by the worker code on tiny random-init backbones, all through the service's own code),
starts ``uvicorn app.main:app`` in a subprocess on that database and storage, and runs one closed-loop
phase per endpoint (tests/reliability/load.py). The load generator and the server share this machine's
cores, so the figures are for this machine, not a capacity plan.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: tests/ is a package

from fastapi.testclient import TestClient  # noqa: E402

from app.main import create_app  # noqa: E402
from tests.reliability.load import HEADER, as_dict, run_all, uvicorn_process  # noqa: E402
from tests.reliability.world import build_world, world_settings  # noqa: E402


def run_database(kind: str, root: Path, args: argparse.Namespace) -> list[dict[str, object]]:
    postgres = None
    url = None
    if kind == "postgresql":
        from tests.services import start_postgres

        postgres = start_postgres()
        url = postgres.create_database()
    try:
        settings = world_settings(root / kind, database_url=url)
        with TestClient(create_app(settings, enqueue=lambda _: None)) as client:
            world = build_world(client, settings, rpp=True, queued_job=False, tenant="load")  # type: ignore[arg-type]  # TestClient.post is wider than the protocol
        requests = {"GET": args.status_requests, "POST": args.predict_requests}
        with uvicorn_process(settings, workers=args.workers) as base:
            results = run_all(base, world, requests=requests, concurrency=args.concurrency)
    finally:
        if postgres is not None:
            postgres.stop()
    print(f"\n{kind}, uvicorn --workers {args.workers}, {args.concurrency} concurrent clients:\n{HEADER}")
    for result in results:
        print(result.row())
    return [{"database": kind, "workers": args.workers, **as_dict(r)} for r in results]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--status-requests", type=int, default=2000, help="requests to GET /v1/jobs/{id}")
    parser.add_argument("--predict-requests", type=int, default=500, help="requests to each predict phase")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="promptune-load-") as tmp:
        for kind in kinds:
            rows.extend(run_database(kind, Path(tmp), args))
    errors = sum(int(str(r["errors"])) for r in rows)
    print(f"\nmachine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
