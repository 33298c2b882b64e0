"""Settings: defaults, then PIXMILL_* environment variables, then command-line flags."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_TILED_FILE_BYTES, DEFAULT_MAX_TILED_PIXELS, GiB, MiB

__all__ = ["Settings", "load_settings"]


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything pixmill can be configured with, and its default."""

    data_dir: Path = Path("pixmill-data")
    database_url: str = ""                    # postgresql://…: jobs and tasks in PostgreSQL; empty: SQLite in data_dir
    blob_url: str = ""                        # s3://bucket/prefix: images in S3 (boto3); empty: data_dir/blobs
    engine: str = "mpi"                       # "mpi" or "local"
    workers: int = 0                          # 0: one per core
    host: str = "127.0.0.1"
    port: int = 5000
    max_pixels: int = DEFAULT_MAX_PIXELS      # per image, read from the header before decoding
    max_tiled_pixels: int = DEFAULT_MAX_TILED_PIXELS  # a huge TIFF, over max_pixels, split across the workers
    max_tiled_file_bytes: int = DEFAULT_MAX_TILED_FILE_BYTES  # per huge input file
    max_files: int = 100                      # per job
    max_file_bytes: int = 50 * MiB            # per uploaded file
    max_request_bytes: int = 500 * MiB        # per request
    quota_bytes: int = 10 * GiB               # the data dir's blobs
    inline_bytes: int = 64 * 1024             # blobs up to this size live in the database, not as files or objects
    max_queued_tasks: int = 10_000            # over this many queued tasks, new uploads get 429
    max_jobs_per_token: int = 100             # a token with this many unfinished jobs gets 429 for a new one
    ttl_seconds: int = 24 * 3600              # jobs older than this are deleted with their blobs
    task_timeout: float = 60.0                # seconds one task may run
    max_attempts: int = 3                     # worker crashes before a task fails
    lease_seconds: float = 30.0               # a claimed task returns to the queue after this without renewal
    heartbeat_timeout: float = 10.0           # a dispatcher silent this long is dead: its tasks are requeued
    api_tokens: tuple[str, ...] = field(default=())  # empty: no tokens needed
    list_jobs: int = 0                        # 1: GET /api/v1/jobs lists jobs even without tokens (ids are secrets)
    webhook_secret: str = ""                  # signs webhooks (HMAC-SHA256); empty: webhook_url is refused
    webhook_allow: tuple[str, ...] = field(default=())  # hosts or CIDRs webhooks may reach though not public
    webhook_attempts: int = 8                 # deliveries of one webhook before it is given up
    webhook_backoff: float = 30.0             # seconds before the 2nd attempt, doubling each time (at most an hour)
    webhook_timeout: float = 10.0             # seconds a receiver has to connect and answer
    threads: int = 8                          # waitress threads
    manager_backoff: float = 0.02             # most seconds an idle MPI pool's manager sleeps between polls
    worker_backoff: float = 0.02              # most seconds an idle MPI worker sleeps between polls
    fast_backoff: float = 0.0005              # the cap of both for a moment after each hand-off
    warm_backoff: float = 0.002               # a worker's cap for warm_seconds after that moment
    warm_seconds: float = 2.0

    def with_overrides(self, **values: Any) -> Settings:
        """A copy with the given values, ignoring those that are None."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})

    def worker_count(self) -> int:
        """The number of workers to start: the setting, or one per core."""
        return self.workers if self.workers > 0 else max(1, os.cpu_count() or 1)

    @property
    def db_path(self) -> Path:
        """The SQLite database inside the data dir."""
        return self.data_dir / "pixmill.db"

    @property
    def blob_dir(self) -> Path:
        """The folder of input and result blobs inside the data dir."""
        return self.data_dir / "blobs"


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from the defaults, PIXMILL_* variables in environ, then the given overrides."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = environ.get(f"PIXMILL_{f.name.upper()}")
        if raw is None:
            continue
        values[f.name] = _convert(f.name, f.type, raw)
    return Settings(**values).with_overrides(**overrides)


def _convert(name: str, kind: Any, raw: str) -> Any:
    kind = str(kind)
    try:
        if "Path" in kind:
            return Path(raw)
        if "tuple" in kind:
            return tuple(t.strip() for t in raw.split(",") if t.strip())
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ValueError(f"PIXMILL_{name.upper()} must be a {kind}, got {raw!r}") from None
    return raw
