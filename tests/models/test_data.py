"""Dataset readers on tiny generated images: folders (dir and zip), manifests, WebDataset shards,
splits and K-shot sampling; bad files are reported, never fatal."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from models.data import (
    LabeledImageDataset,
    Sample,
    apply_split,
    few_shot,
    iter_webdataset,
    read_image_folder,
    read_manifest,
    scan_webdataset,
    split_paths,
    split_samples,
)
from models.errors import DataError

pytestmark = pytest.mark.timeout(120)
COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "emu": (30, 30, 200)}


def png(colour=(255, 0, 0), size=(8, 6), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def make_folder(root: Path, per_class: int = 3, splits: tuple[str, ...] = ()) -> Path:
    for split in splits or ("",):
        for cls, colour in COLOURS.items():
            for i in range(per_class):
                fmt, ext = [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")][i % 3]
                _write(root / split / cls / f"{i}.{ext}", png(colour, fmt=fmt))
    return root


def add_junk(root: Path, cls_dir: Path) -> None:
    _write(cls_dir / "broken.png", png()[:30])  # truncated
    _write(cls_dir / "notes.txt", b"hello")
    _write(cls_dir / ".DS_Store", b"\0\0")
    _write(root / "stray.png", png())  # not inside a class folder


# ---- folders -----------------------------------------------------------------------------
def test_read_image_folder_directory(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds")
    add_junk(root, root / "dog")
    samples, classes, report = read_image_folder(root)
    assert classes == ["cat", "dog", "emu"]
    assert len(samples) == 9 and all(s.split is None for s in samples)
    assert all(not Path(s.path).is_absolute() for s in samples)
    assert {s.label for s in samples if s.path.startswith("dog/")} == {1}
    reasons = dict(report.skipped)
    assert reasons["dog/broken.png"].startswith("unreadable image")
    assert reasons["dog/notes.txt"].startswith("not an image")
    assert reasons["dog/.DS_Store"].startswith("hidden")
    assert reasons["stray.png"] == "not inside a class folder"
    assert len(report) == 4 and report.to_dict()["num_skipped"] == 4

    listing = read_image_folder(root)
    ds = listing.dataset()
    item = ds[0]
    assert item["image"].shape == (3, 6, 8) and item["image"].dtype == torch.float32
    assert item["label"] == samples[0].label and item["index"] == 0
    assert float(item["image"].max()) <= 1.0
    ds2 = LabeledImageDataset(samples, classes, transform=lambda im: torch.tensor(im.size), root=root)
    assert ds2[0]["image"].tolist() == [8, 6]


def test_read_image_folder_with_split_folders_and_wrapper(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "zipme" / "wrapper", per_class=2, splits=("train", "valid", "test"))
    (root / "test" / "emu").mkdir(exist_ok=True)
    samples, classes, _ = read_image_folder(tmp_path / "zipme")
    assert classes == ["cat", "dog", "emu"]
    assert {s.split for s in samples} == {"train", "val", "test"}
    assert sum(s.split == "val" for s in samples) == 6
    assert all(s.path.startswith("wrapper/") for s in samples)


def test_read_image_folder_zip_streams_members(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src" / "top", per_class=2, splits=("train", "val"))
    add_junk(src, src / "train" / "cat")
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((tmp_path / "src").rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(tmp_path / "src").as_posix())
        zf.writestr("../evil.png", png())
        zf.writestr("/abs.png", png())
        zf.writestr("__MACOSX/top/train/cat/._0.png", b"junk")
    before = sorted(p.name for p in tmp_path.iterdir())
    listing = read_image_folder(archive)
    samples, classes, report = listing
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing extracted
    assert classes == ["cat", "dog", "emu"] and len(samples) == 12
    assert {s.split for s in samples} == {"train", "val"}
    reasons = dict(report.skipped)
    assert reasons["../evil.png"].startswith("unsafe") and reasons["/abs.png"].startswith("unsafe")
    assert reasons["top/train/cat/broken.png"].startswith("unreadable image")
    assert reasons["__MACOSX/top/train/cat/._0.png"].startswith("hidden")

    ds = listing.dataset()
    assert ds.root == str(archive)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    batches = list(loader)
    assert sum(len(b["label"]) for b in batches) == 12
    assert batches[0]["image"].shape == (4, 3, 6, 8)


def test_read_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    _write(tmp_path / "empty" / "cat" / "x.txt", b"no")
    with pytest.raises(DataError, match="no usable images"):
        read_image_folder(tmp_path / "empty")
    _write(tmp_path / "file.bin", b"1234")
    with pytest.raises(DataError, match="neither"):
        read_image_folder(tmp_path / "file.bin")


def test_dataset_reports_unreadable_image_at_load_time(tmp_path: Path) -> None:
    _write(tmp_path / "a.png", b"not an image")
    ds = LabeledImageDataset([Sample("a.png", 0)], ["x"], root=tmp_path)
    with pytest.raises(DataError, match="a.png"):
        ds[0]
    with pytest.raises(DataError, match="labels outside"):
        LabeledImageDataset([Sample("a.png", 3)], ["x"], root=tmp_path)


# ---- manifests ---------------------------------------------------------------------------
def _manifest_tree(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    for i in range(6):
        _write(root / "images" / f"{i}.png", png(list(COLOURS.values())[i % 3]))
    _write(root / "images" / "bad.png", b"\x89PNG broken")
    _write(tmp_path / "outside.png", png())
    return root


def test_read_manifest_jsonl(tmp_path: Path) -> None:
    root = _manifest_tree(tmp_path)
    rows = [
        {
            "path": f"images/{i}.png",
            "label": ["cat", "dog", "emu"][i % 3],
            "split": [None, "train", "val"][i % 3],
        }
        for i in range(6)
    ]
    rows += [
        {"path": "../outside.png", "label": "cat"},
        {"path": str(tmp_path / "outside.png"), "label": "cat"},
        {"path": "images/missing.png", "label": "cat"},
        {"path": "images/bad.png", "label": "cat"},
        {"path": "images/0.png", "label": "cat"},
        {"path": "images/1.png", "label": "dog", "split": "holdout"},
        {"path": "images/2.png"},
    ]
    text = "\n".join(json.dumps(r) for r in rows) + "\n{not json\n\n"
    _write(root / "manifest.jsonl", text.encode())
    listing = read_manifest(root / "manifest.jsonl")
    samples, classes, report = listing
    assert classes == ["cat", "dog", "emu"] and len(samples) == 6
    assert [s.split for s in samples[:3]] == [None, "train", "val"]
    assert listing.root == str(root)
    reasons = [r for _, r in report.skipped]
    assert sum(r.startswith("unsafe") for r in reasons) == 2
    assert "missing file" in reasons and "duplicate path" in reasons and "missing label" in reasons
    assert any(r.startswith("unreadable image") for r in reasons)
    assert any(r.startswith("unknown split") for r in reasons)
    assert any(r.startswith("malformed JSON") for r in reasons)
    assert listing.dataset()[5]["label"] == 2


def test_read_manifest_csv_and_class_names(tmp_path: Path) -> None:
    root = _manifest_tree(tmp_path)
    lines = ["path,label,split"] + [f"images/{i}.png,{i % 3},{'test' if i == 5 else ''}" for i in range(6)]
    _write(root / "m.csv", "\n".join(lines).encode())
    samples, classes, _ = read_manifest(root / "m.csv", verify="none")
    assert classes == ["0", "1", "2"] and samples[-1].split == "test"
    samples, classes, report = read_manifest(root / "m.csv", class_names=["2", "1"])
    assert classes == ["2", "1"] and len(samples) == 4 and len(report) == 2
    assert {s.label for s in samples if s.path == "images/2.png"} == {0}

    _write(root / "bad.csv", b"file,label\nimages/0.png,cat\n")
    with pytest.raises(DataError, match="path"):
        read_manifest(root / "bad.csv")
    _write(root / "m.txt", b"")
    with pytest.raises(DataError, match="csv or .jsonl"):
        read_manifest(root / "m.txt")


# ---- webdataset --------------------------------------------------------------------------
def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def make_shards(tmp_path: Path) -> list[Path]:
    s0, s1 = tmp_path / "shard-0.tar", tmp_path / "shard-1.tar"
    with tarfile.open(s0, "w") as tf:
        _add(tf, "a/0001.png", png(COLOURS["cat"]))
        _add(tf, "a/0001.cls", b"0")
        _add(tf, "a/0002.jpg", png(COLOURS["dog"], fmt="JPEG"))
        _add(tf, "a/0002.txt", b"dog")
        _add(tf, "a/0003.webp", png(COLOURS["emu"], fmt="WEBP"))
        _add(tf, "a/0003.json", json.dumps({"label": "emu"}).encode())
        _add(tf, "a/0004.png", b"garbage")  # bad image
        _add(tf, "a/0004.cls", b"1")
        _add(tf, "a/0005.png", png())  # no label
    with tarfile.open(s1, "w") as tf:
        _add(tf, "0006.png", png(COLOURS["dog"]))
        _add(tf, "0006.cls", b"1")
        _add(tf, "0007.png", png(COLOURS["cat"]))
        _add(tf, "0007.json", json.dumps({"label": 0}).encode())
    return [s0, s1]


def test_webdataset_streams_labelled_samples(tmp_path: Path) -> None:
    shards = make_shards(tmp_path)
    ds = iter_webdataset(shards, class_names=["cat", "dog", "emu"])
    items = list(ds)
    assert [(it["key"], it["label"]) for it in items] == [
        ("a/0001", 0),
        ("a/0002", 1),
        ("a/0003", 2),
        ("0006", 1),
        ("0007", 0),
    ]
    assert items[0]["image"].shape == (3, 6, 8)
    assert len({it["index"] for it in items}) == 5
    reasons = dict(ds.report.skipped)
    assert reasons["a/0004"].startswith("unreadable image") and reasons["a/0005"].startswith("no label")

    loader = torch.utils.data.DataLoader(
        iter_webdataset(shards, class_names=["cat", "dog", "emu"]), batch_size=2, num_workers=2
    )
    labels = sorted(int(x) for b in loader for x in b["label"])
    assert labels == [0, 0, 1, 1, 2]

    classes, count, report = scan_webdataset(shards)
    assert classes == ["0", "1", "dog", "emu"] and count == 6 and len(report) == 1

    with pytest.raises(DataError, match="class_names"):
        list(iter_webdataset(shards))


def test_webdataset_bad_shard_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar archive at all" * 20)
    ds = iter_webdataset([bad])
    assert list(ds) == [] and ds.report.skipped[0][1].startswith("unreadable shard")


# ---- splits and k-shot -------------------------------------------------------------------
def _samples(per_class=(10, 6, 3), split=None) -> list[Sample]:
    out = []
    for label, n in enumerate(per_class):
        out += [Sample(f"c{label}/{i:03d}.png", label, split) for i in range(n)]
    return out


def test_split_samples_stratified_seeded_and_serialisable() -> None:
    samples = _samples() + [Sample("t/0.png", 0, "test")]
    splits = split_samples(samples, 0.3, seed=1)
    assert set(splits) == {"train", "val", "test"} and splits["test"] == [Sample("t/0.png", 0, "test")]
    val_counts = [sum(s.label == c for s in splits["val"]) for c in range(3)]
    assert val_counts == [3, 2, 1]
    assert sorted(splits["train"] + splits["val"], key=lambda s: s.path) == sorted(
        samples[:-1], key=lambda s: s.path
    )
    # the carve-out depends on the samples and the seed, not on their order
    assert {s.path for s in split_samples(samples[::-1], 0.3, seed=1)["val"]} == {
        s.path for s in splits["val"]
    }
    assert {s.path for s in split_samples(samples, 0.3, seed=2)["val"]} != {s.path for s in splits["val"]}
    paths = split_paths(splits)
    assert json.loads(json.dumps(paths)) == paths
    assert apply_split(samples, paths) == splits
    with pytest.raises(DataError):
        apply_split(samples, {"train": ["nope.png"]})
    # a single-image class keeps its image for training
    assert split_samples(_samples((1, 4)), 0.5, seed=0)["val"] and all(
        s.label == 1 for s in split_samples(_samples((1, 4)), 0.5, seed=0)["val"]
    )


def test_split_samples_uses_the_datasets_own_val_split() -> None:
    samples = _samples((4, 4), split="train") + [Sample("v.png", 0, "val"), Sample("u.png", 1, None)]
    splits = split_samples(samples, 0.5, seed=0)
    assert [s.path for s in splits["val"]] == ["v.png"]
    assert len(splits["train"]) == 9
    with pytest.raises(DataError):
        split_samples(samples, 1.0, seed=0)


def test_few_shot() -> None:
    samples = _samples((10, 6, 3))
    shot = few_shot(samples, 4, seed=0)
    assert [sum(s.label == c for s in shot) for c in range(3)] == [4, 4, 3]
    assert shot == few_shot(samples, 4, seed=0)
    assert shot != few_shot(samples, 4, seed=1)
    assert [samples.index(s) for s in shot] == sorted(samples.index(s) for s in shot)  # input order kept
    with pytest.raises(DataError):
        few_shot(samples, 0, seed=0)


# ---- the engine on a real folder dataset -------------------------------------------------
def test_trainer_on_an_image_folder(tmp_path: Path) -> None:
    from models.engine import TrainConfig, Trainer
    from tests.models.engine_toy import ToyConfig, ToyPromptMethod, toy_backbone

    root = make_folder(tmp_path / "ds", per_class=6)
    listing = read_image_folder(root)
    splits = split_samples(listing.samples, 0.34, seed=0)
    backbone = toy_backbone()
    train, val = (
        listing.dataset(backbone.transform, splits["train"]),
        listing.dataset(backbone.transform, splits["val"]),
    )
    torch.manual_seed(0)
    method = ToyPromptMethod(backbone, ToyConfig(), listing.class_names)
    result = Trainer(method, TrainConfig(epochs=8, batch_size=4, lr=0.1), train, val).fit()
    assert result.metrics["val_acc"] > 1 / 3 + 0.2


def test_train_transforms() -> None:
    from models.data import train_transform
    from tests.models.engine_toy import IMAGE_SIZE, toy_backbone

    backbone = toy_backbone()
    image = Image.new("RGB", (40, 30), (10, 200, 30))
    assert train_transform(backbone, "none") is backbone.transform
    for augment in ("flip", "crop_flip"):
        tf = train_transform(backbone, augment)
        torch.manual_seed(0)
        a = tf(image)
        torch.manual_seed(0)
        assert a.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and torch.equal(a, tf(image))  # seeded = reproducible
    with pytest.raises(ValueError):
        train_transform(backbone, "mixup")
