"""Torn and tampered checkpoints never load: every attempt is refused with an error code, never a 500.

The model is trained by the real worker code (tests/reliability/world.py), so its checkpoint went through
``save_checkpoint`` -> ``Storage.put_file`` and its sha256 is in the database. Then, 50 torn writes at
seeded random offsets, 10 of each kind:

- ``truncate``: the stored file cut at a random byte (a writer that died without temp file + rename);
- ``header``: cut inside the safetensors header, i.e. inside the JSON metadata;
- ``zero-tail``: same size, everything after a random byte zeroed (blocks that never reached the disk);
- ``killed-copy``: a writer subprocess running the real ``LocalStorage.put_file`` with a second valid
  checkpoint is SIGKILLed after copying a random number of bytes (the fault is injected in that process);
- ``killed-before-rename``: the same writer is SIGKILLed after the temp file is complete, before the rename.

For the first three the API (prediction on a cold cache, and checkpoint download) answers 409
``checksum_mismatch``, the error is logged with the model id, and a warm cache still serves the previous,
verified model. With the database row rewritten to the torn file's own sha256 (as if the writer had
recorded what it wrote), truncations are still refused (409 ``invalid_checkpoint``) by the header checks;
a same-size zero tail is caught only by the sha256, so it is not part of that variant. For the killed
writers, the stored key still holds the previous checkpoint byte for byte and prediction answers 200.

Separately, 50 single-byte flips (same size) must all be detected as ``checksum_mismatch``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.db.session import session_scope
from app.core.db.tables import TunedModel
from app.main import create_app
from tests.reliability.world import World, build_world, predict_files, world_settings

SEED = 20240601
KINDS = ("truncate", "header", "zero-tail", "killed-copy", "killed-before-rename")
PER_KIND = 10
FLIPS = 50

_WRITER = r"""
import os, shutil, signal, sys
from app.core.storage import LocalStorage

root, key, src, mode, keep = sys.argv[1:6]

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def torn_copy(source, dest, *args, **kwargs):
    with open(source, "rb") as fin, open(dest, "wb") as fout:
        fout.write(fin.read(int(keep)))
        fout.flush()
        os.fsync(fout.fileno())
    die()

if mode == "killed-copy":
    shutil.copyfile = torn_copy
else:
    os.replace = die
LocalStorage(root).put_file(key, src)
raise SystemExit("the writer was not killed")
"""


class Stored:
    """The model's row and its file in the app's local storage."""

    def __init__(self, world: World, client: TestClient) -> None:
        self.world, self.client = world, client
        with session_scope(world.settings.resolved_database_url) as session:
            row = session.get(TunedModel, world.spt_model_id)
            assert row is not None
            self.key, self.sha = row.checkpoint_key, row.checkpoint_sha256
        self.storage = client.app.state.storage
        self.path = self.storage.get_local_path(self.key)
        self.good = self.path.read_bytes()
        assert hashlib.sha256(self.good).hexdigest() == self.sha

    def set_sha(self, sha: str) -> None:
        with session_scope(self.world.settings.resolved_database_url) as session:
            row = session.get(TunedModel, self.world.spt_model_id)
            assert row is not None
            row.checkpoint_sha256 = sha

    def restore(self) -> None:
        self.path.write_bytes(self.good)
        self.set_sha(self.sha)

    def predict(self, *, cold: bool) -> Any:
        if cold:
            self.client.app.state.inference.methods.clear()
        url = f"/v1/models/{self.world.spt_model_id}/predict"
        return self.client.post(url, headers=self.world.headers, files=predict_files(2))

    def download(self) -> Any:
        return self.client.get(f"/v1/models/{self.world.spt_model_id}/checkpoint", headers=self.world.headers)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    settings = world_settings(tmp_path_factory.mktemp("torn"))
    with TestClient(
        create_app(settings, enqueue=lambda _job_id, **_: None), raise_server_exceptions=False
    ) as client:
        world = build_world(client, settings, queued_job=False)
        yield Stored(world, client)


def header_length(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def tear(data: bytes, kind: str, rng: random.Random) -> bytes:
    if kind == "truncate":
        return data[: rng.randrange(0, len(data))]
    if kind == "header":
        return data[: rng.randrange(0, header_length(data))]
    cut = rng.randrange(0, len(data) - 1)
    torn = data[:cut] + bytes(len(data) - cut)
    return torn if torn != data else data[:cut]  # a tail that was all zeros already: truncate instead


def second_checkpoint(tmp: Path) -> Path:
    """Another valid checkpoint of the same method (what a writer would be replacing the file with)."""
    from models import build_method, load_backbone, save_checkpoint
    from tests.tiny import tiny_vit_spec

    method = build_method(
        "spt",
        load_backbone(tiny_vit_spec()),
        {"mode": "deep", "num_prompts": 2, "init": "xavier"},
        ["a", "b"],
    )
    path = tmp / "other.safetensors"
    save_checkpoint(method, path)
    return path


def run_killed_writer(stored: Stored, source: Path, kind: str, keep: int) -> int:
    root = str(stored.storage.root)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", _WRITER, root, stored.key, str(source), kind, str(keep)],
        env=env,
        capture_output=True,
        timeout=60,
    )
    return done.returncode


def refused(response: Any, code: str) -> bool:
    return response.status_code == 409 and response.json()["error"]["code"] == code


def check_in_place_tear(stored: Stored, kind: str, rng: random.Random, outcomes: Counter[str]) -> None:
    warm = stored.predict(cold=True)
    assert warm.status_code == 200, warm.text
    torn = tear(stored.good, kind, rng)
    stored.path.write_bytes(torn)
    still = stored.predict(cold=False)  # the verified model in memory keeps serving
    outcomes["warm cache served the previous model"] += (
        still.status_code == 200 and still.json() == warm.json()
    )
    for response in (stored.predict(cold=True), stored.download()):
        outcomes["refused checksum_mismatch"] += refused(response, "checksum_mismatch")
        outcomes["5xx"] += response.status_code >= 500
    if kind != "zero-tail":  # the row names the torn bytes: only the header checks stand in the way
        stored.set_sha(hashlib.sha256(torn).hexdigest())
        for response in (stored.predict(cold=True), stored.download()):
            outcomes["refused invalid_checkpoint (sha matched)"] += refused(response, "invalid_checkpoint")
            outcomes["5xx"] += response.status_code >= 500
    stored.restore()


def check_killed_writer(
    stored: Stored, kind: str, source: Path, rng: random.Random, outcomes: Counter[str]
) -> None:
    keep = rng.randrange(0, source.stat().st_size)
    outcomes["writer killed by SIGKILL"] += run_killed_writer(stored, source, kind, keep) == -signal.SIGKILL
    outcomes["previous file intact"] += stored.path.read_bytes() == stored.good
    response = stored.predict(cold=True)
    outcomes["served after kill (200)"] += response.status_code == 200
    outcomes["5xx"] += response.status_code >= 500


def test_torn_writes_never_load(stored: Stored, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(SEED)
    source = second_checkpoint(tmp_path)
    outcomes: Counter[str] = Counter()
    caplog.set_level(logging.ERROR, logger="promptune.api")
    for kind in KINDS:
        for _ in range(PER_KIND):
            if kind.startswith("killed"):
                check_killed_writer(stored, kind, source, rng, outcomes)
            else:
                check_in_place_tear(stored, kind, rng, outcomes)
    leftovers = [p for p in stored.path.parent.iterdir() if p.name.endswith(".tmp")]
    logged = sum(stored.world.spt_model_id in r.getMessage() for r in caplog.records)
    print(
        f"\ntorn writes: {len(KINDS) * PER_KIND} ({PER_KIND} per kind: {', '.join(KINDS)}); {dict(outcomes)}"
    )
    print(
        f"torn writes: {len(leftovers)} stale temp files left by killed writers; {logged} error logs naming the model"
    )

    in_place = 3 * PER_KIND
    assert outcomes["5xx"] == 0
    assert outcomes["refused checksum_mismatch"] == 2 * in_place
    assert outcomes["refused invalid_checkpoint (sha matched)"] == 2 * 2 * PER_KIND
    assert outcomes["warm cache served the previous model"] == in_place
    killed = 2 * PER_KIND
    assert outcomes["writer killed by SIGKILL"] == killed
    assert outcomes["previous file intact"] == killed
    assert outcomes["served after kill (200)"] == killed
    assert logged == 2 * in_place + 2 * 2 * PER_KIND


def test_flipped_bytes_are_detected(stored: Stored, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(SEED + 1)
    caplog.set_level(logging.ERROR, logger="promptune.api")
    detected = 0
    for _ in range(FLIPS):
        data = bytearray(stored.good)
        offset = rng.randrange(len(data))
        data[offset] ^= 1 << rng.randrange(8)
        stored.path.write_bytes(bytes(data))
        predicted, downloaded = stored.predict(cold=True), stored.download()
        detected += refused(predicted, "checksum_mismatch") and refused(downloaded, "checksum_mismatch")
        stored.restore()
    logged = sum(
        "checksum_mismatch" in r.getMessage() and stored.world.spt_model_id in r.getMessage()
        for r in caplog.records
    )
    print(f"\nflipped bytes: {detected}/{FLIPS} detected as checksum_mismatch; {logged} error logs")
    assert detected == FLIPS
    assert logged == 2 * FLIPS
    assert stored.predict(cold=True).status_code == 200  # restored: the real file loads again
