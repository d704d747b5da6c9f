"""The ``promptune`` command: serve, worker, migrate, keys, demo.

Every setting comes from ``PROMPTUNE_*`` environment variables (app/core/settings.py); the flags here
only choose what to run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from app.core.settings import get_settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run("app.main:app", host=args.host, port=args.port, workers=args.workers, proxy_headers=True)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from worker.celery_app import JOBS_QUEUE, app

    argv = ["worker", f"--concurrency={args.concurrency}", f"--loglevel={args.loglevel}", "-Q", JOBS_QUEUE]
    if args.hostname:
        argv.append(f"--hostname={args.hostname}")
    app.worker_main(argv)
    return 0


def _migrate(_: argparse.Namespace) -> int:
    from app.core.db.migrate import upgrade

    upgrade()
    print("database migrated to head")
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from app.core.db import repo
    from app.core.db.session import session_scope

    with session_scope(get_settings().resolved_database_url) as session:
        tenant = repo.get_or_create_tenant(session=session, name=args.tenant)
        _, key = repo.create_api_key(session=session, tenant_id=tenant.id)
    print(f"tenant: {args.tenant}")
    print(f"api key (shown once, store it now): {key}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from devstack.demo import run_demo

    return run_demo(once=args.once, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptune", description="Prompt learning as a service.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the REST API (uvicorn app.main:app)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.set_defaults(func=_serve)

    p = sub.add_parser("worker", help="run a Celery worker for training jobs (queue 'jobs')")
    p.add_argument("--concurrency", type=int, default=1, help="jobs run in parallel (one per GPU)")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--hostname", default=None, help="Celery node name (default: celery@<host>)")
    p.set_defaults(func=_worker)

    p = sub.add_parser("migrate", help="upgrade the database schema to the latest revision")
    p.set_defaults(func=_migrate)

    p = sub.add_parser("keys", help="manage API keys")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("create", help="create an API key (and the tenant if needed); prints it once")
    k.add_argument("--tenant", required=True, help="tenant name")
    k.set_defaults(func=_keys_create)

    p = sub.add_parser(
        "demo", help="run everything locally: build the small pretrained zoo, tune SPT on digits, predict"
    )
    p.add_argument("--once", action="store_true", help="exit after the predictions instead of serving")
    p.add_argument("--port", type=int, default=8000, help="port for the API (a free one if taken)")
    p.set_defaults(func=_demo)
    _add_bench(sub)
    return parser


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from models.bench.cli import add_bench_parser

    add_bench_parser(sub, "bench")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
