"""What each client verb does: one function per verb, taking the parsed arguments, returning the exit code."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from promptune._client import Client
from promptune._errors import PromptuneError
from promptune._types import Page
from promptune.cli import output

Handler = Callable[[argparse.Namespace, Client], int | None]


class UsageError(Exception):
    """A bad argument found after parsing (exit status 2, like argparse's own)."""


def guarded(handler: Handler) -> Callable[[argparse.Namespace], int]:
    """Run ``handler`` with a client from the arguments; errors become ``error: <code>: <message>``."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            with Client(getattr(args, "base_url", None), getattr(args, "api_key", None)) as client:
                return int(handler(args, client) or 0)
        except UsageError as exc:
            print(f"error: usage: {exc}", file=sys.stderr)
            return 2
        except PromptuneError as exc:
            param = getattr(exc, "param", None)
            param = f" (param {param})" if param else ""
            print(f"error: {exc.code}: {exc.message}{param}", file=sys.stderr)
            return 1
        except (ValueError, TypeError) as exc:  # bad input the SDK refused before sending anything
            print(f"error: invalid_argument: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"error: os_error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130

    return run


def _json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def _show_page(args: argparse.Namespace, page: Page[Any], columns: Callable[[Any], list[str]]) -> None:
    if _json(args):
        output.print_json(
            {"data": [item.raw for item in page], "has_more": page.has_more, "next_cursor": page.next_cursor}
        )
        return
    output.print_table([columns(item) for item in page])
    if page.has_more:
        print(f"(more: --cursor {page.next_cursor})", file=sys.stderr)


# Datasets


def datasets_upload(args: argparse.Namespace, client: Client) -> None:
    path = Path(args.path)
    if not path.exists():
        raise UsageError(f"no such file or folder: {path}")
    dataset = client.datasets.upload(path, name=args.name, idempotency_key=args.idempotency_key)
    output.show(args, dataset, output.dataset_line)


def datasets_list(args: argparse.Namespace, client: Client) -> None:
    _show_page(args, client.datasets.list(limit=args.limit, cursor=args.cursor), output.dataset_row)


def datasets_get(args: argparse.Namespace, client: Client) -> None:
    output.show(args, client.datasets.get(args.dataset_id), output.dataset_line)


def datasets_delete(args: argparse.Namespace, client: Client) -> None:
    client.datasets.delete(args.dataset_id)
    output.show_done(args, {"id": args.dataset_id, "deleted": True}, f"deleted dataset {args.dataset_id}")


# Jobs


def parse_config(raw: str | None, settings: list[str]) -> dict[str, Any]:
    """``--config`` JSON, then each ``--set key=value`` (VALUE as JSON when it parses, else text)."""
    config: dict[str, Any] = {}
    if raw:
        try:
            config = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--config is not valid JSON: {exc}") from None
        if not isinstance(config, dict):
            raise UsageError("--config must be a JSON object")
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set takes KEY=VALUE, not {item!r}")
        try:
            config[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            config[key.strip()] = value
    return config


def jobs_create(args: argparse.Namespace, client: Client) -> int:
    job = client.jobs.create(
        method=args.method,
        backbone=args.backbone,
        dataset_id=args.dataset_id,
        config=parse_config(args.config, args.settings),
        seed=args.seed,
        idempotency_key=args.idempotency_key,
    )
    if not args.watch:
        output.show(args, job, output.job_line)
        return 0
    if not _json(args):
        print(f"job {job.id} queued ({job.method} on {job.backbone})")
    return _watch(args, client, job.id)


def jobs_list(args: argparse.Namespace, client: Client) -> None:
    page = client.jobs.list(
        status=args.status,
        method=args.method,
        backbone=args.backbone,
        dataset_id=args.dataset_id,
        limit=args.limit,
        cursor=args.cursor,
    )
    _show_page(args, page, output.job_row)


def jobs_get(args: argparse.Namespace, client: Client) -> None:
    output.show(args, client.jobs.get(args.job_id), output.job_line)


def jobs_cancel(args: argparse.Namespace, client: Client) -> None:
    output.show(args, client.jobs.cancel(args.job_id), output.job_line)


def jobs_watch(args: argparse.Namespace, client: Client) -> int:
    return _watch(args, client, args.job_id)


def _watch(args: argparse.Namespace, client: Client, job_id: str) -> int:
    """Follow the job to its end; exit 1 (with its error) unless it succeeded."""
    job = output.watch(client, job_id, as_json=_json(args))
    if job.status != "succeeded":
        code = job.error.code if job.error else job.status
        message = job.error.message if job.error else f"job {job.id} {job.status}"
        print(f"error: {code}: {message}", file=sys.stderr)
        return 1
    return 0


# Models and predictions


def models_list(args: argparse.Namespace, client: Client) -> None:
    page = client.models.list(
        method=args.method, backbone=args.backbone, job_id=args.job_id, limit=args.limit, cursor=args.cursor
    )
    _show_page(args, page, output.model_row)


def models_get(args: argparse.Namespace, client: Client) -> None:
    output.show(args, client.models.get(args.model_id), output.model_line)


def models_delete(args: argparse.Namespace, client: Client) -> None:
    client.models.delete(args.model_id)
    output.show_done(args, {"id": args.model_id, "deleted": True}, f"deleted model {args.model_id}")


def models_report(args: argparse.Namespace, client: Client) -> None:
    report = client.models.report(args.model_id)
    if _json(args):
        output.print_json(report.raw)
    else:
        output.print_report(report)


def models_download(args: argparse.Namespace, client: Client) -> None:
    dest = client.models.download(args.model_id, args.dest)
    files = (
        [dest.name]
        if dest.is_file()
        else sorted(p.name for p in dest.iterdir() if not p.name.startswith("."))
    )
    summary = {"model_id": args.model_id, "path": str(dest), "files": files}
    output.show_done(args, summary, f"model {args.model_id} -> {dest} ({', '.join(files)})")


def _check_images(images: list[str]) -> list[str]:
    missing = [image for image in images if not Path(image).is_file()]
    if missing:
        raise UsageError(f"no such image file: {', '.join(missing)}")
    return images


def predict(args: argparse.Namespace, client: Client) -> None:
    images = _check_images(args.images)
    predictions = client.models.predict(args.model_id, images, top_k=args.top_k)
    output.print_predictions(images, predictions, as_json=_json(args))


def zero_shot(args: argparse.Namespace, client: Client) -> None:
    images = _check_images(args.images)
    classes = [name.strip() for name in args.classes.split(",") if name.strip()]
    if not classes:
        raise UsageError("--classes needs at least one class name (comma-separated)")
    templates = None
    if args.templates:
        try:
            templates = json.loads(args.templates)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--templates is not valid JSON: {exc}") from None
    predictions = client.predict.zero_shot(
        images, classes, templates=templates, backbone=args.backbone, model_id=args.model_id, top_k=args.top_k
    )
    output.print_predictions(images, predictions, as_json=_json(args))


# Catalogue


def backbones_list(args: argparse.Namespace, client: Client) -> None:
    available = True if args.available else None
    page = client.backbones.list(family=args.family, kind=args.kind, available=available)
    _show_page(args, page, output.backbone_row)
