"""The gateway's gRPC client of the inference fleet: one long-lived channel, REST rows (or the
Open Inference Protocol's REST tensors, `gateway.oip_rest`) in, OIP raw tensors out.

NOTE: the channel balances with gRPC's own `round_robin` over every address the target
resolves to (a headless Service's DNS name, or `ipv4:host:p1,host:p2` for local replicas),
and its service config retries a call that met an UNAVAILABLE replica on another one.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from gateway.coalescer import Answer, RequestCoalescer
from gateway.errors import preview
from gateway.oip_rest import InputTensor
from mlops_core.errors import (
    RETRY_AFTER_METADATA,
    InternalError,
    InvalidInput,
    MessageTooLarge,
    MlopsError,
    ModelNotFound,
    ModelNotReady,
    UpstreamError,
    UpstreamTimeout,
)
from mlops_core.fleet_state import ROUTING_KEY_METADATA
from mlops_core.oip import check_finite, infer_request, response_arrays
from mlops_core.protocol import open_inference_pb2 as pb
from mlops_core.protocol.open_inference_pb2_grpc import GRPCInferenceServiceStub
from mlops_core.signature import OIP_TO_NUMPY

SERVICE = "inference.GRPCInferenceService"
PREDICT_TIMEOUT_S = 10.0
RETRY_ATTEMPTS = 3
DNS_MIN_INTERVAL_MS = 1000


def service_config() -> str:
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [{"service": SERVICE}],
                    "retryPolicy": {
                        "maxAttempts": RETRY_ATTEMPTS,
                        "initialBackoff": "0.01s",
                        "maxBackoff": "0.2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
        }
    )


@dataclass(frozen=True)
class InputSpec:
    """What a model version takes: one [n, width] tensor."""

    name: str
    datatype: str
    width: int
    """-1 when the model accepts any width."""

    @property
    def shape_text(self) -> str:
        return f"[n, {self.width if self.width >= 0 else 'any'}]"


@dataclass(frozen=True)
class Prediction:
    model: str
    version: str
    predictions: np.ndarray
    probabilities: np.ndarray | None


def encode_rows(model: str, data: Any, spec: InputSpec) -> np.ndarray:
    """Check REST rows against the model's input and pack them as its dtype."""
    shape = spec.shape_text
    if not isinstance(data, list) or not data:
        raise InvalidInput(
            f"data must be a non-empty list of rows; model {model!r} takes shape {shape}"
        )
    width = spec.width if spec.width >= 0 else _width_of(data[0])
    for i, row in enumerate(data):
        if type(row) is not list:
            raise InvalidInput(f"row {i} is not a list; model {model!r} takes shape {shape}")
        if len(row) != width:
            raise InvalidInput(
                f"row {i} has {len(row)} values; model {model!r} takes shape {shape}"
            )
        for value in row:
            # NOTE: type() rather than isinstance() so booleans (an int subclass) are refused.
            if type(value) is not float and type(value) is not int:
                raise InvalidInput(
                    f"row {i} holds {preview(value)}, not a number; model {model!r} takes "
                    f"numbers of shape {shape}"
                )
    with np.errstate(over="ignore"):
        array = np.array(data, dtype=OIP_TO_NUMPY[spec.datatype])
    check_finite(spec.name, spec.datatype, array)
    return array


def _width_of(row: Any) -> int:
    return len(row) if isinstance(row, list) else -1


def to_prediction(model: str, answer: Answer) -> Prediction:
    """`label` (classifiers) or the first output (regressors) become the predictions; a
    `probabilities` output, where there is one, the probabilities."""
    outputs = answer.outputs
    if not outputs:
        raise UpstreamError(f"model {model!r} answered no outputs")
    predictions = outputs.get("label", next(iter(outputs.values())))
    if predictions.ndim == 2 and predictions.shape[1] == 1:
        predictions = predictions.reshape(-1)
    return Prediction(
        model=answer.model or model,
        version=answer.version,
        predictions=predictions,
        probabilities=outputs.get("probabilities"),
    )


def map_rpc_error(model: str, error: grpc.aio.AioRpcError) -> MlopsError:
    """The one place gRPC status codes from the fleet become our errors: the client side of
    `inference.grpc_status.abort`, so each code comes back as the class that sent it."""
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return ModelNotFound(f"model {model!r} is not served by the fleet ({details})")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidInput(details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return MessageTooLarge(details)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION):
        not_ready = ModelNotReady(f"the inference fleet cannot serve {model!r} now: {details}")
        not_ready.retry_after_ms = retry_after_ms(error)
        return not_ready
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return UpstreamTimeout(f"the inference fleet did not answer in {PREDICT_TIMEOUT_S:.0f}s")
    if code == grpc.StatusCode.INTERNAL:
        # The replica's message says whose fault it is: the model's, or the replica's own.
        return InternalError(details or f"the inference fleet failed running {model!r}")
    return UpstreamError(f"the inference fleet failed: {code.name}: {details}")


def retry_after_ms(error: grpc.aio.AioRpcError) -> int | None:
    """The replica's retry hint (`inference.grpc_status.abort`), if it sent one: a version
    that was not in its memory and did not load in time."""
    for key, value in error.trailing_metadata() or ():
        if key == RETRY_AFTER_METADATA and isinstance(value, str) and value.isdigit():
            return int(value)
    return None


class FleetClient:
    """Predictions through one shared channel, with each model's input spec cached.

    NOTE: the cached spec (the input of the model's active version when it was read) gives
    REST its shape-aware messages and the dtype rows are packed as, but the fleet is the
    authority: a version rolled out since may take another width, dtype or input name. So a
    refusal made with a cached spec, by the gateway's own check or by the fleet, is final only
    once the spec has been read again from the fleet; if it changed, the request is tried once
    more with the new one. A rollout never makes the gateway refuse a correct request, and only
    refused requests pay for the extra metadata call.
    """

    def __init__(
        self, target: str, max_message_bytes: int, coalesce_in_flight: int = 4, api_key: str = ""
    ) -> None:
        self._channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.service_config", service_config()),
                ("grpc.enable_retries", 1),
                # NOTE: a replica's GOAWAY (its connection age, `inference.server`) makes the
                # channel resolve a `dns:` target again, but by default no sooner than 30 s
                # after the last resolution; 1 s lets a replica added since be reached within
                # about one connection age, for one small DNS query per second at most.
                ("grpc.dns_min_time_between_resolutions_ms", DNS_MIN_INTERVAL_MS),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
            ],
        )
        self._stub = GRPCInferenceServiceStub(self._channel)
        # Replicas with MLOPS_API_KEY set refuse inference and metadata calls without it.
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
        self._specs: dict[str, InputSpec] = {}
        self._coalesce_in_flight = coalesce_in_flight
        self._coalescers: dict[tuple[str, InputSpec], RequestCoalescer] = {}
        self._not_coalesced: set[str] = set()
        """Models whose inputs REST predict cannot take (several, or not [n, width])."""

    async def close(self) -> None:
        await self._channel.close()

    async def predict(self, model: str, data: Any, routing_key: str | None = None) -> Prediction:
        """`routing_key`: during a canary, one key always lands on the same version."""
        cached = self._specs.get(model)
        spec = cached or await self._input_spec(model)
        try:
            return await self._predict(model, data, spec, routing_key)
        except InvalidInput:
            if cached is None:  # read from the fleet for this very request
                raise
            fresh = await self._input_spec(model)
            if fresh == spec:
                raise
        return await self._predict(model, data, fresh, routing_key)

    async def _predict(
        self, model: str, data: Any, spec: InputSpec, routing_key: str | None
    ) -> Prediction:
        array = encode_rows(model, data, spec)
        try:
            if routing_key is None:
                answer = await self._coalescer(model, spec).submit(array)
            else:
                # NOTE: its own call: a shared one lands on one version for every caller in it.
                metadata = (*(self._metadata or ()), (ROUTING_KEY_METADATA, routing_key))
                response = await self._stub.ModelInfer(
                    infer_request(model, {spec.name: array}),
                    timeout=PREDICT_TIMEOUT_S,
                    metadata=metadata,
                )
                answer = Answer(
                    response.model_name, response.model_version, response_arrays(response)
                )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                self._forget(model)
            raise map_rpc_error(model, exc) from None
        return to_prediction(model, answer)

    async def infer(
        self,
        model: str,
        version: str,
        inputs: list[InputTensor],
        outputs: list[str],
        request_id: str = "",
        routing_key: str | None = None,
    ) -> Answer:
        """One ModelInfer of the Open Inference Protocol's REST route: `version` "" goes
        through the model's routing (canary) like predict, a version pins it. `outputs`: the
        names asked for, in order; empty, all of them.

        NOTE: a request that predict could have sent (one [n, width] input of the model's
        active version, no version, no routing key) shares predict's coalescer, so concurrent
        OIP and predict requests ride in one call: the rows, name and datatype sent are the
        client's own, so the fleet's answer is the one a call of its own would get.
        """
        if not version and routing_key is None and len(inputs) == 1:
            spec = await self._coalescing_spec(model)
            tensor = inputs[0]
            array = tensor.array
            if (
                spec is not None
                and array is not None
                and array.ndim == 2
                and array.shape[0] > 0
                and (tensor.name, tensor.datatype) == (spec.name, spec.datatype)
                and spec.width in (-1, array.shape[1])
            ):
                try:
                    answer = await self._coalescer(model, spec).submit(array)
                except grpc.aio.AioRpcError as exc:
                    raise self._rpc_error(model, exc) from None
                if all(name in answer.outputs for name in outputs):
                    wanted = outputs or list(answer.outputs)
                    return Answer(
                        answer.model or model,
                        answer.version,
                        {name: answer.outputs[name] for name in wanted},
                    )
                # An output the model lacks: its own call, so the fleet's message names it.
        request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
        for tensor in inputs:
            request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            request.raw_input_contents.append(tensor.raw_contents())
        for name in outputs:
            request.outputs.add(name=name)
        metadata = self._metadata
        if routing_key is not None:
            metadata = (*(metadata or ()), (ROUTING_KEY_METADATA, routing_key))
        try:
            response = await self._stub.ModelInfer(
                request, timeout=PREDICT_TIMEOUT_S, metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise self._rpc_error(model, exc, version) from None
        try:
            arrays = response_arrays(response)
        except (KeyError, ValueError) as exc:
            raise UpstreamError(f"the fleet answered outputs REST cannot carry: {exc}") from None
        return Answer(response.model_name or model, response.model_version, arrays)

    async def model_metadata(self, model: str, version: str = "") -> pb.ModelMetadataResponse:
        try:
            return await self._stub.ModelMetadata(
                pb.ModelMetadataRequest(name=model, version=version),
                timeout=PREDICT_TIMEOUT_S,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise self._rpc_error(model, exc, version) from None

    async def model_ready(self, model: str, version: str = "") -> bool:
        try:
            response = await self._stub.ModelReady(
                pb.ModelReadyRequest(name=model, version=version),
                timeout=PREDICT_TIMEOUT_S,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise self._rpc_error(model, exc, version) from None
        return response.ready

    async def server_ready(self) -> bool:
        """Whether the fleet (the replica the channel picks) says it is ready."""
        response = await self._stub.ServerReady(
            pb.ServerReadyRequest(), timeout=PREDICT_TIMEOUT_S, metadata=self._metadata
        )
        return response.ready

    def _rpc_error(self, model: str, exc: grpc.aio.AioRpcError, version: str = "") -> MlopsError:
        # An unknown version says nothing of the model's active one: its spec stays cached.
        if exc.code() == grpc.StatusCode.NOT_FOUND and not version:
            self._forget(model)
        return map_rpc_error(model, exc)

    async def _coalescing_spec(self, model: str) -> InputSpec | None:
        """The model's cached input spec; read once when missing, and None for a model whose
        inputs predict's coalescer cannot carry."""
        spec = self._specs.get(model)
        if spec is not None or model in self._not_coalesced:
            return spec
        try:
            return await self._input_spec(model)
        except InvalidInput:
            self._not_coalesced.add(model)
            return None

    def _coalescer(self, model: str, spec: InputSpec) -> RequestCoalescer:
        coalescer = self._coalescers.get((model, spec))
        if coalescer is None:

            def send(rows: np.ndarray) -> Awaitable[pb.ModelInferResponse]:
                request = infer_request(model, {spec.name: rows})
                return self._stub.ModelInfer(
                    request, timeout=PREDICT_TIMEOUT_S, metadata=self._metadata
                )

            if self._coalesce_in_flight > 0:
                coalescer = RequestCoalescer(send, max_in_flight=self._coalesce_in_flight)
            else:  # each prediction its own call
                coalescer = RequestCoalescer(send, max_rows=1, max_in_flight=1_000_000)
            self._coalescers[(model, spec)] = coalescer
        return coalescer

    async def _input_spec(self, model: str) -> InputSpec:
        """The input of the model's active version, read from the fleet and cached."""
        try:
            meta = await self._stub.ModelMetadata(
                pb.ModelMetadataRequest(name=model),
                timeout=PREDICT_TIMEOUT_S,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                self._forget(model)
            raise map_rpc_error(model, exc) from None
        if len(meta.inputs) != 1 or len(meta.inputs[0].shape) != 2:
            raise InvalidInput(
                f"model {model!r} takes {len(meta.inputs)} input tensors; REST predict serves "
                "models with one [n, width] input (use gRPC for others)"
            )
        tensor = meta.inputs[0]
        if tensor.datatype not in OIP_TO_NUMPY:
            raise InvalidInput(f"model {model!r} takes {tensor.datatype}, which REST cannot send")
        spec = InputSpec(tensor.name, tensor.datatype, int(tensor.shape[1]))
        if self._specs.get(model) != spec:
            self._forget(model)
            self._specs[model] = spec
        return spec

    def _forget(self, model: str) -> None:
        self._specs.pop(model, None)
        self._not_coalesced.discard(model)
        for key in [k for k in self._coalescers if k[0] == model]:
            del self._coalescers[key]  # requests it holds still finish on it
