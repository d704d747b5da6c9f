"""Streamed WebDataset shards: fsspec round trips, rank x worker split, epoch order, exact resume,
the many-class zoo writer, hostile tars, and no local copies of streamed shards."""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import fsspec
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from models.data import ShardStream, list_shards, write_shards
from models.errors import DataError
from models.zoo.shards import write_many_class_shards

pytestmark = pytest.mark.timeout(120)
NAMES = ["cat", "dog", "emu"]


def _image(i: int) -> Image.Image:
    return Image.new("RGB", (4, 5), ((37 * i) % 256, (11 * i) % 256, 100))


def _samples(n: int) -> list[tuple[Image.Image, int]]:
    return [(_image(i), i % len(NAMES)) for i in range(n)]


@pytest.fixture
def mem_url(request: pytest.FixtureRequest) -> Any:
    url = f"memory://shards-{request.node.name}"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


def _indices(stream: Any) -> list[int]:
    return [s["index"] for s in stream]


def _loader_indices(stream: ShardStream, workers: int = 2) -> list[int]:
    loader = DataLoader(stream, batch_size=4, num_workers=workers)
    return [i for batch in loader for i in batch["index"].tolist()]


def _all(specs: Any) -> list[int]:
    return sorted(_indices(ShardStream(specs, NAMES)))


def test_round_trip_memory_and_local_folder(mem_url: str, tmp_path: Path) -> None:
    samples = _samples(10)
    for root in (mem_url, str(tmp_path / "local"), (tmp_path / "local2").as_uri()):
        urls = write_shards(root, samples, shard_size=4)
        specs = list_shards(root)
        assert [s.url for s in specs] == urls and len(specs) == 3
        got = {s["index"]: s for s in ShardStream(specs, NAMES)}
        assert len(got) == 10
        for n, (img, label) in enumerate(samples):
            sample = got[(n // 4 << 32) + n % 4]
            assert sample["label"] == label
            expected = torch.tensor(list(img.getdata()), dtype=torch.float32).div(255)
            assert torch.equal(sample["image"].permute(1, 2, 0).reshape(-1, 3), expected)
    assert len(list_shards(f"{mem_url}/shard-00000[01].tar")) == 2


def test_each_sample_once_per_epoch_over_two_ranks_and_two_workers(tmp_path: Path) -> None:
    write_shards(tmp_path, _samples(45), shard_size=5)  # 9 shards over 4 (rank, worker) slots
    specs = list_shards(tmp_path)
    per_rank = [
        _loader_indices(ShardStream(specs, NAMES, seed=3, epoch=1, rank=r, world_size=2)) for r in (0, 1)
    ]
    assert per_rank[0] and per_rank[1]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == _all(specs)
    assert len(per_rank[0] + per_rank[1]) == 45


def test_epoch_order_is_seeded(mem_url: str) -> None:
    write_shards(mem_url, _samples(40), shard_size=2)
    specs = list_shards(mem_url)
    order = {
        (seed, epoch): _indices(ShardStream(specs, NAMES, seed=seed, epoch=epoch))
        for seed in (0, 1)
        for epoch in (0, 1)
    }
    assert order[0, 0] == _indices(ShardStream(specs, NAMES, seed=0, epoch=0))
    assert order[0, 0] != order[0, 1] and order[0, 0] != order[1, 0]
    assert all(sorted(v) == sorted(order[0, 0]) for v in order.values())
    stream = ShardStream(specs, NAMES, seed=0, epoch=0)
    stream.set_epoch(1)
    assert _indices(stream) == order[0, 1]


def test_resume_in_process_two_ranks_is_exact(mem_url: str) -> None:
    write_shards(mem_url, _samples(37), shard_size=5)  # the last shard is short
    specs = list_shards(mem_url)
    before, states = [], []
    for rank, take in ((0, 7), (1, 11)):
        stream = ShardStream(specs, NAMES, seed=5, epoch=2, rank=rank, world_size=2)
        it = iter(stream)
        before += [next(it)["index"] for _ in range(take)]
        states.append(json.loads(json.dumps(stream.state_dict())))  # the state survives JSON
    merged = ShardStream.merge_states(states)
    assert merged["epoch"] == 2 and merged["shards_done"]
    after, reread = [], []
    for rank in (0, 1):
        stream = ShardStream(specs, NAMES, rank=rank, world_size=2)
        stream.load_state_dict(merged)
        after += _indices(stream)
        reread.append(stream.groups_reread)
    assert sorted(before + after) == _all(specs) and len(before + after) == 37
    # The guarantee's price: only the consumed prefixes of the in-flight shards (one per rank) are re-read.
    assert sorted(merged["in_flight"].values()) == [1, 2] and sum(reread) == 3


def test_resume_through_dataloader_workers_with_observe(tmp_path: Path) -> None:
    write_shards(tmp_path, _samples(48), shard_size=4)
    specs = list_shards(tmp_path)
    stream = ShardStream(specs, NAMES, seed=1, epoch=0)
    loader = iter(DataLoader(stream, batch_size=3, num_workers=2))
    before = []
    for _ in range(5):  # workers prefetch more than this; only what the consumer got is recorded
        batch = next(loader)
        stream.observe(batch)
        before += batch["index"].tolist()
    state = stream.state_dict()
    del loader
    resumed = ShardStream(specs, NAMES)
    resumed.load_state_dict(state)
    after = _loader_indices(resumed)
    assert sorted(before + after) == _all(specs) and len(before + after) == 48


def test_state_checks(mem_url: str) -> None:
    write_shards(mem_url, _samples(6), shard_size=2)
    specs = list_shards(mem_url)
    state = ShardStream(specs, NAMES).state_dict()
    with pytest.raises(DataError, match="different shard set"):
        ShardStream(specs[:2], NAMES).load_state_dict(state)
    with pytest.raises(DataError, match="disagree"):
        ShardStream.merge_states([state, {**state, "epoch": 1}])
    with pytest.raises(DataError):
        ShardStream(specs, NAMES, rank=2, world_size=2)
    with pytest.raises(DataError):
        list_shards(f"{mem_url}/nothing-here")


def test_many_class_writer(mem_url: str) -> None:
    urls, names = write_many_class_shards(
        mem_url, num_classes=10_000, per_class=1, image_size=8, shard_size=2500
    )
    assert len(urls) == 4 and len(names) == 10_000 and len(set(names)) == 10_000
    labels = Counter(s["label"] for s in ShardStream(list_shards(mem_url), names))
    assert len(labels) == 10_000 and set(labels.values()) == {1}
    again, _ = write_many_class_shards(f"{mem_url}/again", num_classes=10_000, image_size=8, shard_size=2500)
    fs = fsspec.filesystem("memory")
    assert fs.cat(urls[0]) == fs.cat(again[0])  # deterministic bytes


def _tar(members: list[tuple[str, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _png_bytes(size: tuple[int, int] = (3, 3)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


def test_hostile_members_are_skipped_without_touching_the_filesystem(
    mem_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    shard = _tar([
        ("../x.png", _png_bytes()), ("../x.cls", b"0"),
        ("/abs.png", _png_bytes()), ("/abs.cls", b"1"),
        ("link.png", None), ("link.cls", b"1"),
        ("text.png", b"#!/bin/sh\necho not an image\n"), ("text.cls", b"1"),
        ("pickle.pth", b"\x80\x04K\x01."), ("pickle.cls", b"1"),
        ("big.png", _png_bytes((40, 40))), ("big.cls", b"1"),
        ("badlabel.png", _png_bytes()), ("badlabel.cls", b"yak"),
        ("named.png", _png_bytes()), ("named.cls", b"emu"),
        ("jsoned.png", _png_bytes()), ("jsoned.json", b'{"label": "dog"}'),
    ])  # fmt: skip
    fsspec.filesystem("memory").pipe(f"{mem_url}/evil.tar", shard)
    stream = ShardStream(list_shards(mem_url), NAMES, max_pixels=1000)
    got = list(stream)
    assert [s["label"] for s in got] == [2, 1]  # only "named" (class-name .cls) and "jsoned"
    assert stream.report.num_skipped >= 7
    assert list(work.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_streaming_writes_nothing_locally(
    mem_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_shards(mem_url, _samples(30), shard_size=10)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # any temp file would land here
    monkeypatch.chdir(scratch)
    assert len(_indices(ShardStream(list_shards(mem_url), NAMES))) == 30
    assert list(scratch.iterdir()) == []


def test_a_shard_that_cannot_be_read_fails_the_stream(tmp_path: Path) -> None:
    """Storage errors and truncated shards raise (a skipped shard would silently shrink the epoch)."""
    good = tmp_path / "good.tar"
    with tarfile.open(good, "w") as tf:
        for i in range(3):
            data = _png_bytes((3 + i, 3))
            for name, payload in ((f"s{i}.png", data), (f"s{i}.cls", b"0")):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(good.read_bytes()[:700])
    for url in (str(truncated), str(tmp_path / "missing.tar")):
        with pytest.raises(DataError, match="cannot be"):
            list(ShardStream([url], ["a"]))
