"""The ``promptune`` command: serve, worker, migrate, keys, demo, bench, and the SDK's client verbs.

Every setting comes from ``PROMPTUNE_*`` environment variables (app/core/settings.py); the flags here
only choose what to run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime

from app.core.settings import get_settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run("app.main:app", host=args.host, port=args.port, workers=args.workers, proxy_headers=True)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from app.core.queue import worker_queues
    from app.core.settings import get_settings
    from worker.celery_app import app

    queues = ",".join(worker_queues(get_settings().worker_devices))  # jobs of every world size it can host
    argv = ["worker", f"--concurrency={args.concurrency}", f"--loglevel={args.loglevel}", "-Q", queues]
    if args.hostname:
        argv.append(f"--hostname={args.hostname}")
    app.worker_main(argv)
    return 0


def _train(args: argparse.Namespace) -> int:
    from worker.rank_main import run_from_args

    return run_from_args(args)


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


def _keys_list(args: argparse.Namespace) -> int:
    from app.core.db import repo
    from app.core.db.session import session_scope

    with session_scope(get_settings().resolved_database_url) as session:
        tenants = repo.list_tenants(session=session)
        if args.tenant is not None:
            tenants = [t for t in tenants if t.name == args.tenant]
            if not tenants:
                print(f"error: no tenant named {args.tenant!r}", file=sys.stderr)
                return 1
        print(f"{'TENANT':<24} {'PREFIX':<14} {'CREATED':<20} {'LAST USED':<20} STATUS")
        for tenant in tenants:
            for key in repo.list_api_keys(session=session, tenant_id=tenant.id):
                status = f"revoked {_when(key.revoked_at)}" if key.revoked_at else "active"
                print(
                    f"{tenant.name:<24} {key.prefix:<14} {_when(key.created_at):<20} "
                    f"{_when(key.last_used_at):<20} {status}"
                )
    return 0


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment is not None else "-"


def _keys_revoke(args: argparse.Namespace) -> int:
    from app.core.db import repo
    from app.core.db.session import session_scope
    from app.core.security import parse_prefix

    prefix = parse_prefix(args.key) or args.key  # a whole key or the prefix `keys list` shows
    with session_scope(get_settings().resolved_database_url) as session:
        tenant = repo.get_tenant_by_name(session=session, name=args.tenant)
        if tenant is None or not repo.revoke_api_key(session=session, tenant_id=tenant.id, prefix=prefix):
            print(f"error: tenant {args.tenant!r} has no key {prefix!r}", file=sys.stderr)
            return 1
    print(f"revoked key {prefix} of tenant {args.tenant}: requests with it now get 401")
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

    p = sub.add_parser(
        "worker",
        help="run a Celery worker for training jobs (queues by world size: PROMPTUNE_WORKER_DEVICES)",
    )
    p.add_argument("--concurrency", type=int, default=1, help="jobs run in parallel (one per GPU)")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--hostname", default=None, help="Celery node name (default: celery@<host>)")
    p.set_defaults(func=_worker)

    p = sub.add_parser(
        "train", help="run one job's rank under torchrun / PyTorchJob / srun (alone without one)"
    )
    from worker.rank_main import add_train_arguments

    add_train_arguments(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("migrate", help="upgrade the database schema to the latest revision")
    p.set_defaults(func=_migrate)

    p = sub.add_parser("keys", help="manage API keys")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("create", help="create an API key (and the tenant if needed); prints it once")
    k.add_argument("--tenant", required=True, help="tenant name")
    k.set_defaults(func=_keys_create)
    k = keys.add_parser("list", help="list API keys (prefix, created, last used, revoked); never the keys")
    k.add_argument("--tenant", default=None, help="only this tenant's (default: every tenant's)")
    k.set_defaults(func=_keys_list)
    k = keys.add_parser("revoke", help="revoke an API key at once")
    k.add_argument("--tenant", required=True, help="tenant name")
    k.add_argument("key", help="the key, or its prefix as `keys list` shows it")
    k.set_defaults(func=_keys_revoke)

    p = sub.add_parser(
        "demo", help="run everything locally: build the small pretrained zoo, tune SPT on digits, predict"
    )
    p.add_argument("--once", action="store_true", help="exit after the predictions instead of serving")
    p.add_argument("--port", type=int, default=8000, help="port for the API (a free one if taken)")
    p.set_defaults(func=_demo)
    _add_bench(sub)
    from promptune.cli import add_client_commands

    add_client_commands(sub)  # the client verbs: datasets, jobs, models, predict, zero-shot (docs/sdk.md)
    return parser


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from models.bench.cli import add_bench_parser

    add_bench_parser(sub, "bench")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
