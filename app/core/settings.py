"""All runtime settings, from ``PROMPTUNE_*`` environment variables (one pydantic-settings class).

No other module reads ``os.environ`` for configuration: import :func:`get_settings`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1 << 20


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROMPTUNE_", env_file=".env", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path("var")
    # Default: an SQLite file under data_dir (the embedded default). PostgreSQL in production:
    # postgresql+psycopg://user:pass@host/db (postgres:// and postgresql:// are rewritten to psycopg).
    database_url: str | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Object storage for datasets and checkpoints: None = a local folder under data_dir;
    # an fsspec URL (s3://bucket/prefix) in production.
    storage_url: str | None = None
    backbones_file: Path | None = None
    # "add": the file's backbones join the built-in catalogue and the zoo (its names win on a clash);
    # "replace": the file is the whole registry (docs/backbones.md).
    backbones_file_mode: Literal["add", "replace"] = "add"
    # Extra prompt-learning methods: comma-separated importable modules that call models.register_method
    # (installed packages can use the entry point group "promptune.methods" instead).
    method_modules: str = ""
    # Operator-registered WebDataset shard sets tenants may stream-train on (app/core/shard_sets.py).
    shard_sets_file: Path | None = None
    default_backbone: str | None = None

    # Limits (OWASP API4): uploads, archives, images, inference batches.
    max_upload_bytes: int = Field(default=1024 * MiB, gt=0)
    max_archive_members: int = Field(default=50_000, gt=0)
    max_member_bytes: int = Field(default=64 * MiB, gt=0)
    max_uncompressed_bytes: int = Field(default=4096 * MiB, gt=0)
    max_compression_ratio: float = Field(default=200.0, gt=1)
    max_image_pixels: int = Field(default=40_000_000, gt=0)
    min_images_per_dataset: int = Field(default=2, gt=0)
    max_predict_images: int = Field(default=64, gt=0)
    max_top_k: int = Field(default=20, gt=0)
    max_epochs: int = Field(default=500, gt=0)
    max_concurrent_jobs_per_tenant: int = Field(default=8, gt=0)

    # Jobs: the database is the source of truth; Redis is transport only.
    job_max_attempts: int = Field(default=3, gt=0)
    job_lease_seconds: int = Field(default=60, gt=1)
    job_soft_time_limit_seconds: int = Field(default=6 * 3600, gt=0)
    job_hard_time_limit_seconds: int = Field(default=6 * 3600 + 300, gt=0)
    checkpoint_every_steps: int = Field(default=50, ge=0)
    reaper_interval_seconds: int = Field(default=30, gt=0)
    queued_redeliver_after_seconds: int = Field(default=120, gt=0)
    # Temp files and staging folders left by killed writers are deleted once this old (the reaper, hourly).
    storage_sweep_after_seconds: int = Field(default=6 * 3600, gt=0)
    # jobs.progress is written at most this often (0 = every step, as the chaos tests use).
    progress_interval_seconds: float = Field(default=0.5, ge=0)
    # Data-parallel jobs (docs/distributed.md): the ranks this worker may start for one job (its GPUs;
    # on a machine without GPUs, gloo CPU processes), and how long a rank waits in a collective for the
    # others before the attempt fails (a dead peer usually fails it at once; this bounds a hung one).
    worker_devices: int = Field(default=1, ge=1, le=1024)
    rank_timeout_seconds: float = Field(default=300.0, gt=0)

    inference_cache_size: int = Field(default=4, gt=0)
    # Serving (app/serving): where predictions run, in what precision, and how requests are batched.
    # "auto" = the first CUDA device when there is one, else the CPU.
    inference_device: str = "auto"
    inference_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    inference_max_batch_images: int = Field(default=32, gt=0)
    inference_max_wait_ms: float = Field(default=5.0, ge=0)  # adaptive: at most half a forward
    inference_max_queue_images: int = Field(default=512, gt=0)  # beyond: 503 + Retry-After
    inference_max_tenant_images: int = Field(default=256, gt=0)  # one tenant's share in flight: else 429
    inference_timeout_seconds: float = Field(default=30.0, gt=0)  # a request's deadline in the queue
    torch_threads: int | None = None

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        return value

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.job_hard_time_limit_seconds <= self.job_soft_time_limit_seconds:
            raise ValueError("job_hard_time_limit_seconds must exceed job_soft_time_limit_seconds")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'promptune.db').resolve()}"

    @property
    def visibility_timeout_seconds(self) -> int:
        # Above the longest allowed job, so Redis never redelivers a running task (Celery caveat);
        # the DB lease guards against duplicates anyway.
        return self.job_hard_time_limit_seconds + 600


@lru_cache
def get_settings() -> Settings:
    return Settings()
