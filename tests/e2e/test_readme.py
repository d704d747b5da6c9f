"""The README's `models` library example runs as written (so the front page cannot rot)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_blocks(containing: str) -> list[str]:
    """The README's python code blocks that contain ``containing``."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return [block for block in blocks if containing in block]


def test_readme_library_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = readme_blocks("from models import")
    assert blocks, "README has no models example"
    full, small = (
        'write_digits_zip("var/sample/digits.zip")',
        'write_digits_zip("var/sample/digits.zip", per_class=20)',
    )
    assert full in blocks[0]
    code = blocks[0].replace(full, small)  # the same code on 200 digits instead of 1,797, to stay fast
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})  # noqa: S102 - our own README
    out = capsys.readouterr().out
    assert "'label':" in out and "'top_k':" in out
    assert (tmp_path / "var" / "digits-spt.safetensors").is_file()
