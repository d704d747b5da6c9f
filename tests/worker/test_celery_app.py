"""Celery wiring: reliability settings from Settings, JSON-only messages carrying just the job id (real Redis)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
import redis
from celery import Celery
from sqlalchemy import update

import app.core.queue as queue_module
import worker.celery_app as celery_module
import worker.tasks  # noqa: F401 - registers the task
from app.core.db.session import session_scope
from app.core.db.tables import Job, utcnow
from app.core.queue import JOBS_QUEUE, RUN_JOB_TASK, create_celery_app, enqueue_job
from app.core.settings import Settings
from tests.services import RedisServer
from worker.reaper import reap_once


def test_reliability_settings_come_from_settings() -> None:
    settings = Settings(
        redis_url="redis://127.0.0.1:1/3", job_soft_time_limit_seconds=100, job_hard_time_limit_seconds=200
    )
    conf = create_celery_app(settings).conf
    assert conf.broker_url == conf.result_backend == "redis://127.0.0.1:1/3"
    assert (conf.task_serializer, conf.result_serializer, list(conf.accept_content)) == (
        "json",
        "json",
        ["json"],
    )
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert (conf.task_soft_time_limit, conf.task_time_limit) == (100, 200)
    visibility = settings.visibility_timeout_seconds
    assert visibility > 200
    assert conf.broker_transport_options["visibility_timeout"] == visibility
    assert conf.result_backend_transport_options["visibility_timeout"] == visibility
    assert conf.visibility_timeout == visibility
    assert conf.worker_cancel_long_running_tasks_on_connection_loss and conf.task_track_started
    assert conf.task_default_queue == JOBS_QUEUE
    assert RUN_JOB_TASK in celery_module.app.tasks


@pytest.fixture
def broker(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    app: Celery = create_celery_app(Settings(redis_url=redis_server.url))
    monkeypatch.setattr(queue_module, "_client", app)
    client = redis.Redis.from_url(redis_server.url)
    client.delete(JOBS_QUEUE)
    yield client
    client.delete(JOBS_QUEUE)


def _messages(client: redis.Redis) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in client.lrange(JOBS_QUEUE, 0, -1)]


@pytest.mark.services
def test_enqueue_sends_only_the_job_id_as_json(broker: redis.Redis) -> None:
    enqueue_job("job-123")
    [message] = _messages(broker)
    assert message["content-type"] == "application/json"
    assert message["headers"]["task"] == RUN_JOB_TASK  # type: ignore[index]
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))  # type: ignore[arg-type]
    assert (args, kwargs) == (["job-123"], {})


@pytest.mark.services
def test_reaper_resends_a_stale_queued_job_to_the_broker(
    broker: redis.Redis, db_url: str, make_job: Callable[..., str]
) -> None:
    stale = make_job()
    make_job()  # fresh: left alone
    with session_scope(db_url) as s:
        s.execute(update(Job).where(Job.id == stale).values(updated_at=utcnow() - timedelta(hours=1)))
    result = reap_once(Settings(database_url=db_url, queued_redeliver_after_seconds=60), enqueue=enqueue_job)
    assert result.requeued == [stale]
    [message] = _messages(broker)
    args, _, _ = json.loads(base64.b64decode(message["body"]))  # type: ignore[arg-type]
    assert args == [stale]
