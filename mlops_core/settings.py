"""Every setting of every service, read from the environment (and `.env`) in one typed object."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Settings for the gateway, the pipeline worker and the inference replicas.

    Names are the environment variables (case-insensitive); `.env.example` lists them all.
    """

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    # --- shared -------------------------------------------------------------------------
    data_dir: Path = Field(Path(".mlops-data"), validation_alias=_env("MLOPS_DATA_DIR"))
    """Directory holding all local state: database, MLflow store, Redis dump, model caches."""
    dev_mode: bool = Field(False, validation_alias=_env("MLOPS_DEV_MODE"))
    """Development mode: allows an empty webhook secret. Never set it in production."""
    log_level: str = Field("INFO", validation_alias=_env("MLOPS_LOG_LEVEL"))
    """Log level of every service: `DEBUG`, `INFO`, `WARNING` or `ERROR`."""
    redis_url: str | None = Field(None, validation_alias=_env("REDIS_URL"))
    """Redis for queues, logs and the fleet's desired state. Unset: `make run` embeds one;
    an inference server without it runs standalone on its model repository."""
    database_url: str | None = Field(None, validation_alias=_env("DATABASE_URL"))
    """SQLAlchemy URL. Unset: SQLite in the data directory."""
    mlflow_tracking_uri: str = Field(
        "http://localhost:5000", validation_alias=_env("MLFLOW_TRACKING_URI")
    )
    """MLflow tracking server: the worker records runs and registers versions there, replicas
    fetch `models:/<name>/<version>` from it, the gateway lists versions. `make run` points it
    at the server it starts."""
    secret_key: str | None = Field(None, validation_alias=_env("MLOPS_SECRET_KEY"))
    """Fernet key that encrypts repository tokens in the database; the gateway and the pipeline
    worker need the same one. Unset: a key kept in `<data_dir>/secret.key` (made on first use)."""

    # --- inference replica --------------------------------------------------------------
    model_repository: Path | None = Field(None, validation_alias=_env("MLOPS_MODEL_REPOSITORY"))
    """Root of the model repository (`<model>/<version>/model.onnx`). Unset: data_dir/models."""
    model_source: str = Field("directory", validation_alias=_env("MLOPS_MODEL_SOURCE"))
    """Where a replica fetches versions it lacks: `directory` (the repository) or `mlflow`."""
    grpc_host: str = Field("0.0.0.0", validation_alias=_env("MLOPS_GRPC_HOST"))
    """Address of a replica's shared gRPC port, the one clients use."""
    grpc_port: int = Field(50051, validation_alias=_env("MLOPS_GRPC_PORT"))
    """A replica's shared gRPC port; replicas on one machine all listen on it (SO_REUSEPORT)."""
    http_port: int = Field(8001, validation_alias=_env("MLOPS_HTTP_PORT"))
    """Replica HTTP port for `/health` and Prometheus `/metrics`."""
    replica_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        validation_alias=_env("MLOPS_REPLICA_ID"),
    )
    """A replica's name in heartbeats and logs. Unset: `<hostname>-<pid>`."""
    max_message_bytes: int = Field(
        64 * 1024 * 1024, validation_alias=_env("MLOPS_MAX_MESSAGE_BYTES")
    )
    """Largest gRPC message accepted or sent; larger requests get RESOURCE_EXHAUSTED."""
    batching: bool = Field(True, validation_alias=_env("MLOPS_BATCHING"))
    """Whether a replica may batch concurrent requests of one model at all."""
    max_batch_size: int = Field(64, validation_alias=_env("MLOPS_MAX_BATCH_SIZE"))
    """Rows gathered into one onnxruntime call at most (overridable per model)."""
    max_queue_delay_us: int = Field(0, validation_alias=_env("MLOPS_MAX_QUEUE_DELAY_US"))
    """How long a non-empty queue waits for more rows, in microseconds (per model too)."""
    batch_min_fixed_us: int = Field(50, ge=0, validation_alias=_env("MLOPS_BATCH_MIN_FIXED_US"))
    """Batch a model only if a call costs at least this (µs) whatever its rows, measured at
    load: merging saves only that, and each request sharing a call costs a thread wake-up.
    0 batches every batchable model."""
    grpc_threads: int = Field(16, ge=1, validation_alias=_env("MLOPS_GRPC_THREADS"))
    """A replica's gRPC server threads: the requests it decodes, runs and encodes at once
    (more wait in grpc core's queue). Concurrent requests of one model share onnxruntime
    calls."""
    cpus: str = Field("", validation_alias=_env("MLOPS_CPUS"))
    """CPUs a replica runs on, as `taskset` writes them ("0", "0-3", "1,3"); empty: any.
    One CPU per replica, each its own, is fastest with several replicas on a small machine:
    a process's threads then never pass the GIL between cores."""
    keep_versions: int = Field(3, validation_alias=_env("MLOPS_KEEP_VERSIONS"))
    """Versions per model kept loaded (active included) so a rollback is an instant flip."""
    ort_intra_op_threads: int = Field(1, validation_alias=_env("MLOPS_ORT_INTRA_OP_THREADS"))
    """onnxruntime threads within one call (intra-op) of a replica's models."""
    resync_interval_s: float = Field(5.0, validation_alias=_env("MLOPS_RESYNC_INTERVAL_S"))
    """How often a replica re-reads the desired state without a pub/sub notice, so a missed
    message heals itself."""
    heartbeat_interval_s: float = Field(1.0, validation_alias=_env("MLOPS_HEARTBEAT_INTERVAL_S"))
    """How often a replica writes its heartbeat (what it serves)."""
    heartbeat_ttl_s: float = Field(5.0, validation_alias=_env("MLOPS_HEARTBEAT_TTL_S"))
    """Lifetime of a replica's heartbeat: a replica silent this long no longer counts as live."""

    # --- pipeline worker ----------------------------------------------------------------
    github_base_url: str = Field("https://github.com", validation_alias=_env("GITHUB_BASE_URL"))
    """Scheme, host and port that repository URLs must use; set it for GitHub Enterprise."""
    allow_local_repos: bool = Field(False, validation_alias=_env("MLOPS_ALLOW_LOCAL_REPOS"))
    """Accept `file://` URLs and plain paths as repositories (tests, air-gapped installs)."""
    clone_timeout_s: float = Field(120.0, validation_alias=_env("MLOPS_CLONE_TIMEOUT_S"))
    """Longest git may take to fetch a pipeline's commit."""
    kernel_name: str = Field("python3", validation_alias=_env("MLOPS_KERNEL_NAME"))
    """Jupyter kernel of the notebook; `python3` is the platform's own Python, even when its
    venv is not activated."""
    kernel_start_timeout_s: float = Field(
        60.0, validation_alias=_env("MLOPS_KERNEL_START_TIMEOUT_S")
    )
    """How long the notebook's kernel may take to start."""
    execution_timeout_s: float = Field(600.0, validation_alias=_env("MLOPS_EXECUTION_TIMEOUT_S"))
    """Longest a single notebook cell may run."""
    deploy_timeout_s: float = Field(60.0, validation_alias=_env("MLOPS_DEPLOY_TIMEOUT_S"))
    """How long a rollout, rollback or model removal waits for every live replica; a pipeline's
    rollout that does not finish in time restores the previous desired state."""
    worker_concurrency: int = Field(2, validation_alias=_env("MLOPS_WORKER_CONCURRENCY"))
    """Pipelines one worker process runs at once."""
    pipeline_timeout_s: float = Field(3600.0, validation_alias=_env("MLOPS_PIPELINE_TIMEOUT_S"))
    """Longest a whole pipeline may run, all stages together, before it fails."""
    pipeline_max_attempts: int = Field(2, validation_alias=_env("MLOPS_PIPELINE_MAX_ATTEMPTS"))
    """Runs of one pipeline at most: one whose worker died is retried until this is reached."""
    mlflow_retry_budget_s: float = Field(
        60.0, gt=0, validation_alias=_env("MLOPS_MLFLOW_RETRY_BUDGET_S")
    )
    """How long one pipeline waits in all for an MLflow that does not answer (its calls are
    retried meanwhile) before it fails at its stage, naming MLflow and its address."""

    # --- progressive delivery (canary and shadow rollouts) ---
    rollout_tick_s: float = Field(1.0, gt=0, validation_alias=_env("MLOPS_ROLLOUT_TICK_S"))
    """How often the worker driving a rollout reads the replicas' figures and judges."""
    mirror_rate: float = Field(0.1, ge=0, le=1, validation_alias=_env("MLOPS_MIRROR_RATE"))
    """During a canary: the share of the champion's requests also run on the candidate, off
    the response path, to measure how often their answers agree."""
    shadow_rate: float = Field(0.1, ge=0, le=1, validation_alias=_env("MLOPS_SHADOW_RATE"))
    """During a shadow rollout: the share of requests mirrored to the candidate."""
    rollout_max_s: float = Field(86_400.0, gt=0, validation_alias=_env("MLOPS_ROLLOUT_MAX_S"))
    """Longest a rollout may run in all before it is aborted (its policy bounds each step)."""

    # --- sandbox for pushed code (the notebook's kernel, model loading and conversion) ---
    sandbox: Literal["local", "kubernetes", "off"] = Field(
        "local", validation_alias=_env("MLOPS_SANDBOX")
    )
    """Where pushed code runs: `local` (Linux namespaces through util-linux's unshare),
    `kubernetes` (one Job per sandboxed stage), or `off` (the worker's own user, no box:
    development only). Where `local` cannot make a box, pipelines fail and say so."""
    sandbox_network: bool = Field(False, validation_alias=_env("MLOPS_SANDBOX_NETWORK"))
    """Let boxed code open network connections (for notebooks that download data). Off: the
    box has only its own loopback."""
    sandbox_memory_mb: int = Field(4096, ge=64, validation_alias=_env("MLOPS_SANDBOX_MEMORY_MB"))
    """Address space of each boxed process, in MiB (RLIMIT_AS)."""
    sandbox_max_processes: int = Field(
        1024, ge=16, validation_alias=_env("MLOPS_SANDBOX_MAX_PROCESSES")
    )
    """Processes and threads the box's user may have at once (RLIMIT_NPROC)."""
    sandbox_max_file_mb: int = Field(1024, ge=1, validation_alias=_env("MLOPS_SANDBOX_MAX_FILE_MB"))
    """Largest file boxed code may write, in MiB (RLIMIT_FSIZE)."""
    sandbox_tmp_mb: int = Field(512, ge=16, validation_alias=_env("MLOPS_SANDBOX_TMP_MB"))
    """Size of the box's private /tmp (memory-backed), in MiB."""
    sandbox_wall_time_s: float = Field(
        1800.0, gt=0, validation_alias=_env("MLOPS_SANDBOX_WALL_TIME_S")
    )
    """Longest one boxed stage may run before every process in its box is killed."""
    sandbox_k8s_namespace: str = Field("", validation_alias=_env("MLOPS_SANDBOX_K8S_NAMESPACE"))
    """Namespace of the sandbox Jobs (MLOPS_SANDBOX=kubernetes). Empty: the worker's own."""
    sandbox_k8s_image: str = Field("", validation_alias=_env("MLOPS_SANDBOX_K8S_IMAGE"))
    """Image of the sandbox Jobs. Empty: the worker pod's own image (read once through the
    Kubernetes API), so a Job runs exactly the worker's code."""
    sandbox_k8s_work_claim: str = Field(
        "mlops-pipelines", validation_alias=_env("MLOPS_SANDBOX_K8S_WORK_CLAIM")
    )
    """ReadWriteMany PersistentVolumeClaim the worker mounts at `<data dir>/pipelines`; each
    Job mounts only its own pipeline's folder of it."""
    sandbox_k8s_service_account: str = Field(
        "mlops-sandbox", validation_alias=_env("MLOPS_SANDBOX_K8S_SERVICE_ACCOUNT")
    )
    """ServiceAccount of the sandbox pods: one bound to no role; its token is never mounted."""

    # --- gateway ------------------------------------------------------------------------
    gateway_host: str = Field("0.0.0.0", validation_alias=_env("MLOPS_GATEWAY_HOST"))
    """Address the gateway listens on."""
    gateway_port: int = Field(8000, validation_alias=_env("MLOPS_GATEWAY_PORT"))
    """Port of the gateway: REST API, webhook and WebSocket."""
    predict_batches_in_flight: int = Field(
        4, validation_alias=_env("MLOPS_PREDICT_BATCHES_IN_FLIGHT")
    )
    """Per model, how many stacked predictions the gateway keeps in flight to the fleet;
    predictions that arrive meanwhile are stacked into the next one. 0 sends each alone."""
    gateway_workers: int = Field(1, validation_alias=_env("MLOPS_GATEWAY_WORKERS"))
    """Gateway worker processes sharing its port; one process is bound to one core."""
    github_webhook_secret: str = Field("", validation_alias=_env("GITHUB_WEBHOOK_SECRET"))
    """Secret of the GitHub webhook, checked against every delivery's signature. The gateway
    refuses to start without it unless MLOPS_DEV_MODE is true; `make run` generates one."""
    api_key: str = Field("", validation_alias=_env("MLOPS_API_KEY"))
    """When set, every route but /health, /ready and the webhook needs `Bearer <key>`, and so
    does every replica RPC but the health ones (`authorization: Bearer <key>` metadata)."""
    fleet_address: str = Field("localhost:50051", validation_alias=_env("MLOPS_FLEET_ADDRESS"))
    """gRPC target of the inference fleet (e.g. `dns:///fleet:50051` behind a headless Service)."""
    max_webhook_bytes: int = Field(
        5 * 1024 * 1024, validation_alias=_env("MLOPS_MAX_WEBHOOK_BYTES")
    )
    """Largest webhook body read; GitHub caps its payloads at 25 MB, pushes are far smaller."""
    max_predict_bytes: int = Field(
        4 * 1024 * 1024, ge=1, validation_alias=_env("MLOPS_MAX_PREDICT_BYTES")
    )
    """Largest REST request body (413 beyond it), checked against Content-Length before any
    byte is read. Prediction rows are the largest body any route takes, so every route but
    the webhook is held to it. Parsed JSON rows take ~20x their size in memory, so 4 MiB
    (over 100,000 rows of 4 features) stays near 100 MiB; bigger batches go over gRPC."""

    # --- make run (every process on one machine) ------------------------------------------
    replicas: int = Field(2, ge=1, validation_alias=_env("MLOPS_REPLICAS"))
    """Inference replicas `make run` starts. They share the public gRPC port (SO_REUSEPORT);
    replica i also has HTTP port http_port+i and private gRPC port private_grpc_port_base+i."""
    pin_replicas: bool = Field(True, validation_alias=_env("MLOPS_PIN_REPLICAS"))
    """`make run` runs replica i on the i-th CPU it may use (round robin; `--cpus`)."""
    private_grpc_port_base: int = Field(
        50061, validation_alias=_env("MLOPS_PRIVATE_GRPC_PORT_BASE")
    )
    """First per-replica gRPC port, which the gateway balances across under `make run`."""
    redis_port: int = Field(6379, validation_alias=_env("MLOPS_REDIS_PORT"))
    """Port of the embedded Redis `make run` starts when REDIS_URL is unset."""
    mlflow_port: int = Field(5000, validation_alias=_env("MLOPS_MLFLOW_PORT"))
    """Port of the MLflow tracking server `make run` starts; services get MLFLOW_TRACKING_URI
    pointed at it."""
    ready_timeout_s: float = Field(180.0, validation_alias=_env("MLOPS_READY_TIMEOUT_S"))
    """How long `make run` waits for every service to be ready before it gives up."""
    warm_box: bool = Field(True, validation_alias=_env("MLOPS_WARM_BOX"))
    """Each pipeline worker keeps one sandbox started ahead (kernel started, libraries
    imported), used by exactly one pipeline and then replaced: seconds off every push. Off:
    each pipeline starts its box when it reaches the executing stage. Local and unboxed
    sandboxes only (the Kubernetes sandbox always starts its box on demand)."""
    warm_box_max_age_s: float = Field(
        3600.0, gt=0, validation_alias=_env("MLOPS_WARM_BOX_MAX_AGE_S")
    )
    """A warm box idle longer than this is thrown away and replaced, not used."""

    # --- connection age (replicas behind DNS) ---------------------------------------------
    grpc_max_connection_age_s: float = Field(
        300.0, ge=0, validation_alias=_env("MLOPS_GRPC_MAX_CONNECTION_AGE_S")
    )
    """A replica ends each client connection after this long (gRPC GOAWAY; grpc adds up to
    10 % of jitter), so clients that resolve the fleet's DNS name only when a connection ends
    (grpcio does, issue grpc/grpc#30015), such as the gateway, find replicas added since. 0
    keeps connections for ever."""
    grpc_max_connection_age_grace_s: float = Field(
        30.0, ge=0, validation_alias=_env("MLOPS_GRPC_MAX_CONNECTION_AGE_GRACE_S")
    )
    """How long calls in flight on an aged connection may still run before it is closed; new
    calls go to a fresh connection at once. Longer than the slowest prediction."""

    # --- many models per replica ----------------------------------------------------------
    replica_memory_budget_mb: int = Field(
        0, ge=0, validation_alias=_env("MLOPS_REPLICA_MEMORY_BUDGET_MB")
    )
    """Memory a replica's loaded model versions may take together, in MiB (each measured as it
    loads); beyond it the least recently used idle versions are unloaded, and a request for
    one loads it again. 0: unlimited, every desired version stays loaded."""
    cold_load_wait_s: float = Field(3.0, gt=0, validation_alias=_env("MLOPS_COLD_LOAD_WAIT_S"))
    """With a memory budget: how long a request for a version not in memory waits for it to
    load before it is answered UNAVAILABLE (HTTP 503) with a retry hint."""

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if self.model_repository is None:
            self.model_repository = self.data_dir / "models"
        self.model_repository = self.model_repository.expanduser().resolve()
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.data_dir / 'mlops.db'}"
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
