"""The Open Inference Protocol over REST on the gateway (`/v2`): tritonclient.http, JSON and
binary, gives what tritonclient.grpc gets from the fleet; metadata, readiness, `id`, pinned
versions; every error is `{"error": ...}` with the protocol's status.

One replica (iris: LR 1 active, RF 2 warm; petal: a linear regressor) and one gateway, started
once for the module.
"""

from __future__ import annotations

import gzip
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis as sync_redis
import tritonclient.http as httpclient

from benchmarks import iris_models
from benchmarks.processes import VENV_BIN, free_port
from mlops_core import fleet_state
from tests.conftest import InferenceServer, StartInference, new_redis_db
from tests.gateway.conftest import API_KEY, Gateway, gateway_env, launch_gateway

X, _ = iris_models.iris()
ROWS = X[::10].astype(np.float32)  # 15 rows over the three classes
FEATURES = {"iris": ROWS, "petal": ROWS[:, :3]}  # petal: petal width from the other three


def auth() -> dict[str, str]:
    # A new dict each call: tritonclient.http adds its Inference-Header-Content-Length to the
    # headers it is given.
    return {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def fleet_redis(redis_url: str) -> str:
    url = new_redis_db(redis_url)
    client = sync_redis.Redis.from_url(url)
    client.hset(fleet_state.DESIRED_KEY, "iris", '{"active": "1", "warm": ["2"]}')
    client.hset(fleet_state.DESIRED_KEY, "petal", '{"active": "1", "warm": []}')
    return url


@pytest.fixture(scope="module")
def replica(start_inference: StartInference, iris_repo: Path, fleet_redis: str) -> InferenceServer:
    env = {"MLOPS_RESYNC_INTERVAL_S": "1", "MLOPS_HEARTBEAT_TTL_S": "3"}
    return start_inference(iris_repo, name="gw-oip", redis_url=fleet_redis, env=env)


@pytest.fixture(scope="module")
def oip_gateway(
    run_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    fleet_redis: str,
    replica: InferenceServer,
) -> Iterator[Gateway]:
    env = gateway_env(
        tmp_path_factory.mktemp("gateway-oip"),
        fleet_redis,
        MLOPS_FLEET_ADDRESS=f"ipv4:{replica.grpc_address}",
    )
    gw = launch_gateway(run_dir, "gateway-oip", env)
    yield gw
    gw.process.stop()


@pytest.fixture(scope="module")
def native(replica: InferenceServer) -> dict[tuple[str, str], dict]:
    """tritonclient.grpc against the replica, one process per (model, version), run side by
    side: its stubs and ours cannot share one process."""
    specs = {key: {"model": key[0], "version": key[1]} for key in [("iris", ""), ("iris", "2")]}
    specs[("petal", "")] = {"model": "petal", "version": ""}
    running = {
        key: subprocess.Popen(
            [
                str(VENV_BIN / "python"),
                "-m",
                "tests.support.triton_probe",
                json.dumps(
                    {
                        **spec,
                        "url": replica.grpc_address,
                        "rows": FEATURES[spec["model"]].tolist(),
                    }
                ),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for key, spec in specs.items()
    }
    answers = {}
    for key, process in running.items():
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        answers[key] = json.loads(out)
        assert "error" not in answers[key], answers[key]
    return answers


@pytest.fixture(scope="module")
def triton(oip_gateway: Gateway) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(oip_gateway.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def api(oip_gateway: Gateway) -> Iterator[httpx.Client]:
    with oip_gateway.client() as client:
        yield client


def http_infer(
    client: httpclient.InferenceServerClient,
    model: str,
    *,
    binary_in: bool,
    outputs: dict[str, bool] | None = None,
    version: str = "",
) -> httpclient.InferResult:
    rows = FEATURES[model]
    infer_input = httpclient.InferInput("input", list(rows.shape), "FP32")
    infer_input.set_data_from_numpy(rows, binary_data=binary_in)
    requested = [
        httpclient.InferRequestedOutput(n, binary_data=b) for n, b in (outputs or {}).items()
    ]
    return client.infer(
        model, [infer_input], model_version=version, outputs=requested or None, headers=auth()
    )


def assert_same(result: httpclient.InferResult, expected: dict, names: list[str]) -> None:
    for name in names:
        got = result.as_numpy(name)
        want = np.asarray(expected["outputs"][name])
        assert got is not None and got.shape == want.shape, name
        if got.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        else:
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "binary_in, outputs",
    [
        (True, None),  # tritonclient's default: binary input, every output binary
        (False, {"label": False, "probabilities": False}),  # all JSON
        (False, {"label": True, "probabilities": False}),
        (True, {"probabilities": True}),
    ],
    ids=["binary", "json", "mixed", "one-output"],
)
def test_classifier_over_tritonclient_http_equals_native_grpc(
    triton: httpclient.InferenceServerClient,
    native: dict,
    binary_in: bool,
    outputs: dict[str, bool] | None,
):
    result = http_infer(triton, "iris", binary_in=binary_in, outputs=outputs)
    names = list(outputs) if outputs else ["label", "probabilities"]
    assert [o["name"] for o in result.get_response()["outputs"]] == names
    assert result.get_response()["model_version"] == native[("iris", "")]["model_version"] == "1"
    assert_same(result, native[("iris", "")], names)


@pytest.mark.parametrize("binary", [True, False])
def test_regressor_over_tritonclient_http_equals_native_grpc(
    triton: httpclient.InferenceServerClient, native: dict, binary: bool
):
    result = http_infer(triton, "petal", binary_in=binary, outputs={"variable": binary})
    assert_same(result, native[("petal", "")], ["variable"])


def test_pinned_version_answers_from_that_version(
    triton: httpclient.InferenceServerClient, native: dict
):
    result = http_infer(triton, "iris", binary_in=True, version="2")
    assert result.get_response()["model_version"] == "2"
    assert_same(result, native[("iris", "2")], ["label", "probabilities"])


def test_json_body_nested_data_and_id_echoed(api: httpx.Client, native: dict):
    body = {
        "id": "req-42",
        "inputs": [
            {"name": "input", "shape": [2, 4], "datatype": "FP32", "data": ROWS[:2].tolist()}
        ],
        "outputs": [{"name": "label"}],
    }
    response = api.post("/v2/models/iris/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert answer["id"] == "req-42"
    assert (answer["model_name"], answer["model_version"]) == ("iris", "1")
    assert answer["outputs"] == [
        {
            "name": "label",
            "datatype": "INT64",
            "shape": [2],
            "data": native[("iris", "")]["outputs"]["label"][:2],
        }
    ]


def test_a_routing_key_goes_through_the_models_routing(api: httpx.Client):
    """Its own call with the key (no canary here: the active version answers)."""
    response = api.post(
        "/v2/models/iris/infer", json=json_body(), headers={"X-Routing-Key": "user-7"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == "1"


def test_gzip_body_is_read_and_other_encodings_refused(api: httpx.Client):
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5, 3, 1, 0]}]}
    ).encode()
    zipped = api.post(
        "/v2/models/iris/infer", content=gzip.compress(body), headers={"Content-Encoding": "gzip"}
    )
    assert zipped.status_code == 200, zipped.text
    refused = api.post("/v2/models/iris/infer", content=body, headers={"Content-Encoding": "br"})
    assert refused.status_code == 400
    assert "Content-Encoding 'br' is not supported" in refused.json()["error"]


def test_metadata_equals_native_grpc(triton: httpclient.InferenceServerClient, native: dict):
    for model, version in [("iris", ""), ("iris", "2"), ("petal", "")]:
        got = triton.get_model_metadata(model, version, headers=auth())
        want = native[(model, version)]["metadata"]
        # protobuf's JSON writes int64 shapes as strings
        for tensors in (want["inputs"], want["outputs"]):
            for tensor in tensors:
                tensor["shape"] = [int(d) for d in tensor["shape"]]
        assert got == want
    assert set(got) == {"name", "versions", "platform", "inputs", "outputs"}


def test_server_metadata_health_and_readiness(
    triton: httpclient.InferenceServerClient, oip_gateway: Gateway
):
    server = triton.get_server_metadata(headers=auth())
    assert server["name"] == "mlops-gateway" and "binary_tensor_data" in server["extensions"]
    assert triton.is_server_live() and triton.is_server_ready()  # no key: open as /health
    assert triton.is_model_ready("iris", headers=auth())
    assert triton.is_model_ready("iris", "2", headers=auth())
    with httpx.Client(base_url=oip_gateway.url, headers=auth()) as client:
        assert client.get("/v2/models/iris/ready").json() == {"name": "iris", "ready": True}
        for path in ["/v2/models/nope/ready", "/v2/models/iris/versions/9/ready"]:
            answer = client.get(path)
            assert answer.status_code == 404 and "error" in answer.json(), path


def json_body(datatype: str = "FP32", shape: list[int] | None = None, data: object = None) -> dict:
    return {
        "inputs": [
            {
                "name": "input",
                "shape": shape or [1, 4],
                "datatype": datatype,
                "data": [5.1, 3.5, 1.4, 0.2] if data is None else data,
            }
        ]
    }


BINARY_HEADER = json.dumps(
    {
        "inputs": [
            {
                "name": "input",
                "shape": [1, 4],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 16},
            }
        ]
    }
).encode()


@pytest.mark.parametrize(
    "path, request_kwargs, status, message",
    [
        ("/v2/models/nope/infer", {"json": json_body()}, 404, "'nope' is not served"),
        ("/v2/models/iris/versions/9/infer", {"json": json_body()}, 404, "no version '9'"),
        ("/v2/models/iris/versions/9", {}, 404, "no version '9'"),
        ("/v2/models/nope", {}, 404, "'nope' is not served"),
        (
            "/v2/models/iris/infer",
            {"json": json_body(shape=[1, 3], data=[1, 2, 3])},
            400,
            "has shape [1, 3]",
        ),
        (
            "/v2/models/iris/infer",
            {"json": json_body(shape=[1, 4], data=[1, 2, 3])},
            400,
            "3 values in data for shape [1, 4]; expected 4",
        ),
        (
            "/v2/models/iris/infer",
            {"content": b'{"inputs": [', "headers": {"Content-Type": "application/json"}},
            400,
            "not valid JSON",
        ),
        ("/v2/models/iris/infer", {"json": json_body("FP64")}, 400, "has datatype FP64"),
        ("/v2/models/iris/infer", {"json": json_body("INT32")}, 400, "INT32 takes integers"),
        ("/v2/models/iris/infer", {"json": json_body("FLOAT")}, 400, "datatype 'FLOAT'"),
        (
            "/v2/models/iris/infer",
            {"json": json_body(data=[1, "2", 3, 4])},
            400,
            "not numbers",
        ),
        (
            "/v2/models/iris/infer",
            {"json": {**json_body(), "outputs": [{"name": "nope"}]}},
            400,
            "unknown output(s) ['nope']",
        ),
        (
            "/v2/models/iris/infer",
            {
                "content": BINARY_HEADER + bytes(12),
                "headers": {"Inference-Header-Content-Length": str(len(BINARY_HEADER))},
            },
            400,
            "binary_data_size is 16, but the body holds only 12",
        ),
        (
            "/v2/models/iris/infer",
            {
                "content": BINARY_HEADER + bytes(20),
                "headers": {"Inference-Header-Content-Length": str(len(BINARY_HEADER))},
            },
            400,
            "4 bytes of binary data past",
        ),
        ("/v2/nothing-here", {}, 404, "Not Found"),
        ("/v2/models/-iris/infer", {"json": json_body()}, 400, "path.name"),
    ],
    ids=[
        "unknown-model",
        "unknown-version",
        "unknown-version-metadata",
        "unknown-model-metadata",
        "wrong-shape",
        "shape-data-mismatch",
        "bad-json",
        "wrong-datatype",
        "floats-as-int",
        "unknown-datatype",
        "string-value",
        "unknown-output",
        "binary-short",
        "binary-long",
        "unknown-route",
        "not-a-model-name",
    ],
)
def test_errors_answer_error_with_the_protocols_status(
    api: httpx.Client, path: str, request_kwargs: dict, status: int, message: str
):
    method = api.post if request_kwargs else api.get
    response = method(path, **request_kwargs)
    assert response.status_code == status, response.text
    assert list(response.json()) == ["error"]
    assert message in response.json()["error"]


def test_api_key_as_for_our_routes(oip_gateway: Gateway):
    with oip_gateway.client(auth=False) as client:
        for method, path in [
            ("POST", "/v2/models/iris/infer"),
            ("GET", "/v2/models/iris"),
            ("GET", "/v2/models/iris/ready"),
            ("GET", "/v2"),
        ]:
            response = client.request(method, path, json=json_body())
            assert response.status_code == 401, path
            assert "missing bearer token" in response.json()["error"]
        wrong = client.get("/v2", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json() == {"error": "invalid API key"}
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200


def test_without_a_fleet_ready_is_400_and_infer_503(
    run_dir: Path, tmp_path_factory: pytest.TempPathFactory, fleet_redis: str
):
    env = gateway_env(
        tmp_path_factory.mktemp("gateway-oip-no-fleet"),
        fleet_redis,
        MLOPS_FLEET_ADDRESS=f"127.0.0.1:{free_port()}",  # nothing listens there
    )
    gw = launch_gateway(run_dir, "gateway-oip-no-fleet", env)
    try:
        check_without_fleet(gw)
    finally:
        gw.process.stop()


def check_without_fleet(gw: Gateway) -> None:
    with gw.client() as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        not_ready = client.get("/v2/health/ready")
        assert not_ready.status_code == 400 and "UNAVAILABLE" in not_ready.json()["error"]
        infer = client.post("/v2/models/iris/infer", json=json_body())
        assert infer.status_code == 503, infer.text
        assert "cannot serve 'iris' now" in infer.json()["error"]


def test_openapi_documents_the_v2_routes_in_their_error_shape(api: httpx.Client):
    paths = api.get("/openapi.json").json()["paths"]
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert infer["summary"] and infer["description"]
    assert infer["requestBody"]["content"]["application/json"]["schema"]["examples"]
    error = infer["responses"]["400"]["content"]["application/json"]["example"]
    assert list(error) == ["error"]
    assert "security" not in paths["/v2/health/ready"]["get"]
    assert paths["/v2/models/{name}"]["get"]["security"]
