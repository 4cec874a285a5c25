"""The Open Inference Protocol (KServe v2) over REST, with Triton's binary tensor data
extension: each route that needs the fleet makes the same protocol's gRPC call there, so it
answers what a native gRPC client would get.

Errors answer `{"error": "..."}` (`gateway.errors.error_answer`). Readiness answers 200 when
ready and 400 when not (the spec: "a 4xx status code indicates not ready", as Triton answers),
404 for a model or version the fleet does not know.
"""

from __future__ import annotations

from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse

from gateway import oip_rest
from gateway.deps import ResourcesDep
from gateway.errors import OIP_PREFIX
from gateway.routes.models import ModelName
from gateway.schemas import (
    INFER_REQUEST_SCHEMA,
    InferResponseOut,
    LiveOut,
    ModelMetadataOut,
    ModelReadyOut,
    OipReadyOut,
    ServerMetadataOut,
    oip_error_responses,
)
from mlops_core.errors import ModelNotReady
from mlops_core.fleet_state import ROUTING_KEY_METADATA
from mlops_core.protocol import open_inference_pb2 as pb

SERVER_NAME = "mlops-gateway"
EXTENSIONS = ["binary_tensor_data"]
TAGS: list[str | Any] = ["open inference protocol"]

health_router = APIRouter(prefix=f"{OIP_PREFIX}/health", tags=TAGS)
"""Open like `/health` and `/ready`: probes carry no key."""
router = APIRouter(prefix=OIP_PREFIX, tags=TAGS)

Version = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]

UNAUTHORIZED = (401, "missing bearer token: send 'Authorization: Bearer <MLOPS_API_KEY>'")
NOT_FOUND = (404, "model 'iris-classifier' has no version '9' loaded; loaded versions: ['1']")
UNAVAILABLE = (503, "the inference fleet cannot serve 'iris-classifier' now: ...")
NOT_READY = (400, "model 'iris-classifier' version '2' is still loading")
INFER_DOCS: dict[str, Any] = {
    "response_model": InferResponseOut,
    "responses": oip_error_responses(
        (400, "input 'input' has shape [1, 3]; the model expects FP32 [N, 4]"),
        UNAUTHORIZED,
        NOT_FOUND,
        (413, "request body exceeds 4194304 bytes (MLOPS_MAX_PREDICT_BYTES)"),
        UNAVAILABLE,
    ),
    # NOTE: the body is read raw (JSON or binary tensors), so its schema is given by hand.
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": INFER_REQUEST_SCHEMA}},
        }
    },
}


@health_router.get("/live", response_model=LiveOut)
async def live() -> dict[str, bool]:
    """The gateway process is up (as `/health`; the fleet is not asked)."""
    return {"live": True}


@health_router.get(
    "/ready",
    response_model=OipReadyOut,
    responses=oip_error_responses((400, "the inference fleet does not answer: UNAVAILABLE")),
)
async def ready(resources: ResourcesDep) -> Response:
    """The fleet answers ServerReady true: 200; otherwise 400 naming why."""
    try:
        is_ready = await resources.fleet.server_ready()
    except grpc.aio.AioRpcError as exc:
        return _not_ready(f"the inference fleet does not answer: {exc.code().name}")
    return JSONResponse({"ready": True}) if is_ready else _not_ready("the fleet is not ready")


@router.get("", response_model=ServerMetadataOut, responses=oip_error_responses(UNAUTHORIZED))
async def server_metadata(request: Request) -> dict[str, Any]:
    """The gateway's name, version and the protocol extensions it speaks."""
    return {"name": SERVER_NAME, "version": request.app.version, "extensions": EXTENSIONS}


@router.get(
    "/models/{name}",
    response_model=ModelMetadataOut,
    responses=oip_error_responses(UNAUTHORIZED, NOT_FOUND, UNAVAILABLE),
)
async def model_metadata(name: ModelName, resources: ResourcesDep) -> dict[str, Any]:
    """The model's versions the fleet holds, platform, and its active version's tensors."""
    return _metadata(await resources.fleet.model_metadata(name))


@router.get(
    "/models/{name}/versions/{version}",
    response_model=ModelMetadataOut,
    responses=oip_error_responses(UNAUTHORIZED, NOT_FOUND, UNAVAILABLE),
)
async def version_metadata(
    name: ModelName, version: Version, resources: ResourcesDep
) -> dict[str, Any]:
    """The model's metadata with the tensors of `version`."""
    return _metadata(await resources.fleet.model_metadata(name, version))


@router.get(
    "/models/{name}/ready",
    response_model=ModelReadyOut,
    responses=oip_error_responses(NOT_READY, UNAUTHORIZED, NOT_FOUND),
)
async def model_ready(name: ModelName, resources: ResourcesDep) -> Response:
    """200 when the model's active version serves, 400 when not yet, 404 for no such model."""
    return await _model_ready(resources, name, "")


@router.get(
    "/models/{name}/versions/{version}/ready",
    response_model=ModelReadyOut,
    responses=oip_error_responses(NOT_READY, UNAUTHORIZED, NOT_FOUND),
)
async def version_ready(name: ModelName, version: Version, resources: ResourcesDep) -> Response:
    """200 when `version` serves, 400 when not yet, 404 for no such model or version."""
    return await _model_ready(resources, name, version)


@router.post("/models/{name}/infer", **INFER_DOCS)
async def infer(name: ModelName, request: Request, resources: ResourcesDep) -> Response:
    """Infer with the model's active version (or, during a canary, the candidate for the
    step's share; `X-Routing-Key` keeps one caller on one side). JSON tensors, or Triton's
    binary tensor data with `Inference-Header-Content-Length`."""
    return await _infer(request, resources, name, "")


@router.post("/models/{name}/versions/{version}/infer", **INFER_DOCS)
async def infer_version(
    name: ModelName, version: Version, request: Request, resources: ResourcesDep
) -> Response:
    """Infer with `version`, whatever the routing."""
    return await _infer(request, resources, name, version)


async def _infer(request: Request, resources: ResourcesDep, name: str, version: str) -> Response:
    headers = request.headers
    body = oip_rest.decoded_body(
        await request.body(), headers.get("content-encoding"), resources.settings.max_predict_bytes
    )
    decoded = oip_rest.decode_infer_request(body, headers.get(oip_rest.HEADER_LENGTH))
    answer = await resources.fleet.infer(
        name,
        version,
        decoded.inputs,
        decoded.outputs,
        decoded.id,
        headers.get(ROUTING_KEY_METADATA),
    )
    content, header_length = oip_rest.encode_infer_response(
        answer.model, answer.version, decoded, answer.outputs
    )
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={oip_rest.HEADER_LENGTH: str(header_length)},
    )


async def _model_ready(resources: ResourcesDep, name: str, version: str) -> Response:
    if await resources.fleet.model_ready(name, version):
        return JSONResponse({"name": name, "ready": True})
    # NOTE: ModelReady says false for a model the fleet never heard of too; its metadata tells
    # the two apart (NotFound: 404), and costs a call only when the answer is "not ready".
    try:
        await resources.fleet.model_metadata(name, version)
    except ModelNotReady as exc:
        return _not_ready(exc.message)
    shown = f"model {name!r}" + (f" version {version!r}" if version else "")
    return _not_ready(f"{shown} is not ready")


def _not_ready(reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=400)


def _metadata(meta: pb.ModelMetadataResponse) -> dict[str, Any]:
    return {
        "name": meta.name,
        "versions": list(meta.versions),
        "platform": meta.platform,
        "inputs": [_tensor(t) for t in meta.inputs],
        "outputs": [_tensor(t) for t in meta.outputs],
    }


def _tensor(tensor: pb.ModelMetadataResponse.TensorMetadata) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
