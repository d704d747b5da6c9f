"""The SDK and CLI tests run on the real stack of tests/e2e (redis-server, uvicorn, a Celery worker).

The fixtures here: the stack itself (re-exported), one worker for the session, a Client for the stack's
tenant, a digits dataset as a FOLDER (``<split>/<class>/<n>.png``, the layout the server reads) and one
SPT job trained on it once for every test that needs a model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.sample_data import digit_images
from devstack.stack import Proc
from promptune import Client, Dataset, Job, JobEvent
from tests.e2e.conftest import Stack, stack  # noqa: F401 - pytest fixture
from tests.services import redis_server  # noqa: F401 - pytest fixture

# Three short epochs on the tiny random-init ViT: seconds on a CPU.
SPT_CONFIG = {"epochs": 3, "batch_size": 8, "lr": 0.05, "mode": "deep", "num_prompts": 2, "init": "random"}


def write_digits_folder(folder: Path, *, per_class: int = 6) -> Path:
    """The digits as an ImageFolder tree: ``<split>/<class>/<n>.png``."""
    for n, item in enumerate(digit_images(per_class=per_class)):
        path = folder / item.split / item.label / f"{n:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(item.png)
    return folder


def digit_pngs(count: int) -> list[bytes]:
    """``count`` test-split digits as PNG bytes."""
    return [d.png for d in digit_images(per_class=6) if d.split == "test"][:count]


@pytest.fixture(scope="session")
def worker(stack: Stack) -> Iterator[Proc]:  # noqa: F811
    proc = stack.start_worker("sdk")
    yield proc
    proc.stop()


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:  # noqa: F811
    with Client(stack.base_url, stack.key) as sdk:
        yield sdk


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits_folder(tmp_path_factory.mktemp("digits") / "digits")


@dataclass(frozen=True)
class Trained:
    dataset: Dataset
    job: Job
    events: list[JobEvent]  # what jobs.events() yielded, live from creation to the end


@pytest.fixture(scope="session")
def trained(stack: Stack, worker: Proc, digits_folder: Path) -> Trained:  # noqa: F811
    """Folder upload -> SPT job on demo-vit -> its live events to the end, through the SDK."""
    with Client(stack.base_url, stack.key) as sdk:
        dataset = sdk.datasets.upload(digits_folder, name="digits-folder")
        job = sdk.jobs.create(
            method="spt", backbone="demo-vit", dataset_id=dataset.id, config=SPT_CONFIG, seed=3
        )
        events = list(sdk.jobs.events(job.id, timeout=300))
        final = sdk.jobs.get(job.id)
    assert final.status == "succeeded", (final, worker.tail())
    return Trained(dataset, final, events)
