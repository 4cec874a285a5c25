"""Models: what the fleet serves, predictions through it, rollback and removal."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Request, Response, status

from gateway import model_catalog
from gateway.deps import ResourcesDep
from gateway.model_stats import model_counters
from gateway.schemas import (
    ModelCounters,
    ModelList,
    PredictRequest,
    PredictResponse,
    RollbackOut,
    RollbackRequest,
    error_responses,
)
from mlops_core import fleet_state
from mlops_core.errors import InvalidInput
from mlops_core.fleet_state import ROUTING_KEY_METADATA

router = APIRouter(prefix="/models", tags=["models"])

ModelName = Annotated[
    str, Path(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
NOT_FOUND = (404, "model 'iris-classifier' is not served by the fleet")


@router.get("", response_model=ModelList)
async def list_models(resources: ResourcesDep) -> ModelList:
    """Each model: its desired active version, its versions (MLflow registry and fleet), and
    what each live replica serves."""
    models, reachable = await model_catalog.list_models(resources.redis, resources.registry)
    return ModelList(models=models, registry_reachable=reachable)


@router.get("/{name}/stats", response_model=ModelCounters)
async def stats(name: ModelName, resources: ResourcesDep) -> ModelCounters:
    """The model's request counters per version, added up over the live replicas' last
    heartbeats: two reads give the requests/s and the latency percentiles between them."""
    return model_counters(await fleet_state.live_replicas(resources.redis), name)


@router.post(
    "/{name}/predict",
    response_model=PredictResponse,
    responses=error_responses(
        NOT_FOUND,
        (
            413,
            "request body exceeds 4194304 bytes (MLOPS_MAX_PREDICT_BYTES)",
        ),
        (422, "row 0 has 3 values; model 'iris-classifier' takes shape [n, 4]"),
        (500, "model 'iris-classifier' version '3' failed while running: ..."),
        (503, "the inference fleet cannot serve 'iris-classifier' now: ..."),
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
        }
    },
)
async def predict(name: ModelName, request: Request, resources: ResourcesDep) -> Response:
    """Predict with the model's active version: rows in, predictions (and, for classifiers,
    probabilities) out. During a canary rollout, requests go to the candidate with the step's
    probability; an `X-Routing-Key` header keeps one caller on one side; `version` always
    names the version that answered. Bodies past `MLOPS_MAX_PREDICT_BYTES` answer 413."""
    # NOTE: gateway.body_limit bounds what `request.body()` reads. The body is parsed
    # with orjson and checked against the model's own input shape (from its metadata), which
    # gives shape-aware messages and keeps this hot path short.
    try:
        payload = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}{_non_finite_hint(exc)}") from None
    if not isinstance(payload, dict) or "data" not in payload:
        raise InvalidInput('body must be a JSON object like {"data": [[5.1, 3.5, 1.4, 0.2]]}')
    result = await resources.fleet.predict(
        name, payload["data"], request.headers.get(ROUTING_KEY_METADATA)
    )
    body = {"model": result.model, "version": result.version, "predictions": result.predictions}
    if result.probabilities is not None:
        body["probabilities"] = result.probabilities
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
    )


def _non_finite_hint(error: orjson.JSONDecodeError) -> str:
    """Python's json writes NaN and Infinity, which JSON lacks: say so rather than only
    "unexpected character". (gRPC refuses them too: `mlops_core.oip.check_finite`.)"""
    if error.doc[error.pos :].lstrip("-").startswith(("NaN", "Infinity")):
        return "; JSON has no NaN or Infinity, and the model takes finite numbers only"
    return ""


@router.post(
    "/{name}/rollback",
    response_model=RollbackOut,
    responses=error_responses(
        (404, "model 'iris-classifier' has no version '9'; versions: 1, 2, 3"),
        (503, "'iris-classifier' version '1' is now desired, but no inference replica is live"),
        (504, "model 'iris-classifier' version '1' not active on every replica after 60s"),
    ),
)
async def rollback(name: ModelName, body: RollbackRequest, resources: ResourcesDep) -> RollbackOut:
    """Make `version` active on every live replica; answers once all of them serve it. A
    running rollout of the model is aborted, and MLflow's `champion` alias moves to `version`."""
    settings = resources.settings
    return await model_catalog.rollback(
        resources.redis,
        resources.sessions,
        resources.registry,
        name,
        body.version,
        keep_versions=settings.keep_versions,
        timeout_s=settings.deploy_timeout_s,
    )


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses((404, "model 'iris-classifier' is not deployed")),
)
async def delete_model(name: ModelName, resources: ResourcesDep) -> None:
    """Stop serving the model on every replica (its versions stay in the MLflow registry)."""
    await model_catalog.remove(resources.redis, name, resources.settings.deploy_timeout_s)
