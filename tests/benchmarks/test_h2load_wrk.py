"""The native clients' plumbing: gRPC framing of the h2load body, connection split, and the
parsing of h2load's and wrk's output into a cell's figures."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from benchmarks.cells import Load, grpc_request
from benchmarks.h2load import (
    H2Summary,
    connections_for,
    grpc_frame,
    h2load_argv,
    measurement_of,
    parse_summary,
    read_log,
)
from benchmarks.tools import ToolMissing, find_tools
from benchmarks.wrk import RESULT_MARK, lua_script, parse_result, run_wrk
from benchmarks.wrk import measurement_of as wrk_measurement
from mlops_core.protocol import open_inference_pb2 as pb

H2LOAD_OUTPUT = """\
starting benchmark...
Main benchmark duration is over for thread #0. Stopping all clients.

finished in 1.01s, 2347.00 req/s, 335.51KB/s
requests: 2347 total, 2351 started, 2347 done, 2347 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 2347 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 335.51KB (343561) total, 7.17KB (7341) headers (space savings 96.14%), 199.40KB (204189) data
                     min         max         mean         sd        +/- sd
time for request:      492us      5.00ms      1.66ms       524us    87.64%
"""  # noqa: E501


def test_grpc_frame_is_flag_length_and_the_serialized_request():
    request = grpc_request(Load("x", "grpc", "iris-rf", rows=64, concurrency=1))
    message = request.SerializeToString()
    frame = grpc_frame(message)
    assert frame[0] == 0, "uncompressed"
    assert int.from_bytes(frame[1:5], "big") == len(message) == len(frame) - 5
    decoded = pb.ModelInferRequest.FromString(frame[5:])
    assert decoded.model_name == "iris-rf"
    assert list(decoded.inputs[0].shape) == [64, 4]
    assert decoded.inputs[0].datatype == "FP32"
    rows = np.frombuffer(decoded.raw_input_contents[0], dtype=np.float32).reshape(64, 4)
    assert rows.min() > 0 and rows.max() < 8, "real iris measurements"


@pytest.mark.parametrize(
    ("concurrency", "split"), [(1, (1, 1)), (16, (16, 1)), (64, (16, 4)), (24, (12, 2))]
)
def test_connections_times_streams_is_the_concurrency(concurrency, split):
    assert connections_for(concurrency) == split


def test_h2load_argv_posts_grpc_with_trailers(tmp_path: Path):
    argv = h2load_argv("h2load", "127.0.0.1:5", tmp_path / "b", 64, 2.5, tmp_path / "log")
    assert argv[1] == "http://127.0.0.1:5/inference.GRPCInferenceService/ModelInfer"
    assert argv[4:6] == ["-H", "content-type: application/grpc"]
    assert "te: trailers" in argv
    assert argv[8:12] == ["-c", "16", "-m", "4"]
    assert "--duration=2500ms" in argv
    assert f"--log-file={tmp_path / 'log'}" in argv


def test_h2load_summary_and_log_become_figures(tmp_path: Path):
    summary = parse_summary(H2LOAD_OUTPUT)
    assert summary == H2Summary(2347, 2347, 0, 0, 2347, 204189, 1.01)
    log = tmp_path / "requests.log"
    log.write_text("".join(f"17957105{i:08d}\t200\t{1000 + i}\n" for i in range(100)))
    statuses, latencies = read_log(log)
    measured = measurement_of(summary, statuses, latencies, 0.25, 87)
    assert measured.errors == 0 and not measured.notes
    assert measured.rps == pytest.approx(2347 / 1.01)
    assert measured.p50_ms == pytest.approx(1.0495)
    assert measured.p99_ms == pytest.approx(1.09801)


def test_missing_response_bytes_count_as_grpc_errors():
    summary = H2Summary(100, 100, 0, 0, 100, 60 * 87, 1.0)
    measured = measurement_of(summary, np.full(100, 200), np.ones(100), 0.1, 87)
    assert measured.errors == 40
    assert "40 responses' worth of bytes missing" in measured.notes[0]


def test_wrk_script_posts_the_body_and_reports_json():
    body = json.dumps({"data": [[5.1, 3.5, 1.4, 0.2]]})
    script = lua_script(body)
    assert 'wrk.method = "POST"' in script
    assert json.dumps(body) in script, "the body is a quoted Lua string"
    assert RESULT_MARK in script
    out = (
        "Running 2s test\n"
        f'{RESULT_MARK}{{"requests": 4000, "duration_us": 2000000, "connect": 0, "read": 0, '
        '"write": 0, "status": 2, "timeout": 1, "p50_us": 1500, "p90_us": 2500, "p99_us": 9000}\n'
    )
    measured = wrk_measurement(parse_result(out), 0.4)
    assert (measured.rps, measured.errors, measured.p99_ms) == (2000.0, 3, 9.0)


def test_wrk_runs_the_script_against_a_real_http_server(tmp_path: Path, native_tools):
    seen: list[tuple[str, str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    body = '{"data": [[5.1, 3.5, 1.4, 0.2]], "note": "a \\"quote\\""}'
    try:
        url = f"http://127.0.0.1:{server.server_port}/models/iris/predict"
        measured = run_wrk(native_tools["wrk"], url, body, concurrency=2, duration_s=1, warmup_s=0)
    finally:
        server.shutdown()
        server.server_close()
    assert measured.requests > 0 and measured.errors == 0
    assert seen[0] == ("/models/iris/predict", "application/json", body.encode())


def test_a_missing_client_is_named_with_the_command_that_installs_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing) as missing:
        find_tools("h2load", "wrk")
    assert str(missing.value) == (
        "h2load, wrk not found: run `make bench-deps` "
        "(apt-get install -y nghttp2-client wrk, Debian/Ubuntu)"
    )
