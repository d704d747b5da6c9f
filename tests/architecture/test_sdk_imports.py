"""The SDK (``promptune/``) is a client: it imports httpx and the standard library only, never the service.

Read from the source (every import, lazy ones included): Pillow only inside a function (for callers that
pass PIL images), rich only inside functions of the CLI package ``promptune.cli``. And at run time,
importing the SDK and its CLI loads no part of the service or the ML stack.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.architecture.imports import ROOT, Edge, imports_of, module_name, within

SDK = ROOT / "promptune"
ALLOWED = {"httpx", "promptune", "__future__"} | set(sys.stdlib_module_names)
LAZY_ONLY = {"PIL": "promptune", "rich": "promptune.cli"}  # import -> where it may appear, inside functions
SERVICE = (
    "app",
    "worker",
    "models",
    "devstack",
    "migrations",
    "torch",
    "fastapi",
    "sqlalchemy",
    "pydantic",
    "PIL",
)


def _sdk_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(SDK.rglob("*.py"))}


def _function_lines(path: Path) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def _edges() -> list[tuple[Edge, bool]]:
    """Every import of the SDK, with whether it sits inside a function (runs only when called)."""
    modules = _sdk_modules()
    out = []
    for module, path in modules.items():
        lazy_lines = _function_lines(path)
        out += [(edge, edge.line in lazy_lines) for edge in imports_of(module, path, set(modules))]
    return out


def test_the_sdk_imports_httpx_and_the_standard_library_only() -> None:
    edges = _edges()
    assert len({e.source for e, _ in edges}) >= 10  # the walk found the package
    wrong = []
    for edge, lazy in edges:
        top = edge.target.split(".")[0]
        if top in LAZY_ONLY:
            if not (lazy and within(edge.source, LAZY_ONLY[top])):
                wrong.append(
                    f"{edge.source}:{edge.line} imports {edge.target} (allowed lazily in {LAZY_ONLY[top]})"
                )
        elif top not in ALLOWED:
            wrong.append(f"{edge.source}:{edge.line} imports {edge.target}")
    assert wrong == []


def test_rich_is_the_clis_alone() -> None:
    users = {edge.source for edge, _ in _edges() if edge.target.split(".")[0] == "rich"}
    assert users and all(within(source, "promptune.cli") for source in users)


def test_importing_the_sdk_and_its_cli_loads_nothing_of_the_service() -> None:
    probe = f"import sys, promptune, promptune.cli; print(*sorted({{m.split('.')[0] for m in sys.modules}} & {set(SERVICE)!r}))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.split() == []
