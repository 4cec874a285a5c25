"""Request and response models of the API, with the examples OpenAPI shows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mlops_core.db import Pipeline, PipelineStatus, Repository, RolloutRow
from mlops_core.rollouts import RolloutRecord, RolloutState


def _as_utc(value: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class ErrorOut(BaseModel):
    """Every 4xx and 5xx answer has this shape (some add fields, e.g. `errors` or `checks`)."""

    detail: str = Field(examples=["pipeline 'f00' not found"])


class HealthOut(BaseModel):
    status: str = Field(examples=["ok"])


class ReadyOut(BaseModel):
    status: str = Field(examples=["ready"])
    checks: dict[str, str] = Field(
        description="One entry per component; `inference <replica id>` for each live replica",
        examples=[
            {
                "redis": "ok",
                "database": "ok",
                "mlflow": "ok",
                "inference": "ok: 1 live replicas",
                "inference replica-0": "ok: iris 3 (warm 2)",
                "workers": "ok: 1 live workers (host-a-4242), sandbox local",
            }
        ],
    )


# --- repositories ----------------------------------------------------------------------


class RepositoryCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "github_url": "https://github.com/acme/iris-training",
                    "branch": "main",
                    "notebook_path": "notebooks/train.ipynb",
                    "github_token": "ghp_exampletoken",
                }
            ]
        },
    )

    github_url: str = Field(max_length=2048, description="`https://github.com/owner/name`")
    branch: str = Field("main", max_length=255)
    notebook_path: str = Field(max_length=1024, description="Relative path of the notebook")
    github_token: str | None = Field(
        None,
        min_length=1,
        max_length=1024,
        pattern=r"^[\x21-\x7e]+$",
        description="Used only to clone; stored, never returned",
    )


class RepositoryOut(BaseModel):
    id: int = Field(examples=[1])
    github_url: str = Field(examples=["https://github.com/acme/iris-training"])
    full_name: str = Field(examples=["acme/iris-training"])
    branch: str = Field(examples=["main"])
    notebook_path: str = Field(examples=["notebooks/train.ipynb"])
    has_token: bool = Field(examples=[True])
    created_at: UtcDatetime

    @classmethod
    def of(cls, repo: Repository) -> RepositoryOut:
        return cls(
            id=repo.id,
            github_url=repo.github_url,
            full_name=repo.full_name,
            branch=repo.branch,
            notebook_path=repo.notebook_path,
            has_token=bool(repo.github_token),
            created_at=repo.created_at,
        )


# --- pipelines -------------------------------------------------------------------------


class PipelineErrorOut(BaseModel):
    stage: str | None = Field(examples=["validating"])
    message: str = Field(examples=["notebook lacks the required tags: mlops:export"])


class PipelineRolloutOut(BaseModel):
    """What became of the pipeline's version when its policy rolls out progressively."""

    id: str
    state: RolloutState = Field(examples=["rolled_back"])
    reason: str | None = Field(
        examples=["error rate 12.0% (12 of 100 requests) above max_error_rate 1.0%"]
    )

    @classmethod
    def of(cls, row: RolloutRow) -> PipelineRolloutOut:
        return cls(id=row.id, state=RolloutState(row.state), reason=row.record.get("reason"))


class PipelineOut(BaseModel):
    id: str = Field(examples=["6f1c2a5e-8a39-4d59-9f0e-2b1d2f3c4d5e"])
    repository_id: int | None = Field(examples=[1])
    status: PipelineStatus
    stage: str | None = Field(
        description="The stage running now, or the one that failed", examples=["executing"]
    )
    commit_sha: str = Field(examples=["9fceb02d0ae598e95dc970b74767f19372d61af8"])
    branch: str = Field(examples=["main"])
    trigger: str = Field(examples=["push"])
    model_name: str | None = Field(examples=["iris-classifier"])
    model_version: str | None = Field(examples=["3"])
    notebook_version: str | None = Field(examples=["1.2.0"])
    mlflow_run_id: str | None
    error: PipelineErrorOut | None
    stage_timings: dict[str, float] = Field(examples=[{"cloning": 0.4, "executing": 12.8}])
    attempts: int
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    duration_s: float | None = Field(description="From start to end (or to now)")
    served_s: float | None = Field(
        None,
        description="From the webhook to its version served (or its rollout started): the "
        "timings up to `deploying`, `queued` included; None until then",
    )
    waiting_for: str | None = Field(
        None,
        description="Why a queued pipeline is not running yet, when the platform knows: no "
        "live pipeline worker, or the job queue (Redis) unreachable",
        examples=[None],
    )
    rollout: PipelineRolloutOut | None = Field(
        None,
        description="The canary or shadow rollout of its version, if its policy asked for one: "
        "running, promoted, rolled back or aborted, with the reason",
    )

    @classmethod
    def of(cls, p: Pipeline) -> Self:
        status = PipelineStatus(p.status)
        if status == PipelineStatus.FAILED:
            stage = p.error_stage
        elif status.terminal or status == PipelineStatus.QUEUED:
            stage = None
        else:
            stage = status.value
        error = (
            PipelineErrorOut(stage=p.error_stage, message=p.error_message)
            if p.error_message
            else None
        )
        duration = (
            (p.finished_at - p.started_at).total_seconds()
            if p.started_at and p.finished_at
            else None
        )
        return cls(
            id=p.id,
            repository_id=p.repository_id,
            status=status,
            stage=stage,
            commit_sha=p.commit_sha,
            branch=p.branch,
            trigger=p.trigger,
            model_name=p.model_name,
            model_version=p.model_version,
            notebook_version=p.notebook_version,
            mlflow_run_id=p.mlflow_run_id,
            error=error,
            stage_timings=dict(p.stage_timings or {}),
            attempts=p.attempts,
            created_at=p.created_at,
            started_at=p.started_at,
            finished_at=p.finished_at,
            duration_s=duration,
            served_s=served_after(p.stage_timings or {}),
        )


# The pipeline worker's timed step after the deploy (`pipeline_worker.worker.RECORDING`).
RECORDING = "recording"


def served_after(timings: dict[str, float]) -> float | None:
    """Seconds from the webhook to served: every timing before `recording`, which the worker
    writes only once the version is deployed (or its rollout started)."""
    if RECORDING not in timings:
        return None
    return round(sum(v for k, v in timings.items() if k != RECORDING), 3)


QUEUE_NOTE_DESCRIPTION = (
    "Set when the job queue (Redis) could not be reached: the pipelines are recorded as "
    "`queued` and start once it is back"
)


class TriggeredPipeline(PipelineOut):
    note: str | None = Field(None, description=QUEUE_NOTE_DESCRIPTION, examples=[None])


class PipelinePage(BaseModel):
    items: list[PipelineOut]
    total: int = Field(examples=[42])
    page: int = Field(examples=[1])
    size: int = Field(examples=[20])


class LogLine(BaseModel):
    seq: int = Field(examples=[1])
    ts: float | None = Field(examples=[1764172800.25])
    line: str = Field(examples=["[cloning] cloned acme/iris-training@9fceb02"])


class PipelineLogs(BaseModel):
    pipeline_id: str
    status: PipelineStatus
    lines: list[LogLine]
    text: str = Field(description="The lines joined by newlines")


# --- webhook ---------------------------------------------------------------------------


class WebhookAccepted(BaseModel):
    pipeline_ids: list[str] = Field(
        description="Pipelines this delivery started (for a replayed delivery id: the ones "
        "it started the first time)",
        examples=[["6f1c2a5e-8a39-4d59-9f0e-2b1d2f3c4d5e"]],
    )
    duplicate_of: list[str] = Field(
        default_factory=list,
        description="Pipelines an earlier delivery of the same push (same repository, commit "
        "and notebook, whatever its delivery id) started: not started again. "
        "`POST /repos/{id}/trigger` runs a commit again on purpose.",
        examples=[[]],
    )
    replayed: bool = Field(
        False, description="The delivery id was seen before: nothing new was created"
    )
    note: str | None = Field(None, description=QUEUE_NOTE_DESCRIPTION + " (absent otherwise)")


class Pong(BaseModel):
    status: str = Field(examples=["pong"])
    zen: str | None = None


# --- models ----------------------------------------------------------------------------


class ReplicaServing(BaseModel):
    replica_id: str = Field(examples=["host-a-1234"])
    grpc_address: str = Field(examples=["10.0.0.7:50061"])
    active: str | None = Field(examples=["3"])
    loaded: list[str] = Field(examples=[["3", "2"]])
    failed: dict[str, str] = Field(default_factory=dict)


class ModelVersionOut(BaseModel):
    version: str = Field(examples=["3"])
    status: str | None = Field(
        None, description="MLflow's status of the version", examples=["READY"]
    )
    run_id: str | None = None
    created_at: UtcDatetime | None = None


class CandidateOut(BaseModel):
    version: str = Field(examples=["4"])
    weight: float = Field(
        description="Share of requests naming no version that it answers (0: shadow)",
        examples=[0.1],
    )
    mirror_rate: float = Field(
        description="Share of the champion's requests also run on it, never returned",
        examples=[0.1],
    )


class ModelOut(BaseModel):
    name: str = Field(examples=["iris-classifier"])
    active_version: str | None = Field(description="Desired active version", examples=["3"])
    warm_versions: list[str] = Field(examples=[["2"]])
    candidate: CandidateOut | None = Field(
        None, description="The version under rollout beside the active one, if any"
    )
    versions: list[ModelVersionOut]
    replicas: list[ReplicaServing]


class ModelList(BaseModel):
    models: list[ModelOut]
    registry_reachable: bool = Field(
        description="False when MLflow did not answer: versions then come from the fleet only"
    )


class PredictRequest(BaseModel):
    """Rows of numbers, each as wide as the model's input."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [[5.1, 3.5, 1.4, 0.2]]}]})

    data: list[list[float]]


class PredictResponse(BaseModel):
    model: str = Field(examples=["iris-classifier"])
    version: str = Field(examples=["3"])
    predictions: list[Any] = Field(examples=[[0]])
    probabilities: list[list[float]] | None = Field(
        None, description="Classifiers only", examples=[[[0.97, 0.03, 0.0]]]
    )


class VersionCounters(BaseModel):
    requests: int = Field(0, description="Requests answered since the replicas started")
    errors: int = 0
    latency: list[int] = Field(
        description="Requests per bucket of `latency_buckets_s`, and one more for slower ones"
    )


class ModelCounters(BaseModel):
    model: str = Field(examples=["iris-classifier"])
    at: float = Field(description="When they were read (Unix seconds)")
    latency_buckets_s: list[float] = Field(description="Upper bounds of the latency buckets")
    versions: dict[str, VersionCounters] = Field(
        description="Each version's counters, added up over the live replicas (they only grow, "
        "until a replica restarts)"
    )


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"version": "1"}]})

    version: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")


class RollbackOut(BaseModel):
    model: str = Field(examples=["iris-classifier"])
    active_version: str = Field(examples=["1"])
    previous_version: str | None = Field(examples=["3"])
    replicas: list[ReplicaServing]


def error_responses(*errors: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for errors, in the one error shape, with an example each."""
    return {
        status: {
            "model": ErrorOut,
            "content": {"application/json": {"example": {"detail": detail}}},
        }
        for status, detail in errors
    }


# --- rollouts ----------------------------------------------------------------------------


class RolloutOut(RolloutRecord):
    live: dict[str, Any] | None = Field(
        None,
        description="The current step's figures as of the driver's last tick (a running "
        "rollout only): each version's requests, errors, error rate and p99, and agreement",
    )


class AliasEventOut(BaseModel):
    alias: str = Field(examples=["champion"])
    version: str | None = Field(description="None: the alias was removed", examples=["4"])
    reason: str = Field(examples=["version 4 promoted: every step passed: ..."])
    pipeline_id: str | None
    at: UtcDatetime


class ModelHistory(BaseModel):
    model: str
    events: list[AliasEventOut] = Field(description="Newest first")


# --- the Open Inference Protocol's REST routes (/v2) --------------------------------------
# NOTE: for the OpenAPI document only: the infer route parses and writes its bodies itself
# (`gateway.oip_rest`), so no tensor is ever validated by pydantic.


class OipErrorOut(BaseModel):
    """Every 4xx and 5xx answer of the `/v2` routes, in the protocol's shape."""

    error: str = Field(examples=["input 'input' has shape [1, 3]; the model expects FP32 [N, 4]"])


def oip_error_responses(*errors: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """`error_responses` for the `/v2` routes: `{"error": ...}`, and 400 for a refused input
    (the protocol has no 422)."""
    responses: dict[int | str, dict[str, Any]] = {
        status: {
            "model": OipErrorOut,
            "content": {"application/json": {"example": {"error": message}}},
        }
        for status, message in errors
    }
    # NOTE: in place of the 422 FastAPI would list for path parameters: on /v2 a model name
    # or version that is not one is a 400 like any refused request.
    responses["4XX"] = {"model": OipErrorOut, "description": "Any other refused request"}
    return responses


class ServerMetadataOut(BaseModel):
    name: str = Field(examples=["mlops-gateway"])
    version: str = Field(examples=["0.1.0"])
    extensions: list[str] = Field(examples=[["binary_tensor_data"]])


class TensorMetadataOut(BaseModel):
    name: str = Field(examples=["input"])
    datatype: str = Field(examples=["FP32"])
    shape: list[int] = Field(description="-1: a variable dimension", examples=[[-1, 4]])


class ModelMetadataOut(BaseModel):
    name: str = Field(examples=["iris-classifier"])
    versions: list[str] = Field(description="The versions the fleet holds", examples=[["1", "2"]])
    platform: str = Field(examples=["onnxruntime_onnx"])
    inputs: list[TensorMetadataOut]
    outputs: list[TensorMetadataOut]


class LiveOut(BaseModel):
    live: bool = Field(examples=[True])


class OipReadyOut(BaseModel):
    ready: bool = Field(examples=[True])


class ModelReadyOut(BaseModel):
    name: str = Field(examples=["iris-classifier"])
    ready: bool = Field(examples=[True])


class InferOutputOut(BaseModel):
    name: str = Field(examples=["label"])
    datatype: str = Field(examples=["INT64"])
    shape: list[int] = Field(examples=[[1]])
    data: list[Any] | None = Field(
        None, description="Flat, row-major; absent when sent as binary data", examples=[[0]]
    )
    parameters: dict[str, Any] | None = Field(
        None, description='`{"binary_data_size": N}` for an output sent as binary data'
    )


class InferResponseOut(BaseModel):
    model_name: str = Field(examples=["iris-classifier"])
    model_version: str = Field(description="The version that answered", examples=["1"])
    id: str | None = Field(None, description="The request's, when it had one", examples=["req-1"])
    outputs: list[InferOutputOut]


INFER_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            "type": "object",
            "description": '`{"binary_data_output": true}`: every output not named in '
            "`outputs` as binary data",
        },
        "inputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype"],
                "properties": {
                    "name": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "datatype": {"type": "string", "examples": ["FP32", "INT64", "BYTES"]},
                    "data": {"type": "array", "description": "Flat (row-major) or nested"},
                    "parameters": {
                        "type": "object",
                        "description": '`{"binary_data_size": N}`: the values are N bytes '
                        "after the JSON header (Inference-Header-Content-Length)",
                    },
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "parameters": {
                        "type": "object",
                        "description": '`{"binary_data": true}`: this output as binary data',
                    },
                },
            },
        },
    },
    "examples": [
        {
            "id": "req-1",
            "inputs": [
                {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}
            ],
        }
    ],
}
