"""Checkpoints: save -> load round trip, header-only metadata, and rejection of everything else
(wrong keys/shapes before any tensor is read, sha mismatch, pickles, truncation, header bombs)."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save
from safetensors.torch import save_file

import models.checkpoint as ckpt
from models.checkpoint import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from models.engine import TrainConfig
from models.errors import CheckpointError, WeightsIntegrityError
from models.fileio import atomic_write_bytes
from tests.models.engine_toy import IMAGE_SIZE, build_toy, toy_backbone

pytestmark = pytest.mark.timeout(120)


def _toy_method(tmp_path: Path | None = None):
    method = build_toy(num_classes=3, seed=3)
    with torch.no_grad():
        for p in method.learned_parameters().values():
            p.add_(torch.randn_like(p))  # "trained": not the init values
    return method, torch.rand(4, 3, IMAGE_SIZE, IMAGE_SIZE), toy_backbone


def _spt_method(tmp_path: Path):
    spt = pytest.importorskip("models.spt")
    from models.backbones.timm_loader import load_timm_backbone, save_timm_weights
    from tests.tiny import tiny_vit_spec

    # real weights on disk, so the backbone can be rebuilt from the spec stored in the checkpoint
    weights = tmp_path / "vit.safetensors"
    save_timm_weights(load_timm_backbone(tiny_vit_spec()), weights)
    backbone = load_timm_backbone(tiny_vit_spec(weights=str(weights)))
    assert backbone.weights_sha256
    method = spt.SPTModel(
        backbone, spt.SPTConfig(mode="deep", num_prompts=3, init="xavier"), ["a", "b", "c", "d"]
    )
    with torch.no_grad():
        for p in method.learned_parameters().values():
            p.add_(torch.randn_like(p) * 0.1)
    return method, torch.rand(2, 3, 32, 32), load_timm_backbone


def _rpp_method(tmp_path: Path):
    rpp = pytest.importorskip("models.rpp")
    from models.backbones.clip_loader import load_clip_backbone
    from tests.tiny import tiny_clip_spec

    torch.manual_seed(0)
    backbone = load_clip_backbone(tiny_clip_spec())
    method = rpp.RPPModel(backbone, rpp.RPPConfig(), ["cat", "dog", "emu"])
    with torch.no_grad():
        for p in method.learned_parameters().values():
            p.add_(torch.randn_like(p) * 0.1)

    def same_backbone(spec):  # random-init weights cannot be rebuilt from the spec
        return backbone

    return method, torch.rand(2, 3, 32, 32), same_backbone


@pytest.fixture(params=["toy", "spt", "rpp"])
def trained(request, tmp_path_factory):
    factory = {"toy": _toy_method, "spt": _spt_method, "rpp": _rpp_method}[request.param]
    return factory(tmp_path_factory.mktemp("weights"))


def test_save_load_gives_identical_logits(tmp_path: Path, trained) -> None:
    method, images, load_fn = trained
    method.eval()
    path = tmp_path / "m.safetensors"
    cfg = TrainConfig(epochs=2)
    split = {"train": ["images/1.png"], "val": ["images/2.png"], "test": []}
    sha = save_checkpoint(
        method, path, train_config=cfg, metrics={"val_acc": 0.5}, split=split, extra={"job": "j1"}
    )
    assert sha == ckpt.sha256_path(path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp files left

    with torch.no_grad():
        expected = method(images)
    # with the backbone object, and rebuilt from the stored spec
    ways: list[dict] = [{"backbone": method.backbone}, {"load_backbone_fn": load_fn}]
    if load_fn.__name__ == "load_timm_backbone":
        ways.append({})  # the default: models.backbones.loader.load_backbone(stored spec)
    for kwargs in ways:
        loaded = load_checkpoint(path, expected_sha256=sha, **kwargs)
        assert type(loaded) is type(method) and not loaded.training
        assert loaded.class_names == method.class_names
        with torch.no_grad():
            assert torch.equal(loaded(images), expected)
        for k, v in method.learned_state_dict().items():
            assert torch.equal(loaded.learned_state_dict()[k], v)

    meta = read_checkpoint_metadata(path)
    assert meta["format_version"] == 1 and meta["method"] == method.method_name
    assert meta["method_config"] == json.loads(json.dumps(method.config.to_dict()))
    assert meta["train_config"] == cfg.to_dict()
    assert meta["backbone"] == json.loads(json.dumps(method.backbone.spec.to_dict()))
    assert meta["class_names"] == method.class_names
    assert meta["preprocessing"]["image_size"] == method.backbone.preprocessing.image_size
    assert meta["metrics"] == {"val_acc": 0.5} and meta["split"] == split and meta["extra"] == {"job": "j1"}
    assert meta["library_version"] and "backbone_weights_sha256" in meta
    assert meta["method_metadata"] == json.loads(json.dumps(method.metadata()))


@pytest.fixture
def toy_file(tmp_path: Path):
    method, _, _ = _toy_method()
    path = tmp_path / "toy.safetensors"
    save_checkpoint(method, path)
    return method, path


def _rewrite(src: Path, dst: Path, tensors: dict[str, torch.Tensor]) -> Path:
    from safetensors import safe_open

    with safe_open(str(src), "pt") as fh:
        metadata = fh.metadata()
    save_file(tensors, str(dst), metadata=metadata)
    return dst


@pytest.mark.parametrize("change", ["missing", "extra", "renamed", "shape", "dtype"])
def test_mismatched_tensors_rejected_before_materialising(
    tmp_path: Path, toy_file, monkeypatch, change: str
) -> None:
    method, path = toy_file
    tensors = {k: v.clone() for k, v in method.learned_state_dict().items()}
    if change == "missing":
        del tensors["head.bias"]
    elif change == "extra":
        tensors["extra_prompt"] = torch.zeros(2)
    elif change == "renamed":
        tensors["head.w"] = tensors.pop("head.weight")
    elif change == "shape":
        tensors["head.weight"] = torch.zeros(5, tensors["head.weight"].shape[1])
    else:
        tensors["prompt"] = tensors["prompt"].to(torch.int32)
    bad = _rewrite(path, tmp_path / "bad.safetensors", tensors)

    def fail(*a, **k):
        raise AssertionError("tensors were materialised before validation")

    monkeypatch.setattr(ckpt, "_materialise", fail)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad, backbone=method.backbone)
    assert err.value.code == "invalid_checkpoint"


def test_sha256_mismatch(toy_file) -> None:
    method, path = toy_file
    with pytest.raises(WeightsIntegrityError):
        load_checkpoint(path, backbone=method.backbone, expected_sha256="0" * 64)
    # a flipped byte in the tensor data changes the sha
    good = ckpt.sha256_path(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError):
        load_checkpoint(path, backbone=method.backbone, expected_sha256=good)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("kind", ["torch_save", "raw_pickle", "zip", "garbage", "empty"])
def test_non_safetensors_files_rejected_never_unpickled(tmp_path: Path, toy_file, kind: str) -> None:
    method, _ = toy_file
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.safetensors"
    if kind == "torch_save":
        torch.save({"prompt": _Payload(marker)}, path)
    elif kind == "raw_pickle":
        path.write_bytes(pickle.dumps(_Payload(marker)))
    elif kind == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("data.pkl", pickle.dumps(_Payload(marker)))
        path.write_bytes(buf.getvalue())
    elif kind == "garbage":
        path.write_bytes(os.urandom(4096))
    else:
        path.write_bytes(b"")
    assert not marker.exists()
    for call in (
        lambda: read_checkpoint_metadata(path),
        lambda: load_checkpoint(path, backbone=method.backbone),
    ):
        with pytest.raises(CheckpointError):
            call()
    assert not marker.exists()


@pytest.mark.parametrize("cut", [1, 7, 100, -1, -8])
def test_truncated_file_rejected(tmp_path: Path, toy_file, cut: int) -> None:
    method, path = toy_file
    data = path.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[:cut] if cut > 0 else data[:cut])
    with pytest.raises(CheckpointError):
        load_checkpoint(bad, backbone=method.backbone)


def test_bloated_or_lying_headers_rejected(tmp_path: Path) -> None:
    many = tmp_path / "many.safetensors"
    save_file(
        {f"t{i}": torch.zeros(1) for i in range(ckpt.MAX_TENSORS + 1)},
        str(many),
        metadata={"promptune": "{}"},
    )
    with pytest.raises(CheckpointError, match="limit"):
        read_checkpoint_metadata(many)

    liar = tmp_path / "liar.safetensors"
    header = json.dumps(
        {"x": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}
    ).encode()
    liar.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(CheckpointError):
        read_checkpoint_metadata(liar)

    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(CheckpointError, match="not a safetensors"):
        read_checkpoint_metadata(huge)

    with pytest.raises(CheckpointError, match="limit"):
        read_checkpoint_metadata(many, max_bytes=100)


def test_metadata_must_be_promptune_and_complete(tmp_path: Path, toy_file) -> None:
    method, path = toy_file
    plain = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="not a Promptune checkpoint"):
        read_checkpoint_metadata(plain)

    meta = read_checkpoint_metadata(path)
    for key in ("method", "class_names", "backbone"):
        broken = {k: v for k, v in meta.items() if k != key}
        bad = tmp_path / f"no-{key}.safetensors"
        bad.write_bytes(st_save(method.learned_state_dict(), metadata={"promptune": json.dumps(broken)}))
        with pytest.raises(CheckpointError, match=key):
            read_checkpoint_metadata(bad)

    for change, match in (
        ({"method": "nope"}, "unknown method"),
        ({"format_version": 99}, "format_version"),
        ({"method_config": {"num_prompts": -1}}, "method_config"),
    ):
        bad = tmp_path / "changed.safetensors"
        bad.write_bytes(
            st_save(method.learned_state_dict(), metadata={"promptune": json.dumps({**meta, **change})})
        )
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(bad, backbone=method.backbone)


def test_backbone_mismatch_rejected(toy_file) -> None:
    method, path = toy_file
    backbone = toy_backbone()
    backbone.weights_sha256 = "f" * 64
    meta = read_checkpoint_metadata(path)
    assert meta["backbone_weights_sha256"] is None  # random-init toy: nothing to compare
    load_checkpoint(path, backbone=backbone)

    from models.backbones.spec import BackboneSpec

    other = toy_backbone(BackboneSpec.from_dict({"family": "timm", "arch": "other-arch"}))
    with pytest.raises(CheckpointError, match="arch"):
        load_checkpoint(path, backbone=other)
    clip_like = toy_backbone(
        BackboneSpec.from_dict({"family": "open_clip", "arch": "toy-conv", "kind": "clip"})
    )
    with pytest.raises(CheckpointError, match="timm backbone"):
        load_checkpoint(path, backbone=clip_like)


def test_weights_sha_recorded_and_checked(tmp_path: Path) -> None:
    method, _, _ = _toy_method()
    method.backbone.weights_sha256 = "a" * 64
    path = tmp_path / "w.safetensors"
    save_checkpoint(method, path)
    assert read_checkpoint_metadata(path)["backbone_weights_sha256"] == "a" * 64
    other = toy_backbone()
    other.weights_sha256 = "b" * 64
    with pytest.raises(CheckpointError, match="weights sha256"):
        load_checkpoint(path, backbone=other)


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_source_never_unpickles() -> None:
    import ast

    root = Path(ckpt.__file__).parent
    for path in [root / "checkpoint.py", *(root / "engine").glob("*.py"), *(root / "data").glob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("load", "loads")
                and isinstance(node.value, ast.Name)
            ):
                assert node.value.id not in ("pickle", "torch"), f"{path.name}: {node.value.id}.{node.attr}"
