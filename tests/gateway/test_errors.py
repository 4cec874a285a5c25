"""Errors over REST and the WebSocket, through a real gateway in front of a real replica: each
class answers its own status, a model failing while running is a 500 that says so, NaN and
infinities are refused as over gRPC, and a rollout to another input width is followed at once.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import shutil
from collections.abc import Awaitable, Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from benchmarks import iris_models
from gateway.coalescer import Answer, RequestCoalescer
from gateway.routes.ws import close_code
from mlops_core import errors, fleet_state
from mlops_core.errors import MlopsError
from mlops_core.fleet_state import DesiredModel
from mlops_core.oip import infer_request
from mlops_core.protocol import open_inference_pb2 as pb
from mlops_core.protocol import open_inference_pb2_grpc as pb_grpc
from tests.conftest import InferenceServer, StartInference, new_redis_db
from tests.gateway.conftest import (
    Gateway,
    fleet_target,
    gateway_env,
    launch_gateway,
    make_local_repo,
)

X, _ = iris_models.iris()
MAX_PREDICT_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def fleet_redis(redis_url: str) -> str:
    client = sync_redis.Redis.from_url(url := new_redis_db(redis_url))
    client.hset(fleet_state.DESIRED_KEY, "broken", '{"active": "1", "warm": []}')
    client.hset(fleet_state.DESIRED_KEY, "shifting", '{"active": "1", "warm": []}')
    return url


@pytest.fixture(scope="module")
def replica(start_inference: StartInference, error_repo: Path, fleet_redis: str) -> InferenceServer:
    env = {"MLOPS_RESYNC_INTERVAL_S": "1", "MLOPS_HEARTBEAT_TTL_S": "3"}
    return start_inference(error_repo, name="gw-errors", redis_url=fleet_redis, env=env)


@pytest.fixture(scope="module")
def errors_gateway(
    run_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    fleet_redis: str,
    replica: InferenceServer,
) -> Iterator[Gateway]:
    env = gateway_env(
        tmp_path_factory.mktemp("gateway-errors"),
        fleet_redis,
        MLOPS_FLEET_ADDRESS=fleet_target([replica]),
        MLOPS_MAX_PREDICT_BYTES=str(MAX_PREDICT_BYTES),
    )
    gw = launch_gateway(run_dir, "gateway-errors", env)
    yield gw
    gw.process.stop()


@pytest.fixture(scope="module")
def api(errors_gateway: Gateway) -> Iterator[httpx.Client]:
    with errors_gateway.client() as client:
        yield client


@pytest.fixture
async def redis(fleet_redis: str):
    client = Redis.from_url(fleet_redis)
    yield client
    await client.aclose()


async def roll_out(redis: Redis, model: str, version: str, warm: str | None = None) -> None:
    """As the deploy stage and a rollback do: `version` active, the previous one warm."""
    desired = DesiredModel(active=version, warm=[warm] if warm else [])
    await fleet_state.set_desired(redis, model, desired)
    await fleet_state.wait_for_rollout(redis, model, version, timeout_s=30)


async def test_a_rollout_to_another_width_is_followed_at_once(api: httpx.Client, redis: Redis):
    def predict(columns: int) -> httpx.Response:
        return api.post("/models/shifting/predict", json={"data": X[[0, 60], :columns].tolist()})

    await roll_out(redis, "shifting", "1")
    response = predict(4)
    assert response.status_code == 200, response.text
    assert response.json()["version"] == "1"

    # Version 2 takes 3 features: the first request of the new width is served.
    await roll_out(redis, "shifting", "2", warm="1")
    response = predict(3)
    assert response.status_code == 200, response.text
    assert response.json()["version"] == "2" and len(response.json()["predictions"]) == 2
    response = predict(4)
    assert response.status_code == 422
    assert response.json()["detail"] == "row 0 has 4 values; model 'shifting' takes shape [n, 3]"

    # Back to 4, and the old width is served at once too.
    await roll_out(redis, "shifting", "1", warm="2")
    response = predict(4)
    assert response.status_code == 200, response.text
    assert response.json()["version"] == "1"

    # Rows of the width the gateway knew pass its check and are refused by the fleet: the
    # answer names the width of the version that serves now, and that width is served next.
    await roll_out(redis, "shifting", "2", warm="1")
    response = predict(4)
    assert response.status_code == 422
    assert response.json()["detail"] == "row 0 has 4 values; model 'shifting' takes shape [n, 3]"
    response = predict(3)
    assert response.status_code == 200, response.text
    assert response.json()["version"] == "2"


def test_a_model_failing_while_running_is_a_500_that_says_so(api: httpx.Client):
    assert api.post("/models/broken/predict", json={"data": [[0, 0, 0, 0]]}).status_code == 200
    response = api.post("/models/broken/predict", json={"data": [[5, 0, 0, 0]]})
    assert response.status_code == 500, response.text
    detail = response.json()["detail"]
    assert detail.startswith("model 'broken' version '1' failed while running: "), detail
    assert "Gather" in detail and "Traceback" not in detail


async def test_a_model_failing_in_a_shared_call_fails_only_the_request_that_broke_it(
    replica: InferenceServer,
):
    async with grpc.aio.insecure_channel(replica.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls: list[int] = []

        def send(rows: np.ndarray) -> Awaitable[pb.ModelInferResponse]:
            calls.append(len(rows))
            return stub.ModelInfer(infer_request("broken", {"input": rows}))

        coalescer = RequestCoalescer(send)
        requests = [np.zeros((1, 4), np.float32)] * 8
        requests[3] = np.full((1, 4), 5, np.float32)
        results = await asyncio.gather(
            *(coalescer.submit(rows) for rows in requests), return_exceptions=True
        )
    assert calls[0] == 8, "the eight arrived together and shared the first call"
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == [3]
    bad = results[3]
    assert isinstance(bad, grpc.aio.AioRpcError) and bad.code() == grpc.StatusCode.INTERNAL
    for i, result in enumerate(results):
        if i != 3:
            assert isinstance(result, Answer)
            np.testing.assert_array_equal(result.outputs["variable"], np.ones((1, 4)))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"data": [[5.1, NaN, 1.4, 0.2]]}', "JSON has no NaN or Infinity"),
        (b'{"data": [[5.1, Infinity, 1.4, 0.2]]}', "JSON has no NaN or Infinity"),
        (b'{"data": [[5.1, -Infinity, 1.4, 0.2]]}', "JSON has no NaN or Infinity"),
        (b'{"data": [[5.1, 1e400, 1.4, 0.2]]}', "number is infinity"),
        (
            b'{"data": [[5.1, 3.5, 1.4, 0.2], [5.1, 1e39, 1.4, 0.2]]}',
            "input 'input' row 1 holds inf: the model takes finite FP32 numbers",
        ),
    ],
)
def test_nan_and_infinities_are_refused_over_rest(api: httpx.Client, body: bytes, message: str):
    response = api.post(
        "/models/broken/predict", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_an_infinity_gets_the_same_answer_over_rest_and_grpc(
    api: httpx.Client, replica: InferenceServer
):
    body = b'{"data": [[5.1, 3.5, 1.4, 1e39]]}'  # past FP32's range: an infinity once packed
    rest = api.post(
        "/models/broken/predict", content=body, headers={"content-type": "application/json"}
    )
    rows = np.array([[5.1, 3.5, 1.4, math.inf]], np.float32)
    with (
        grpc.insecure_channel(replica.grpc_address) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            infer_request("broken", {"input": rows})
        )
    assert rest.status_code == errors.InvalidInput.http_status == 422
    assert caught.value.code() == errors.InvalidInput.grpc_code
    assert rest.json()["detail"] == caught.value.details()
    assert rest.json()["detail"].startswith("input 'input' row 0 holds inf: ")


@pytest.fixture(scope="module")
def repository_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_local_repo(tmp_path_factory.mktemp("git"), "errors-repo").url


def register(api: httpx.Client, url: str) -> httpx.Response:
    return api.post("/repos", json={"github_url": url, "notebook_path": "notebooks/train.ipynb"})


def gone_repository(api: httpx.Client, tmp_path: Path) -> httpx.Response:
    gone = make_local_repo(tmp_path, "gone")
    repository = register(api, gone.url).json()
    shutil.rmtree(gone.bare)
    return api.post(f"/repos/{repository['id']}/trigger")


REFUSALS = {
    errors.Unauthorized: lambda api, _: httpx.get(api.base_url.join("/models"), timeout=10),
    errors.ModelNotFound: lambda api, _: api.post("/models/nope/predict", json={"data": []}),
    errors.PipelineNotFound: lambda api, _: api.get("/pipelines/nope"),
    errors.RepositoryNotFound: lambda api, _: api.get("/repos/424242"),
    errors.Conflict: lambda api, ctx: (register(api, ctx["url"]), register(api, ctx["url"]))[1],
    errors.MessageTooLarge: lambda api, _: api.post(
        "/models/broken/predict", content=b"0" * MAX_PREDICT_BYTES * 2
    ),
    errors.InvalidInput: lambda api, _: api.post("/models/broken/predict", json={"x": 1}),
    errors.ModelRuntimeError: lambda api, _: api.post(
        "/models/broken/predict", json={"data": [[7, 7, 7, 7]]}
    ),
    errors.UpstreamError: lambda api, ctx: gone_repository(api, ctx["tmp_path"]),
}
"""A request each error class answers, for those a gateway with one replica can meet."""


@pytest.mark.parametrize("error", list(REFUSALS), ids=lambda cls: cls.__name__)
def test_each_error_answers_its_class_http_status(
    api: httpx.Client, repository_url: str, tmp_path: Path, error: type[MlopsError]
):
    response = REFUSALS[error](api, {"url": repository_url, "tmp_path": tmp_path})
    assert response.status_code == error.http_status, response.text
    assert set(response.json()) == {"detail"}


def every_error_class() -> list[type[MlopsError]]:
    return [
        cls
        for cls in vars(errors).values()
        if inspect.isclass(cls) and issubclass(cls, MlopsError) and cls is not MlopsError
    ]


@pytest.mark.parametrize("error", every_error_class(), ids=lambda cls: cls.__name__)
def test_every_error_class_has_a_status_code_and_websocket_close_code(error: type[MlopsError]):
    assert 400 <= error.http_status <= 599
    assert isinstance(error.grpc_code, grpc.StatusCode) and error.grpc_code != grpc.StatusCode.OK
    # A 4xx is the caller's to fix, and so is its gRPC code; a 5xx is ours.
    server_side = {
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
    assert (error.grpc_code in server_side) == (error.http_status >= 500)
    code = close_code(error("message") if error is not errors.PipelineError else error("s", "m"))
    assert code == 4000 + error.http_status and 4000 <= code <= 4999
