"""GET /v1/methods: the registry as the API shows it."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.helpers import image_folder_zip
from tests.api.test_datasets import assert_error


def test_methods_list_their_family_capabilities_and_config_schema(
    client: TestClient, headers_a: dict[str, str]
) -> None:
    methods = {m["name"]: m for m in client.get("/v1/methods", headers=headers_a).json()["data"]}
    assert {"rpp", "spt"} <= set(methods)
    rpp, spt = methods["rpp"], methods["spt"]
    assert (rpp["family"], spt["family"]) == ("open_clip", "timm")
    assert rpp["capabilities"] == {"init_from": True, "zero_shot": True}
    assert spt["capabilities"] == {"init_from": False, "zero_shot": False}
    rpp_fields, spt_fields = rpp["config_schema"]["properties"], spt["config_schema"]["properties"]
    assert rpp_fields["carry"]["enum"] == ["add", "replace"]
    assert rpp_fields["teacher"]["type"] == ["string", "null"]  # a registered backbone's name
    assert spt_fields["readout"]["default"] == "auto" and "init_from" not in spt_fields
    assert {"epochs", "lr", "val_fraction", "shots"} <= set(spt_fields)
    assert not {"seed", "num_workers", "checkpoint_every_steps"} & set(spt_fields)
    assert client.get("/v1/methods/spt", headers=headers_a).json() == spt
    assert_error(client.get("/v1/methods/lora", headers=headers_a), 404, "not_found")


def test_a_job_may_set_every_published_field(client: TestClient, headers_a: dict[str, str]) -> None:
    upload = client.post("/v1/datasets", headers=headers_a, files={"file": ("d.zip", image_folder_zip())})
    dataset_id = upload.json()["id"]
    config = {"epochs": 1, "readout": "mean", "prompt_dropout": 0.1, "drop_last": True, "shots": 2}
    body = {"method": "spt", "backbone": "tiny-vit", "dataset_id": dataset_id, "config": config}
    response = client.post("/v1/jobs", headers=headers_a, json=body)
    assert response.status_code == 201, response.text
    assert response.json()["config"] == config
