"""Bounded requests on a real gateway: bodies past MLOPS_MAX_PREDICT_BYTES answer 413 without
being read whole (by Content-Length, and chunked), and a 422 never echoes a big input back."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.errors import PREVIEW_CHARS
from tests.conftest import InferenceServer, StartInference, new_redis_db
from tests.gateway.conftest import API_KEY, Gateway, gateway_env, launch_gateway

LIMIT = 64 * 1024
TOO_LARGE = {"detail": f"request body exceeds {LIMIT} bytes (MLOPS_MAX_PREDICT_BYTES)"}
ROW = [5.1, 3.5, 1.4, 0.2]
BIG = 50_000  # characters of a malformed value: well inside the limit, far past any preview


@pytest.fixture(scope="module")
def replica(start_inference: StartInference, iris_repo: Path) -> InferenceServer:
    return start_inference(iris_repo, name="gw-limits")


@pytest.fixture(scope="module")
def limited(
    run_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    replica: InferenceServer,
) -> Iterator[Gateway]:
    env = gateway_env(
        tmp_path_factory.mktemp("gateway-limits"),
        new_redis_db(redis_url),
        MLOPS_FLEET_ADDRESS=replica.grpc_address,
        MLOPS_MAX_PREDICT_BYTES=str(LIMIT),
    )
    gw = launch_gateway(run_dir, "gateway-limits", env)
    yield gw
    gw.process.stop()


@pytest.fixture(scope="module")
def api(limited: Gateway) -> Iterator[httpx.Client]:
    with limited.client() as client:
        yield client


def padded(size: int) -> bytes:
    """A valid predict body of exactly `size` bytes (JSON allows trailing whitespace)."""
    body = json.dumps({"data": [ROW]}).encode()
    return body + b" " * (size - len(body))


def raw_exchange(gateway: Gateway, head: str, parts: Iterator[bytes]) -> tuple[int, bytes]:
    """Send a request head and body parts over a plain socket, then read one response; the
    body may be left unfinished on purpose."""
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        for part in parts:
            sock.sendall(part)
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536) or pytest.fail(f"connection closed: {received!r}")
        header, _, body = received.partition(b"\r\n\r\n")
        status_line, *fields = header.decode().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}
        length = int(headers["content-length"])
        while len(body) < length:
            body += sock.recv(65536) or pytest.fail("connection closed mid-response")
    return int(status_line.split()[1]), body


def predict_head(**headers: str) -> str:
    lines = [
        "POST /models/iris/predict HTTP/1.1",
        "Host: gateway",
        f"Authorization: Bearer {API_KEY}",
        "Content-Type: application/json",
        *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items()),
    ]
    return "\r\n".join(lines) + "\r\n\r\n"


def test_predictions_within_the_limit_still_work(api: httpx.Client):
    response = api.post("/models/iris/predict", json={"data": [ROW, ROW]})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 2
    # A body of exactly the limit is still accepted.
    response = api.post("/models/iris/predict", content=padded(LIMIT))
    assert response.status_code == 200, response.text


def test_a_body_past_the_limit_is_413(api: httpx.Client):
    response = api.post("/models/iris/predict", content=padded(LIMIT + 1))
    assert response.status_code == 413
    assert response.json() == TOO_LARGE

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield padded(LIMIT // 2)[:-1] + b" "
        yield b" " * (LIMIT // 2 + 1)

    response = api.post("/models/iris/predict", content=chunks())
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 413
    assert response.json() == TOO_LARGE
    # Every route is held to the limit, not only predict.
    response = api.post("/repos", content=b" " * (LIMIT + 1), headers={"Content-Type": "x"})
    assert response.status_code == 413
    # The Open Inference Protocol's routes too, in its error shape, declared or chunked.
    for content in (padded(LIMIT + 1), chunks()):
        response = api.post("/v2/models/iris/infer", content=content)
        assert response.status_code == 413
        assert response.json() == {"error": TOO_LARGE["detail"]}


def test_a_declared_oversize_body_is_refused_before_it_is_sent(limited: Gateway):
    # 10 GiB announced, not one byte sent: the answer can only come from the header.
    status, body = raw_exchange(limited, predict_head(Content_Length=str(10 * 2**30)), iter(()))
    assert status == 413
    assert json.loads(body) == TOO_LARGE


def test_a_chunked_body_is_cut_off_once_past_the_limit(limited: Gateway):
    # Chunks past the limit and never the final empty chunk: the answer cannot wait for
    # the end of the body, so the gateway stopped reading at the limit.
    chunk = b"x" * 8192

    def parts() -> Iterator[bytes]:
        for _ in range(LIMIT // len(chunk) + 2):
            yield b"%x\r\n%s\r\n" % (len(chunk), chunk)

    status, body = raw_exchange(limited, predict_head(Transfer_Encoding="chunked"), parts())
    assert status == 413
    assert json.loads(body) == TOO_LARGE


MALFORMED = [
    ("/models/iris/predict", {"data": [["Z" * BIG, 1.0, 2.0, 3.0]]}),
    ("/models/iris/predict", {"data": [[1.0, 2.0, 3.0, ["Z" * 100] * (BIG // 100)]]}),
    ("/repos", {"github_url": "Z" * BIG, "notebook_path": "train.ipynb"}),
    ("/repos", {"github_url": "https://github.com/a/b", "notebook_path": "x", "Z" * BIG: 1}),
    ("/models/iris/rollback", {"version": "Z" * BIG}),
    ("/models/iris/rollback", ["Z" * BIG]),
]


@pytest.mark.parametrize(("path", "body"), MALFORMED)
def test_a_422_never_echoes_a_big_input(api: httpx.Client, path: str, body):
    response = api.post(path, json=body)
    assert response.status_code == 422, response.text
    assert len(response.content) < 1024, response.text
    assert "Z" * (PREVIEW_CHARS + 1) not in response.text
    assert response.json()["detail"]


def test_a_422_for_unparsable_json_is_small_too(api: httpx.Client):
    for path in ("/models/iris/predict", "/repos"):
        response = api.post(
            path,
            content=b'{"github_url": "' + b"Z" * BIG,
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 422, response.text
        assert len(response.content) < 1024 and "ZZZ" not in response.text


def test_a_body_of_many_errors_lists_a_few_and_counts_the_rest(api: httpx.Client):
    extra = {f"f{i}": 0 for i in range(3000)}
    body = {"github_url": "https://github.com/a/b", "notebook_path": "x", **extra}
    response = api.post("/repos", json=body)
    assert response.status_code == 422
    assert len(response.content) < 4096
    answer = response.json()
    assert len(answer["errors"]) == 10
    assert answer["errors"][0] == {
        "loc": ["body", "f0"],
        "msg": "Extra inputs are not permitted",
        "type": "extra_forbidden",
    }
    assert answer["detail"].endswith("; and 2990 more errors")
