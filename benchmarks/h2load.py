"""Unary gRPC load with h2load (nghttp2): a gRPC call is an HTTP/2 POST of one framed message.

NOTE: h2load sees the HTTP status (always 200 for gRPC) but not `grpc-status`, which comes in
the trailers. So each cell is validated once with a real gRPC client first, and the DATA
bytes h2load received are checked against that answer's size: a failed call answers
Trailers-Only, with no DATA, and shows up as missing bytes.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.measure import Measurement, children_cpu_s, percentiles_ms

INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
MAX_CONNECTIONS = 16
"""Client connections at most; concurrency beyond is streams per connection. Enough of them
that SO_REUSEPORT (which balances connections, not calls) spreads them over the replicas."""


def grpc_frame(message: bytes) -> bytes:
    """The gRPC length-prefixed message: compressed flag 0, 4-byte big-endian length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def connections_for(concurrency: int) -> tuple[int, int]:
    """(connections, streams per connection) giving exactly `concurrency` calls in flight."""
    connections = min(concurrency, MAX_CONNECTIONS)
    while concurrency % connections:
        connections -= 1
    return connections, concurrency // connections


def h2load_argv(
    h2load: str,
    target: str,
    body_path: Path,
    concurrency: int,
    duration_s: float,
    log_path: Path | None,
) -> list[str]:
    connections, streams = connections_for(concurrency)
    return [
        h2load,
        f"http://{target}{INFER_PATH}",
        *("-d", str(body_path)),
        *("-H", "content-type: application/grpc"),
        *("-H", "te: trailers"),
        *("-c", str(connections), "-m", str(streams), "-t", "1"),
        f"--duration={round(duration_s * 1000)}ms",
        *([f"--log-file={log_path}"] if log_path else []),
    ]


@dataclass
class H2Summary:
    done: int
    succeeded: int
    failed: int
    errored: int
    status_2xx: int
    data_bytes: int
    elapsed_s: float


def parse_summary(text: str) -> H2Summary:
    """The figures of h2load's closing summary."""

    def number(pattern: str) -> float:
        match = re.search(pattern, text)
        if match is None:
            raise ValueError(f"h2load output lacks {pattern!r}:\n{text[-2000:]}")
        return float(match.group(1))

    finished = re.search(r"finished in ([\d.]+)(us|ms|s),", text)
    if finished is None:
        raise ValueError(f"h2load did not finish:\n{text[-2000:]}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}[finished.group(2)]
    return H2Summary(
        done=int(number(r"(\d+) done")),
        succeeded=int(number(r"(\d+) succeeded")),
        failed=int(number(r"(\d+) failed")),
        errored=int(number(r"(\d+) errored")),
        status_2xx=int(number(r"(\d+) 2xx")),
        data_bytes=int(number(r"\((\d+)\) data")),
        elapsed_s=float(finished.group(1)) * scale,
    )


def read_log(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(HTTP status, latency in ms) of every request in h2load's `--log-file`."""
    raw = np.loadtxt(path, dtype=np.int64, ndmin=2) if path.stat().st_size else np.zeros((0, 3))
    return raw[:, 1].astype(int), raw[:, 2] / 1000.0


def run_h2load(
    h2load: str,
    target: str,
    message: bytes,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    expected_response_bytes: int,
) -> Measurement:
    """Closed-loop unary calls of `message` (a serialized ModelInferRequest)."""
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        body = Path(tmp) / "body.bin"
        body.write_bytes(grpc_frame(message))
        log = Path(tmp) / "requests.log"
        # NOTE: the warm-up is a run of its own rather than h2load's --warm-up-time, whose
        # DATA byte count would include the warm-up's answers and hide errors.
        warmup = h2load_argv(h2load, target, body, concurrency, warmup_s, None)
        subprocess.run(warmup, capture_output=True, check=True, timeout=warmup_s + 60)
        argv = h2load_argv(h2load, target, body, concurrency, duration_s, log)
        cpu_before = children_cpu_s()
        run = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 120)
        client_cpu = children_cpu_s() - cpu_before
        if run.returncode != 0:
            raise RuntimeError(f"h2load failed ({run.returncode}): {run.stderr or run.stdout}")
        summary = parse_summary(run.stdout)
        statuses, latencies = read_log(log)
    return measurement_of(summary, statuses, latencies, client_cpu, expected_response_bytes)


def measurement_of(
    summary: H2Summary,
    statuses: np.ndarray,
    latencies_ms: np.ndarray,
    client_cpu_s: float,
    expected_response_bytes: int,
) -> Measurement:
    """Errors are non-2xx answers, h2load's own failures, and missing response bytes (calls
    that answered a gRPC error carry no message)."""
    notes = []
    expected_bytes = summary.done * expected_response_bytes
    missing = (
        round((expected_bytes - summary.data_bytes) / expected_response_bytes)
        if expected_response_bytes
        else 0
    )
    if missing > 0:
        notes.append(
            f"{missing} responses' worth of bytes missing: gRPC errors likely "
            f"({summary.data_bytes} of {expected_bytes} expected DATA bytes)"
        )
    http_errors = int(np.count_nonzero((statuses < 200) | (statuses >= 300)))
    errors = max(summary.done - summary.succeeded, http_errors, missing)
    p50, p90, p99 = percentiles_ms(latencies_ms)
    return Measurement(
        client="h2load",
        requests=summary.done,
        errors=errors,
        elapsed_s=summary.elapsed_s,
        rps=summary.done / summary.elapsed_s if summary.elapsed_s else 0.0,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        client_cpu_s=round(client_cpu_s, 3),
        notes=notes,
    )
