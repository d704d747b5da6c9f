"""Light parts stay light: storage, settings, the database layer and the library's errors, configs and atomic
write import without torch (a subprocess that only writes a file, or `promptune keys create`, must not
pay a second or more for the ML stack). The library loads its heavy parts on first use."""

from __future__ import annotations

import subprocess
import sys

from tests.architecture.imports import ROOT

LIGHT = (
    "app.core.storage",
    "app.core.settings",
    "app.core.db.repo",
    "app.core.db.migrate",
    "app.core.status",
    "models.errors",
    "models.fileio",
    "models.config",
)


def _imported_after(modules: tuple[str, ...], probe: str) -> list[str]:
    code = f"import sys, {', '.join(modules)}; {probe}"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout.split()


def test_light_modules_do_not_import_torch() -> None:
    heavy = _imported_after(LIGHT, "print(*[m for m in ('torch', 'open_clip', 'timm') if m in sys.modules])")
    assert heavy == []


def test_the_library_still_loads_everything_on_first_use() -> None:
    loaded = _imported_after(
        ("models",), "from models import TrainConfig, list_methods; print(*list_methods())"
    )
    assert {"rpp", "spt"} <= set(loaded)
