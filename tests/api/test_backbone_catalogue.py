"""GET /v1/backbones: the built-in catalogue, the project's zoo, the backbones file (add / replace), and
whether each backbone can load now (on disk, cached, downloadable or missing)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core import catalogue
from app.core.catalogue import HubProbe, ServerRegistry, server_registry, zoo_dir, zoo_registry_path
from app.core.settings import Settings
from app.main import create_app

# What the catalogue must offer: name -> (family, arch, weights, kind).
REQUIRED = {
    "clip-vit-b-16-openai": ("open_clip", "ViT-B-16", "openai", "clip"),
    "clip-vit-b-16-laion2b": ("open_clip", "ViT-B-16", "laion2b_s34b_b88k", "clip"),
    "clip-vit-b-32-openai": ("open_clip", "ViT-B-32", "openai", "clip"),
    "clip-vit-l-14-openai": ("open_clip", "ViT-L-14", "openai", "clip"),
    "clip-vit-l-14-laion2b": ("open_clip", "ViT-L-14", "laion2b_s32b_b82k", "clip"),
    "vit-b-16-in21k": ("timm", "vit_base_patch16_224", "augreg_in21k", "supervised"),
    "vit-b-16-in21k-ft-in1k": ("timm", "vit_base_patch16_224", "augreg2_in21k_ft_in1k", "supervised"),
    "vit-b-16-mae": ("timm", "vit_base_patch16_224", "mae", "mae"),
}
MOCO = "vit-b-16-mocov3"


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, so what this machine has cached cannot change the answers."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@contextlib.contextmanager
def _client(settings: Settings, **changes: Any) -> Iterator[TestClient]:
    app = create_app(settings.model_copy(update=changes), enqueue=lambda _job_id, **_: None)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def bare_client(settings: Settings) -> Iterator[TestClient]:
    """No backbones file: what `promptune serve` offers out of the box."""
    with _client(settings, backbones_file=None) as client:
        yield client


def _listing(client: TestClient, headers: dict[str, str], **params: Any) -> dict[str, dict[str, Any]]:
    response = client.get("/v1/backbones", headers=headers, params=params)
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["has_more"] is False and page["next_cursor"] is None
    return {item["name"]: item for item in page["data"]}


def _fake_snapshot(cache: Path, repo_id: str, filename: str, size: int) -> None:
    """A Hugging Face cache entry as huggingface_hub lays it out: a snapshot file linking to a blob."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    blob = repo / "blobs" / "0123abcd"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"\0" * size)
    snapshot = repo / "snapshots" / "c0ffee" / filename
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(blob)


def test_catalogue_lists_well_known_weights_unavailable_offline(
    bare_client: TestClient, headers_a: dict[str, str]
) -> None:
    listing = _listing(bare_client, headers_a)
    for name, (family, arch, weights, kind) in REQUIRED.items():
        item = listing[name]
        assert (item["family"], item["arch"], item["weights"], item["kind"]) == (family, arch, weights, kind)
        assert item["source"] == "catalogue" and item["description"]
        assert item["size_bytes"] > 100_000_000 and item["num_params"] > 80_000_000
        assert item["sha256"] is None
        # HF_HUB_OFFLINE=1 in the tests and nothing cached: nothing can load.
        assert item["available"] is False and item["availability"] == "missing"
    assert listing[MOCO]["kind"] == "moco" and listing[MOCO]["available"] is False
    assert listing["clip-vit-l-14-openai"]["num_params"] > listing["clip-vit-b-16-openai"]["num_params"]


def test_cached_weights_are_available_with_their_size_on_disk(
    bare_client: TestClient, headers_a: dict[str, str], empty_hf_cache: Path
) -> None:
    _fake_snapshot(empty_hf_cache, "timm/vit_base_patch16_224.mae", "model.safetensors", 1234)
    _fake_snapshot(empty_hf_cache, "timm/vit_base_patch16_clip_224.openai", "open_clip_model.safetensors", 99)
    listing = _listing(bare_client, headers_a)
    for name, size in (("vit-b-16-mae", 1234), ("clip-vit-b-16-openai", 99)):
        assert listing[name]["availability"] == "cached" and listing[name]["available"] is True
        assert listing[name]["size_bytes"] == size
    assert listing["vit-b-16-in21k"]["available"] is False


def test_a_mocov3_file_under_the_data_dir_makes_it_local(
    bare_client: TestClient, headers_a: dict[str, str], settings: Settings
) -> None:
    weights = Path(settings.data_dir).resolve() / "weights" / "vit-b-300ep.pth.tar"
    item = bare_client.get(f"/v1/backbones/{MOCO}", headers=headers_a).json()
    assert item["weights"] == str(weights) and item["available"] is False
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"x" * 321)
    item = bare_client.get(f"/v1/backbones/{MOCO}", headers=headers_a).json()
    assert (item["availability"], item["available"], item["size_bytes"]) == ("local", True, 321)


def test_hub_forms_are_downloadable_when_the_hub_answers(
    bare_client: TestClient, headers_a: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    probes: list[int] = []
    probe = HubProbe()
    monkeypatch.setattr(probe, "_probe", lambda: probes.append(1) or True)
    monkeypatch.setattr(catalogue, "HUB_PROBE", probe)
    monkeypatch.setattr(catalogue, "hub_offline", lambda: False)
    for _ in range(2):
        listing = _listing(bare_client, headers_a)
        for name in REQUIRED:
            assert listing[name]["availability"] == "downloadable" and listing[name]["available"] is True
        assert listing[MOCO]["availability"] == "missing"  # a file to put in place: nothing to download
    assert probes == [1]  # one probe, remembered across requests


def test_the_hub_probe_never_runs_offline_and_never_holds_a_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    release = threading.Event()

    def slow_probe() -> bool:
        calls.append(1)
        release.wait()
        return True

    probe = HubProbe(timeout_seconds=0.01)
    monkeypatch.setattr(probe, "_probe", slow_probe)
    monkeypatch.setattr(catalogue, "hub_offline", lambda: True)
    assert probe.reachable() is False and calls == []  # offline: the hub is never asked
    monkeypatch.setattr(catalogue, "hub_offline", lambda: False)
    assert probe.reachable() is False  # the probe is still in flight: the last known answer
    running = probe._running
    assert running is not None
    release.set()
    running.join()
    assert probe.reachable() is True and calls == [1]


def test_a_file_adds_to_the_catalogue_and_wins_a_clash(
    settings: Settings, headers_a: dict[str, str], backbones_file: Path
) -> None:
    data = json.loads(backbones_file.read_text())
    data["vit-b-16-mae"] = {**data["tiny-vit"], "kind": "mae", "description": "ours"}
    backbones_file.write_text(json.dumps(data))
    with _client(settings) as client:
        listing = _listing(client, headers_a)
    assert set(REQUIRED) | {MOCO, "tiny-vit", "tiny-clip", "missing-vit"} == set(listing)
    mae = listing["vit-b-16-mae"]
    assert (mae["source"], mae["weights"], mae["description"], mae["available"]) == (
        "file",
        "random",
        "ours",
        True,
    )
    assert listing["tiny-clip"]["source"] == "file" and listing["tiny-clip"]["availability"] == "local"
    assert listing["missing-vit"]["availability"] == "missing"
    assert list(listing)[:4] == ["tiny-vit", "tiny-clip", "missing-vit", "vit-b-16-mae"]  # file first


def test_replace_mode_serves_the_file_alone(settings: Settings, headers_a: dict[str, str]) -> None:
    with _client(settings, backbones_file_mode="replace") as client:
        assert set(_listing(client, headers_a)) == {"tiny-vit", "tiny-clip", "missing-vit"}


@pytest.fixture
def built_zoo(settings: Settings) -> Path:
    """The random-init demo backbones written as a zoo under data_dir/zoo (same registry format)."""
    from devstack.backbones import ensure_demo_backbones

    return ensure_demo_backbones(zoo_dir(settings.data_dir))


def test_a_zoo_under_the_data_dir_joins_the_catalogue(
    settings: Settings, headers_a: dict[str, str], built_zoo: Path
) -> None:
    assert built_zoo == zoo_registry_path(settings.data_dir).resolve()
    zoo = json.loads(built_zoo.read_text())
    with _client(settings, backbones_file=None) as client:
        listing = _listing(client, headers_a)
        assert set(REQUIRED) <= set(listing)
        for name in ("demo-vit", "demo-clip"):
            item = listing[name]
            assert (item["source"], item["availability"], item["available"]) == ("zoo", "local", True)
            assert item["sha256"] == zoo[name]["sha256"] and item["size_bytes"] > 0
        assert listing["demo-vit"]["size_bytes"] == Path(zoo["demo-vit"]["weights"]).stat().st_size
        Path(zoo["demo-vit"]["weights"]).unlink()
        assert _listing(client, headers_a)["demo-vit"]["available"] is False


def test_a_broken_zoo_registry_is_skipped(settings: Settings, headers_a: dict[str, str]) -> None:
    path = zoo_registry_path(settings.data_dir)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with _client(settings, backbones_file=None) as client:
        listing = _listing(client, headers_a)
    assert set(REQUIRED) <= set(listing) and all(item["source"] == "catalogue" for item in listing.values())


def test_the_default_zero_shot_backbone_prefers_one_on_disk(settings: Settings, built_zoo: Path) -> None:
    bare = settings.model_copy(update={"backbones_file": None})
    assert (
        server_registry(bare).default_for("open_clip") == "demo-clip"
    )  # the zoo's, not an uncached ViT-B-16
    assert server_registry(bare).default_for("open_clip", "clip-vit-l-14-openai") == "clip-vit-l-14-openai"
    built_zoo.unlink()
    assert server_registry(bare).default_for("open_clip") == "clip-vit-b-16-openai"  # nothing on disk
    # The file comes first: its random-init CLIP loads now.
    assert server_registry(settings).default_for("open_clip") == "tiny-clip"


def test_the_worker_sees_what_the_api_lists(
    settings: Settings, headers_a: dict[str, str], built_zoo: Path
) -> None:
    with _client(settings) as client:
        listed = list(_listing(client, headers_a))
    assert list(server_registry(settings).specs) == listed
    assert {"tiny-vit", "demo-clip", "vit-b-16-mae"} <= set(listed)


def test_the_merged_registry_follows_file_changes(settings: Settings, backbones_file: Path) -> None:
    holder = ServerRegistry(settings)
    first = holder.get()
    assert holder.get() is first  # nothing changed: nothing re-read or re-merged
    data = json.loads(backbones_file.read_text())
    data["extra"] = data.pop("tiny-vit")
    backbones_file.write_text(json.dumps(data))
    names = set(holder.get().specs)
    assert "extra" in names and "tiny-vit" not in names and "clip-vit-b-16-openai" in names


def test_filters(bare_client: TestClient, headers_a: dict[str, str], built_zoo: Path) -> None:
    timm = _listing(bare_client, headers_a, family="timm")
    assert {"vit-b-16-in21k", "vit-b-16-mae", MOCO, "demo-vit"} <= set(timm)
    assert all(item["family"] == "timm" for item in timm.values())
    assert set(_listing(bare_client, headers_a, kind="mae")) == {"vit-b-16-mae"}
    assert set(_listing(bare_client, headers_a, kind="moco")) == {MOCO}
    assert set(_listing(bare_client, headers_a, available="true")) == {"demo-vit", "demo-clip"}
    unavailable = _listing(bare_client, headers_a, available="false", family="open_clip")
    assert set(unavailable) == {n for n, v in REQUIRED.items() if v[0] == "open_clip"}
    response = bare_client.get("/v1/backbones", headers=headers_a, params={"family": "jax"})
    assert response.status_code == 422 and response.json()["error"]["param"] == "family"


def test_get_one_backbone(bare_client: TestClient, headers_a: dict[str, str]) -> None:
    item = bare_client.get("/v1/backbones/vit-b-16-mae", headers=headers_a).json()
    assert (item["name"], item["kind"], item["source"]) == ("vit-b-16-mae", "mae", "catalogue")
    response = bare_client.get("/v1/backbones/nope", headers=headers_a)
    assert response.status_code == 404
    assert response.json()["error"] == {"code": "not_found", "message": "backbone not found", "param": "name"}
    assert bare_client.get("/v1/backbones/vit-b-16-mae").status_code == 401


def test_operation_ids(bare_client: TestClient) -> None:
    paths = bare_client.get("/openapi.json").json()["paths"]
    assert paths["/v1/backbones"]["get"]["operationId"] == "list_backbones"
    assert paths["/v1/backbones/{name}"]["get"]["operationId"] == "get_backbone"


def test_the_zoo_registry_name_is_the_one_the_zoo_builder_writes() -> None:
    from models.zoo.build import REGISTRY_NAME

    assert zoo_registry_path(Path("var")) == Path("var") / "zoo" / REGISTRY_NAME
