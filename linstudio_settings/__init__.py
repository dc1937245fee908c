"""The one settings object of LinFusion Studio, and its version: the ground floor every room stands on.

Every knob a studio may turn lives here and is read from the environment with the prefix
`LINSTUDIO_` (or a `.env` file in the working directory). Code asks `get_settings()` once and
passes values down; nothing else reads the environment. The embedded default — SQLite, a local
folder as the object store, Prefect's local mode and the tiny built-in model — needs no setting
at all; production (PostgreSQL, S3, a Prefect server) is chosen here, not by code changes.

This package imports nothing of ours, so the engine, manifests, catalogue, flows and the command
line may all stand on it (docs/architecture.md). The aim is that library functions take a
`Settings` as an argument and only the edges (the command line, a flow's entry point, the
gallery's startup) call `get_settings()`; the few library functions that still call it are listed
under "still against" in docs/architecture.md.
"""

from __future__ import annotations

import functools
import socket
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__version__ = "0.1.0"


class Settings(BaseSettings):
    """LinFusion Studio settings (environment prefix `LINSTUDIO_`)."""

    model_config = SettingsConfigDict(env_prefix="LINSTUDIO_", env_file=".env", extra="ignore")

    home: Path = Field(
        default=Path("~/.linstudio"),
        description="Root folder for model caches, the model registry file and the embedded catalogue.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the catalogue database. Default: SQLite at HOME/catalogue.db.",
    )
    store_url: str | None = Field(
        default=None,
        description="Object store URL: file:///folder or s3://bucket/prefix. Default: file:// HOME/store.",
    )
    device: str | None = Field(
        default=None,
        description="Torch device for rendering (cuda, cuda:1, cpu). Default: CUDA when present, else CPU.",
    )
    dtype: str | None = Field(
        default=None,
        description="Torch dtype for rendering (bfloat16, float16, float32). Default: bf16 on CUDA, fp32 on CPU.",
    )
    shared_roots: list[Path] = Field(
        default_factory=list,
        description="Allow-listed shared folders (a studio NAS) that manifests may reference by absolute path. "
        "JSON list in the environment, e.g. LINSTUDIO_SHARED_ROOTS='[\"/mnt/nas/controls\"]'.",
    )
    max_jobs_per_manifest: int = Field(
        default=5000, ge=1, description="A manifest that expands to more render jobs than this is refused."
    )
    worker_name: str = Field(
        default_factory=socket.gethostname,
        description="Name this process records as the worker that made a render.",
    )
    lease_seconds: int = Field(
        default=900, ge=10, description="How long a running job's lease lasts before another run may take it."
    )
    # -- the gallery (catalogue/web) --
    secret_key: str | None = Field(
        default=None,
        description="Key signing the gallery's session cookies and CSRF tokens. Default: generated once and kept in "
        "$LINSTUDIO_HOME/secret_key; set it when several gallery processes serve one studio.",
    )
    auth_header: str | None = Field(
        default=None,
        description="Name of a header (e.g. X-Forwarded-User) set by the studio's single-sign-on proxy; when set, "
        "its value is the signed-in user. Only set it when the gallery is reachable through that proxy alone.",
    )
    read_requires_login: bool = Field(
        default=False,
        description="When true, browsing the gallery and reading the API also need a sign-in or an API token.",
    )
    s3_public_endpoint: str | None = Field(
        default=None,
        description="S3 endpoint URL artists' machines can reach, used to sign download URLs when the internal "
        "endpoint (AWS_ENDPOINT_URL) is not reachable from them.",
    )
    export_workers: int = Field(
        default=2, ge=1, le=64,
        description="Exports one gallery process runs at once, in background threads outside the web workers; "
        "further exports wait in the queue (shared by every gallery process, in the catalogue database).",
    )

    inbox_url: str | None = Field(
        default=None,
        description="Submissions inbox for the nightly batch: file:///folder or s3://bucket/prefix. "
        "Default: file:// HOME/inbox.",
    )
    nightly_cron: str = Field(
        default="0 2 * * *", description="Cron schedule of the `nightly-batch` deployment (default 02:00)."
    )
    nightly_timezone: str = Field(
        default="UTC", description="Time zone of the nightly schedule, e.g. Europe/London."
    )
    shard_size: int = Field(
        default=50, ge=1,
        description="Jobs per flow run when a batch is spread over GPU workers: a model loads once per shard.",
    )
    work_pool: str = Field(
        default="gpu", description="Prefect work pool of the GPU workers: render shards go there."
    )
    control_pool: str = Field(
        default="control",
        description="Prefect work pool for the flows that only orchestrate (nightly-batch, rerender), so they "
        "never hold a GPU worker's slot while they wait; run one CPU worker on it.",
    )
    large_gpu_pool: str | None = Field(
        default=None,
        description="Work pool of hosts with large GPUs; shards whose planned memory exceeds "
        "LARGE_JOB_GIB go there. Unset: everything goes to WORK_POOL.",
    )
    large_job_gib: float = Field(
        default=40.0, gt=0, description="Planned peak memory (GiB) above which a job needs the large-GPU pool."
    )
    render_host: str | None = Field(
        default=None,
        description="Unix socket of this GPU's long-lived render host, which keeps models loaded between flow runs. "
        "Set by `linstudio worker` for the flow runs it starts; unset: a flow run renders in its own process.",
    )
    render_host_key: SecretStr | None = Field(
        default=None,
        description="Key the flow runs and the render host authenticate with; generated by `linstudio worker`.",
    )

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def models_dir(self) -> Path:
        """Where built-in tiny models are built and cached."""
        return self.home / "models"

    @property
    def registry_file(self) -> Path:
        """The studio's model registry (YAML), merged over the built-in entries."""
        return self.home / "models.yaml"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'catalogue.db'}"

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"file://{self.home / 'store'}"

    @property
    def resolved_inbox_url(self) -> str:
        return self.inbox_url or f"file://{self.home / 'inbox'}"


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests call `get_settings.cache_clear()` after changing env."""
    return Settings()
