"""The replica's gRPC server (`inference.grpc_server`), driven by grpcio's own client: every
part of grpc core it uses, the ways a call can fail, and a graceful stop under calls."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from inference.api_key import OPEN_METHODS, ApiKeyCheck
from inference.grpc_server import CallContext, CoreServer, UnaryMethod, unary_methods
from inference.grpc_status import abort
from mlops_core.errors import ModelNotResident
from mlops_core.protocol import open_inference_pb2 as pb
from mlops_core.protocol import open_inference_pb2_grpc as pb_grpc

KEY = "s3cret-key"
SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


class Servicer:
    """ModelInfer echoes the request id and reacts to the model name; the rest answer."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Semaphore(0)

    def ServerLive(self, request: Any, context: CallContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: CallContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request: Any, context: CallContext) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=True)

    def ServerMetadata(self, request: Any, context: CallContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="test")

    def ModelMetadata(self, request: Any, context: CallContext) -> pb.ModelMetadataResponse:
        return pb.ModelMetadataResponse(name=request.name)

    def ModelInfer(self, request: pb.ModelInferRequest, context: CallContext) -> Any:
        if request.model_name == "unresident":
            abort(context, ModelNotResident("not in memory yet", retry_after_ms=250))
        if request.model_name == "crash":
            raise RuntimeError("a bug with a secret in its message: hunter2")
        if request.model_name == "block":
            self.started.release()
            self.release.wait(10)
        metadata = dict(context.invocation_metadata())
        return pb.ModelInferResponse(
            model_name=request.model_name, id=request.id, model_version=metadata.get("v", "")
        )


class Running:
    def __init__(self, server: CoreServer, port: int, servicer: Servicer) -> None:
        self.server, self.servicer = server, servicer
        self.target = f"127.0.0.1:{port}"


def start(
    *, threads: int = 4, api_key: str | None = None, max_bytes: int = 1 << 20
) -> tuple[CoreServer, int, Servicer, health.HealthServicer]:
    servicer = Servicer()
    checks = health.HealthServicer()
    checks.set("", health_pb2.HealthCheckResponse.SERVING)
    methods = {
        **unary_methods(SERVICE, pb, servicer, OPEN_METHODS),
        "/grpc.health.v1.Health/Check": UnaryMethod(
            health_pb2.HealthCheckRequest.FromString, checks.Check, open=True
        ),
    }
    server = CoreServer(
        methods,
        threads=threads,
        options=[("grpc.max_receive_message_length", max_bytes)],
        authorized=ApiKeyCheck(api_key) if api_key else None,
        refusal=(grpc.StatusCode.UNAUTHENTICATED, "wrong key"),
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port, servicer, checks


@pytest.fixture
def running() -> Iterator[Running]:
    server, port, servicer, _ = start()
    yield Running(server, port, servicer)
    servicer.release.set()
    assert server.stop(0).wait(5), "the server did not stop"


@pytest.fixture
def stub(running: Running) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(running.target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def infer(stub: pb_grpc.GRPCInferenceServiceStub, model: str, request_id: str = "", **kw: Any):
    return stub.ModelInfer(pb.ModelInferRequest(model_name=model, id=request_id), timeout=5, **kw)


def test_concurrent_calls_each_get_their_own_answer(stub):
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: infer(stub, "m", str(i)).id, range(2000)))
    assert answers == [str(i) for i in range(2000)]


def test_every_unary_method_of_the_service_answers(stub):
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="m"), timeout=5).ready
    assert stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=5).name == "test"
    assert stub.ModelMetadata(pb.ModelMetadataRequest(name="m"), timeout=5).name == "m"


def test_the_handler_sees_the_call_metadata(stub):
    assert infer(stub, "m", metadata=(("v", "7"),)).model_version == "7"


def test_an_abort_carries_its_code_message_and_retry_hint(stub):
    with pytest.raises(grpc.RpcError) as caught:
        infer(stub, "unresident")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "not in memory yet"
    assert ("retry-after-ms", "250") in caught.value.trailing_metadata()


def test_a_handler_that_raises_is_internal_without_its_message_and_the_server_goes_on(stub):
    with pytest.raises(grpc.RpcError) as caught:
        infer(stub, "crash")
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in caught.value.details()
    assert "failed inside the replica" in caught.value.details()
    assert infer(stub, "m", "after").id == "after"


def test_an_unknown_method_is_unimplemented(running):
    with grpc.insecure_channel(running.target) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/Nope")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "/inference.GRPCInferenceService/Nope" in caught.value.details()


def test_bytes_that_are_not_the_message_are_invalid_argument(running, stub):
    with grpc.insecure_channel(running.target) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"\xff\xff\xff\xff", timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert infer(stub, "m", "still").id == "still"


def test_a_message_over_the_limit_is_refused_and_the_server_goes_on():
    server, port, _, _ = start(max_bytes=1000)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            big = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"x" * 5000])
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(big, timeout=5)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert infer(stub, "m", "small").id == "small"
    finally:
        assert server.stop(0).wait(5)


def test_health_check_answers_and_an_unknown_service_is_not_found(running):
    with grpc.insecure_channel(running.target) as channel:
        checks = health_pb2_grpc.HealthStub(channel)
        assert (
            checks.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        with pytest.raises(grpc.RpcError) as caught:
            checks.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_api_key_guards_all_but_the_open_methods():
    server, port, _, _ = start(api_key=KEY)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for metadata in [(), (("authorization", "Bearer wrong"),)]:
                with pytest.raises(grpc.RpcError) as caught:
                    infer(stub, "m", metadata=metadata)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert caught.value.details() == "wrong key"
            assert infer(stub, "m", "ok", metadata=(("authorization", f"Bearer {KEY}"),)).id == "ok"
            assert stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
            checks = health_pb2_grpc.HealthStub(channel)
            assert checks.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
    finally:
        assert server.stop(0).wait(5)


def test_a_call_that_waits_holds_one_thread_and_the_others_serve(running, stub):
    waiting = [stub.ModelInfer.future(pb.ModelInferRequest(model_name="block")) for _ in range(3)]
    for _ in range(3):
        assert running.servicer.started.acquire(timeout=5)
    assert [infer(stub, "m", str(i)).id for i in range(50)] == [str(i) for i in range(50)]
    running.servicer.release.set()
    assert all(w.result(timeout=5).model_name == "block" for w in waiting)


def test_a_caller_that_gives_up_leaves_the_server_serving(running, stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(pb.ModelInferRequest(model_name="block"), timeout=0.2)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    running.servicer.release.set()
    assert infer(stub, "m", "next").id == "next"


def test_stop_lets_calls_in_flight_finish_within_the_grace_and_takes_no_new_ones():
    server, port, servicer, _ = start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        in_flight = stub.ModelInfer.future(pb.ModelInferRequest(model_name="block", id="1"))
        assert servicer.started.acquire(timeout=5)
        stopped = server.stop(5)
        time.sleep(0.2)
        assert not stopped.is_set()
        servicer.release.set()
        assert in_flight.result(timeout=5).id == "1"
        assert stopped.wait(5)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as caught:
            infer(pb_grpc.GRPCInferenceServiceStub(channel), "m")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_stop_cancels_what_is_still_running_after_the_grace():
    server, port, servicer, _ = start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stuck = stub.ModelInfer.future(pb.ModelInferRequest(model_name="block"))
            assert servicer.started.acquire(timeout=5)
            began = time.monotonic()
            stopped = server.stop(0.3)
            with pytest.raises(grpc.RpcError) as caught:
                stuck.result(timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # retried by clients
            servicer.release.set()
            assert stopped.wait(5)
            assert time.monotonic() - began < 3
    finally:
        servicer.release.set()


def test_an_idle_server_burns_no_cpu(running):
    before = time.process_time()
    time.sleep(1.0)
    assert time.process_time() - before < 0.1
