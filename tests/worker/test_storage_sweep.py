"""Killed writers leave temp files and staging folders; the reaper's sweep deletes the old ones only."""

from __future__ import annotations

import os
import time
from pathlib import Path

from app.core.settings import Settings
from app.core.storage import LocalStorage, make_storage
from worker.reaper import sweep_storage


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_sweep_deletes_abandoned_temp_files_and_staging_folders_but_keeps_live_data(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    src = tmp_path / "model.bin"
    src.write_bytes(b"weights")
    storage.put_file("models/t1/m1.safetensors", src)
    target = storage.get_local_path("models/t1/m1.safetensors")
    old_tmp = target.with_name(f".{target.name}.deadbeef.tmp")  # what a SIGKILLed put_file leaves
    old_tmp.write_bytes(b"half")
    fresh_tmp = target.with_name(f".{target.name}.cafebabe.tmp")  # a write in progress right now
    fresh_tmp.write_bytes(b"half")
    old_stage = storage.staging_dir()
    (old_stage / "part.png").write_bytes(b"x")
    fresh_stage = storage.staging_dir()
    for path in (old_tmp, old_stage):
        _age(path, 7200)

    assert storage.sweep_abandoned(3600) == 2
    assert not old_tmp.exists() and not old_stage.exists()
    assert fresh_tmp.exists() and fresh_stage.exists()
    assert storage.read_bytes("models/t1/m1.safetensors") == b"weights"  # live objects untouched
    assert storage.sweep_abandoned(3600) == 0


def test_reaper_sweep_uses_the_configured_age(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, storage_sweep_after_seconds=60)
    store = make_storage(settings.storage_url, settings.data_dir)
    assert isinstance(store, LocalStorage)
    leftover = store.root / "models" / ".x.safetensors.0123.tmp"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half")
    assert sweep_storage(settings) == 0  # younger than 60 s
    _age(leftover, 120)
    assert sweep_storage(settings) == 1 and not leftover.exists()
