"""The README's SDK example runs as written against the real stack (a tiny backbone, a small folder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.stack import Proc
from tests.e2e.conftest import Stack
from tests.e2e.test_readme import readme_blocks
from tests.sdk.conftest import digit_pngs

pytestmark = pytest.mark.services


def test_readme_sdk_example_runs(
    stack: Stack,
    worker: Proc,
    digits_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (block,) = readme_blocks("from promptune import Client")
    # Only the names that differ on a test machine: the backbone, the folder, the image.
    swaps = {"zoo-vit-mae-tiny": "demo-vit", '"digits/"': repr(str(digits_folder)), '"seven.png"': '"7.png"'}
    for old, new in swaps.items():
        assert old in block, old
        block = block.replace(old, new)
    (tmp_path / "7.png").write_bytes(digit_pngs(1)[0])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROMPTUNE_BASE_URL", stack.base_url)
    monkeypatch.setenv("PROMPTUNE_API_KEY", stack.key)
    exec(compile(block, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102 - our own README
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("status") for line in lines)  # the live events were printed
    macro_f1, label = lines[-2:]
    assert 0.0 <= float(macro_f1) <= 1.0 and label
