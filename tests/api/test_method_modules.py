"""Method modules named by ``PROMPTUNE_METHOD_MODULES``: a bad one stops start-up by name, a good one is served.

The good one is tests/plugins/linear_head_method.py, a method written outside ``models/`` against the public
``models`` package only. Python imports a module once per process, so these tests pass whether or not another
test (or an earlier ``create_app``) imported it first.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.methods import MethodModuleError
from app.core.settings import Settings
from app.main import create_app
from models import get_method, list_methods

PLUGIN = "tests.plugins.linear_head_method"
PLUGIN_FILE = Path(__file__).resolve().parents[1] / "plugins" / "linear_head_method.py"
OUR_PACKAGES = ("app", "worker", "models", "devstack", "migrations", "tests")


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        ("tests.plugins.no_such_module", "ModuleNotFoundError"),
        ("tests.plugins.broken_method", "RuntimeError: broken_method refuses to load"),
    ],
)
def test_a_module_that_cannot_be_imported_stops_start_up(module: str, reason: str, tmp_path: Path) -> None:
    settings = Settings(environment="test", data_dir=tmp_path, method_modules=f" {PLUGIN} , {module} ")
    for _ in range(2):  # a failed import is not remembered as loaded: it fails every time
        with pytest.raises(MethodModuleError) as raised:
            create_app(settings)
        assert repr(module) in str(raised.value) and "PROMPTUNE_METHOD_MODULES" in str(raised.value)
        assert reason in str(raised.value)
    assert module not in sys.modules


def test_the_plugin_uses_only_the_public_models_package() -> None:
    tree = ast.parse(PLUGIN_FILE.read_text(encoding="utf-8"))
    ours: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        ours += [name for name in names if name.split(".")[0] in OUR_PACKAGES]
    assert ours and set(ours) == {"models"}, ours


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_plugin_method_is_served(settings: Settings, headers_a: dict[str, str]) -> None:
    importlib.import_module(PLUGIN)  # as if another test had imported it first: must not register twice
    app = create_app(settings.model_copy(update={"method_modules": PLUGIN}))
    create_app(settings.model_copy(update={"method_modules": PLUGIN}))  # a second app, same process
    assert "linear_head" in list_methods() and get_method("linear_head").family == "timm"
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/v1/methods").status_code == 401
        response = client.get("/v1/methods", headers=headers_a)
        assert response.status_code == 200, response.text
        methods = {m["name"]: m for m in response.json()["data"]}
        assert {"rpp", "spt", "linear_head"} <= set(methods)
        pool = methods["linear_head"]["config_schema"]["properties"]["pool"]
        assert pool["enum"] == ["token", "mean"]
        assert client.get("/v1/methods/linear_head", headers=headers_a).json() == methods["linear_head"]
