"""The client verbs of the ``promptune`` command, on the SDK: datasets, jobs, models, predict, zero-shot.

``add_client_commands(subparsers)`` adds them to a parser (the server's ``promptune`` command adds them to
its own); ``main(argv)`` is ``python -m promptune``. Options every verb takes: ``--base-url``,
``--api-key`` (else ``PROMPTUNE_BASE_URL`` / ``PROMPTUNE_API_KEY``) and ``--json``. An error prints
``error: <code>: <message>`` on stderr and exits 1 (2 for usage errors). ``rich`` is imported here only,
and only to draw a live progress bar on a terminal.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from promptune.cli import commands as c

_SUPPRESS = argparse.SUPPRESS


def _common() -> argparse.ArgumentParser:
    # SUPPRESS defaults: an option given before the verb is not reset by the verb's parser.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--base-url", default=_SUPPRESS, help="the server (default: $PROMPTUNE_BASE_URL)")
    common.add_argument("--api-key", default=_SUPPRESS, help="the API key (default: $PROMPTUNE_API_KEY)")
    common.add_argument("--json", action="store_true", default=_SUPPRESS, help="machine-readable output")
    return common


def _verb(group: Any, name: str, func: Any, help_text: str, common: argparse.ArgumentParser) -> Any:
    parser = group.add_parser(name, help=help_text, parents=[common], description=help_text)
    parser.set_defaults(func=c.guarded(func))
    return parser


def _datasets(sub: Any, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("datasets", help="upload, list, get and delete datasets").add_subparsers(
        dest="datasets_command", required=True
    )
    p = _verb(
        group, "upload", c.datasets_upload, "upload a dataset: a folder (zipped on the fly) or a .zip", common
    )
    p.add_argument("path", help="a folder (<class>/<image>, optionally under train/ val/ test/) or a .zip")
    p.add_argument("--name", help="the dataset's name (default: the folder's or file's)")
    p.add_argument("--idempotency-key", help="a retry with the same key returns the same dataset")
    p = _verb(group, "list", c.datasets_list, "list datasets, newest first", common)
    _paging(p)
    for name, func, text in (
        ("get", c.datasets_get, "show a dataset"),
        ("delete", c.datasets_delete, "delete a dataset"),
    ):
        _verb(group, name, func, text, common).add_argument("dataset_id")


def _jobs(sub: Any, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("jobs", help="create, list, follow and cancel training jobs").add_subparsers(
        dest="jobs_command", required=True
    )
    p = _verb(group, "create", c.jobs_create, "queue a training job", common)
    p.add_argument("--method", required=True, help="e.g. spt, rpp (GET /v1/methods)")
    p.add_argument("--backbone", required=True, help="a registered backbone (GET /v1/backbones)")
    p.add_argument("--dataset", required=True, dest="dataset_id", help="the dataset id")
    p.add_argument("--config", help="the job config as JSON, e.g. '{\"epochs\": 5}'")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="settings",
        help="one config field (repeatable); VALUE is read as JSON when it parses, else as text",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--idempotency-key", help="a retry with the same key returns the same job")
    p.add_argument("--watch", action="store_true", help="follow the job's progress until it ends")
    p = _verb(group, "list", c.jobs_list, "list jobs, newest first", common)
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    p.add_argument("--method")
    p.add_argument("--backbone")
    p.add_argument("--dataset", dest="dataset_id")
    _paging(p)
    for name, func, text in (
        ("get", c.jobs_get, "show a job"),
        ("cancel", c.jobs_cancel, "cancel a job"),
        ("watch", c.jobs_watch, "follow a job live (progress, loss, accuracy) until it ends"),
    ):
        _verb(group, name, func, text, common).add_argument("job_id")


def _models(sub: Any, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("models", help="list, show, download and report tuned models").add_subparsers(
        dest="models_command", required=True
    )
    p = _verb(group, "list", c.models_list, "list tuned models, newest first", common)
    p.add_argument("--method")
    p.add_argument("--backbone")
    p.add_argument("--job", dest="job_id")
    _paging(p)
    _verb(group, "get", c.models_get, "show a tuned model", common).add_argument("model_id")
    _verb(group, "report", c.models_report, "show a model's evaluation report", common).add_argument(
        "model_id"
    )
    _verb(group, "delete", c.models_delete, "delete a tuned model", common).add_argument("model_id")
    p = _verb(group, "download", c.models_download, "download a model's archive", common)
    p.add_argument("model_id")
    p.add_argument("dest", help="a folder to extract into, or a path ending in .zip to keep the archive")


def _predictions(sub: Any, common: argparse.ArgumentParser) -> None:
    p = _verb(sub, "predict", c.predict, "classify images with a tuned model", common)
    p.add_argument("model_id")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=int)
    p = _verb(sub, "zero-shot", c.zero_shot, "classify images among class names (open_clip backbone)", common)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--classes", required=True, help="comma-separated class names, e.g. cat,dog,car")
    p.add_argument("--templates", help="JSON list of prompt templates, e.g. '[\"a photo of a {}\"]'")
    p.add_argument("--backbone")
    p.add_argument("--model", dest="model_id", help="a model of a zero-shot method (e.g. rpp)")
    p.add_argument("--top-k", type=int)


def _backbones(sub: Any, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("backbones", help="the backbones the server offers").add_subparsers(
        dest="backbones_command", required=True
    )
    p = _verb(group, "list", c.backbones_list, "list backbones: family, kind, availability, size", common)
    p.add_argument("--family", choices=["open_clip", "timm"])
    p.add_argument("--kind", help="clip, supervised, mae or moco")
    p.add_argument("--available", action="store_true", help="only those that can load now")


def _paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=20, help="items per page (default 20)")
    parser.add_argument("--cursor", help="the next_cursor of a previous page")


def add_client_commands(subparsers: Any) -> None:
    """Add the client verbs to ``subparsers`` (from ``parser.add_subparsers()``); each verb sets ``func``,
    which returns the exit code."""
    common = _common()
    _datasets(subparsers, common)
    _jobs(subparsers, common)
    _models(subparsers, common)
    _predictions(subparsers, common)
    _backbones(subparsers, common)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="promptune", parents=[_common()], description="The Promptune API client."
    )
    add_client_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
