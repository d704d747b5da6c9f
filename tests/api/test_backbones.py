"""GET /v1/backbones: the registry file, with offline availability (the catalogue: test_backbone_catalogue.py)."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from app.core.backbones import RegistryError, parse_registry, weights_available
from models.backbones.spec import BackboneSpec


def test_list_backbones(client: TestClient, headers_a: dict[str, str]) -> None:
    response = client.get("/v1/backbones", headers=headers_a)
    assert response.status_code == 200
    by_name = {b["name"]: b for b in response.json()["data"]}
    assert {"tiny-vit", "tiny-clip", "missing-vit"} <= set(by_name)  # and the built-in catalogue
    assert by_name["tiny-clip"] == {
        "name": "tiny-clip",
        "family": "open_clip",
        "arch": "promptune-test-tiny-clip",
        "weights": "random",
        "kind": "clip",
        "available": True,
        "availability": "local",
        "size_bytes": None,
        "num_params": None,
        "source": "file",
        "description": "",
        "sha256": None,
    }
    assert by_name["missing-vit"]["available"] is False


def test_registry_file_is_reread(client: TestClient, headers_a: dict[str, str], backbones_file: Path) -> None:
    data = json.loads(backbones_file.read_text())
    data["extra"] = {**data["tiny-vit"]}
    backbones_file.write_text(json.dumps(data))
    names = {b["name"] for b in client.get("/v1/backbones", headers=headers_a).json()["data"]}
    assert "extra" in names


def test_availability_rules(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    spec = BackboneSpec(family="timm", arch="vit_tiny_patch16_224", weights=str(weights))
    assert not weights_available(spec)
    weights.write_bytes(b"x")
    assert weights_available(spec)
    assert not weights_available(
        BackboneSpec(family="open_clip", arch="ViT-B-16", weights=f"local-dir:{tmp_path}", kind="clip")
    )
    (tmp_path / "open_clip_config.json").write_text("{}")
    assert weights_available(
        BackboneSpec(family="open_clip", arch="ViT-B-16", weights=f"local-dir:{tmp_path}", kind="clip")
    )
    # A pretrained tag resolves through the Hugging Face cache; offline and uncached it is unavailable.
    assert not weights_available(
        BackboneSpec(family="open_clip", arch="ViT-B-16", weights="openai", kind="clip")
    )
    assert not weights_available(
        BackboneSpec(family="timm", arch="vit_base_patch16_224", weights="augreg_in21k")
    )
    assert not weights_available(
        BackboneSpec(family="timm", arch="vit_base_patch16_224", weights="hf-hub:nobody/nothing")
    )


def test_bad_registry_is_refused() -> None:
    cases: list[object] = [[], {"x": 1}, {"x": {"family": "jax"}}]
    for data in cases:
        try:
            parse_registry(data)
        except RegistryError:
            continue
        raise AssertionError(f"accepted {data!r}")
