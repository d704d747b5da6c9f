"""The trainer's resume state mirrored to storage, so a worker on another host resumes a job exactly."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from app.core.storage import Storage, job_prefix

_STATE_NAME = re.compile(r"^state[A-Za-z0-9._-]*\.(json|safetensors)$")


class ResumeSync:
    """Mirrors the trainer's resume state (``work_dir``) to storage ``jobs/<job_id>/``.

    Tensor files go first, the JSON documents last, then ``index.json`` naming the files: a reader
    never sees an index pointing at a file that is not there yet. The trainer's own sha256 check
    (models/engine/state.py) catches anything torn.
    """

    def __init__(self, storage: Storage, job_id: str) -> None:
        self.storage = storage
        self.prefix = job_prefix(job_id)
        self._pushed: set[str] = set()

    def pull(self, work_dir: Path) -> bool:
        """Copy the stored state into ``work_dir``; False when there is none."""
        index_key = f"{self.prefix}/index.json"
        if not self.storage.exists(index_key):
            return False
        names = [n for n in json.loads(self.storage.read_bytes(index_key))["files"] if _STATE_NAME.match(n)]
        work_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            with self.storage.open(f"{self.prefix}/{name}") as src, open(work_dir / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        self._pushed = set(names)
        return bool(names)

    def push(self, work_dir: Path) -> None:
        from models import state_files

        files = state_files(work_dir)
        files.sort(key=lambda p: (p.suffix == ".json", p.name == "state.json"))
        for path in files:
            self.storage.put_file(f"{self.prefix}/{path.name}", path)
        names = sorted(p.name for p in files)
        self.storage.put_bytes(f"{self.prefix}/index.json", json.dumps({"files": names}).encode())
        for stale in self._pushed - set(names):
            self.storage.delete(f"{self.prefix}/{stale}")
        self._pushed = set(names)

    def clear(self) -> None:
        self.storage.delete_prefix(self.prefix)
