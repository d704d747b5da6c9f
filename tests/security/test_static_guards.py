"""Static guards over the shipped source (models/, app/, worker/): nothing may unpickle untrusted bytes.

Every ``.py`` file is parsed with ``ast`` and each call is resolved through the file's imports, so
``import torch as t; t.load(p)`` and ``from pickle import loads`` are caught as well as the plain
spellings. The guards themselves are tested on snippets first, so that a guard that matches nothing
cannot pass silently.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from app.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("models", "app", "worker")
# Anything that turns bytes into arbitrary Python objects.
PICKLE_CALLS = {
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "_pickle.load",
    "_pickle.loads",
    "_pickle.Unpickler",
    "cPickle.load",
    "cPickle.loads",
    "dill.load",
    "dill.loads",
    "joblib.load",
    "pandas.read_pickle",
    "shelve.open",
}
TORCH_LOADS = {"torch.load", "torch.serialization.load"}
PICKLE_CONTENT = {"pickle", "application/x-python-serialize"}
CELERY_CONTENT_KEYS = {
    "accept_content",
    "result_accept_content",
    "task_serializer",
    "result_serializer",
    "event_serializer",
    "serializer",
    "CELERY_ACCEPT_CONTENT",
    "CELERY_TASK_SERIALIZER",
    "CELERY_RESULT_SERIALIZER",
}


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted module path, from every import statement in the file."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _is_true(call: ast.Call, keyword: str) -> bool:
    return any(
        kw.arg == keyword and isinstance(kw.value, ast.Constant) and kw.value.value is True
        for kw in call.keywords
    )


def _celery_pickle(node: ast.AST) -> bool:
    """A keyword argument, dict entry or assignment whose key is a Celery content setting and whose value
    names pickle."""
    pairs: list[tuple[str | None, ast.AST]] = []
    if isinstance(node, ast.Call):
        pairs = [(kw.arg, kw.value) for kw in node.keywords]
    elif isinstance(node, ast.Dict):
        pairs = [
            (k.value if isinstance(k, ast.Constant) else None, v)
            for k, v in zip(node.keys, node.values, strict=True)
            if k
        ]
    elif isinstance(node, ast.Assign | ast.AnnAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
            if node.value is not None:
                pairs.append((name, node.value))
    for key, value in pairs:
        if not isinstance(key, str) or key not in CELERY_CONTENT_KEYS:
            continue
        for sub in ast.walk(value):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and sub.value in PICKLE_CONTENT:
                return True
    return False


def findings(source: str, filename: str = "<snippet>") -> list[str]:
    """Every unsafe deserialisation in ``source``, as ``file:line: what``."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    out: list[str] = []
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if _celery_pickle(node):
            out.append(f"{where}: Celery setting accepts pickle")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        if name in TORCH_LOADS and not _is_true(node, "weights_only"):
            out.append(f"{where}: {name}(...) without weights_only=True")
        elif name in PICKLE_CALLS:
            out.append(f"{where}: {name}(...)")
        elif name in ("numpy.load", "np.load") and _is_true(node, "allow_pickle"):
            out.append(f"{where}: numpy.load(allow_pickle=True)")
    return out


def shipped_files() -> list[Path]:
    files = [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    return [p for p in files if "__pycache__" not in p.parts]


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load('x.pt')",
        "import torch\ntorch.load('x.pt', weights_only=False)",
        "import torch as t\nt.load(f, map_location='cpu')",
        "from torch import load\nload('x')",
        "from torch import load as tl\ntl('x', weights_only=flag)",
        "import torch\ntorch.serialization.load('x')",
        "import torch\nkw = {}\ntorch.load('x', **kw)",
        "import pickle\npickle.load(fh)",
        "import pickle as p\np.loads(b)",
        "from pickle import loads\nloads(b)",
        "from pickle import Unpickler\nUnpickler(fh).load()",
        "import pickle\nclass U(pickle.Unpickler):\n    pass\npickle.Unpickler(fh)",
        "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
        "app.conf.update(accept_content=['json', 'pickle'])",
        "app.conf.update(task_serializer='pickle')",
        "conf = {'result_accept_content': ['application/x-python-serialize']}",
        "app.conf.accept_content = ['pickle']",
    ],
)
def test_the_guard_catches_each_unsafe_pattern(snippet: str) -> None:
    assert findings(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load('x.pt', map_location='cpu', weights_only=True)",
        "from safetensors.torch import load_file\nload_file('x')",
        "import json\njson.load(fh)",
        "import numpy as np\nnp.load('a.npz')",
        "app.conf.update(accept_content=['json'], task_serializer='json')",
        "import yaml\nx = 'pickle'",
    ],
)
def test_the_guard_accepts_safe_code(snippet: str) -> None:
    assert findings(snippet) == []


def test_shipped_source_never_unpickles() -> None:
    files = shipped_files()
    assert len(files) >= 40, [str(p) for p in files]  # the three packages were found
    problems = [
        f for path in files for f in findings(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]
    assert problems == []


def test_the_only_torch_load_is_weights_only() -> None:
    """The guard saw the one legitimate torch.load (legacy weight files), so it really inspected calls."""
    hits = []
    for path in shipped_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = _aliases(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _dotted(node.func, aliases) in TORCH_LOADS:
                assert _is_true(node, "weights_only"), f"{path}:{node.lineno}"
                hits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert hits, "no torch.load call found at all: the guard's name resolution is broken"


def test_the_configured_celery_app_accepts_json_only(tmp_path: Path) -> None:
    """The runtime configuration, not just the source: every serializer and accepted content is JSON."""
    from app.core.queue import create_celery_app

    settings = Settings(environment="test", data_dir=tmp_path, redis_url="redis://127.0.0.1:9/0")
    conf = create_celery_app(settings).conf
    assert list(conf.accept_content) == ["json"]
    assert list(conf.result_accept_content) == ["json"]
    assert conf.task_serializer == "json" and conf.result_serializer == "json"
    assert conf.event_serializer == "json"
