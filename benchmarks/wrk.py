"""REST load with wrk (HTTP/1.1 keep-alive, which both the gateway and MLServer serve): a Lua
script POSTs one JSON body and prints wrk's own figures as one JSON line when done."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from benchmarks.measure import Measurement, children_cpu_s

RESULT_MARK = "WRK_RESULT "


def lua_script(body: str) -> str:
    """Sets the request and, in `done`, prints requests, duration, errors and percentiles."""
    return f"""
wrk.method = "POST"
wrk.body = {json.dumps(body)}
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{RESULT_MARK}{{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d, '
    .. '"p50_us": %d, "p90_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


def parse_result(stdout: str) -> dict[str, int]:
    for line in stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return dict(json.loads(line[len(RESULT_MARK) :]))
    raise ValueError(f"wrk printed no result line:\n{stdout[-2000:]}")


def measurement_of(result: dict[str, int], client_cpu_s: float) -> Measurement:
    elapsed = result["duration_us"] / 1e6
    errors = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    return Measurement(
        client="wrk",
        requests=result["requests"],
        errors=errors,
        elapsed_s=elapsed,
        rps=result["requests"] / elapsed if elapsed else 0.0,
        p50_ms=result["p50_us"] / 1000,
        p90_ms=result["p90_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        client_cpu_s=round(client_cpu_s, 3),
    )


def wrk_argv(wrk: str, url: str, script: Path, concurrency: int, duration_s: float) -> list[str]:
    # NOTE: one thread: a single wrk thread drives far more than any server here answers on
    # two cores, and a second would only take CPU from the server.
    return [
        wrk,
        *("-t", "1", "-c", str(concurrency)),
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "10s",
        *("-s", str(script)),
        url,
    ]


def run_wrk(
    wrk: str, url: str, body: str, concurrency: int, duration_s: float, warmup_s: float
) -> Measurement:
    """Closed-loop POSTs of `body` (JSON) to `url`; a separate short run warms up first."""
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(lua_script(body))
        if warmup_s > 0:
            warmup = wrk_argv(wrk, url, script, concurrency, warmup_s)
            subprocess.run(warmup, capture_output=True, check=True, timeout=warmup_s + 60)
        cpu_before = children_cpu_s()
        run = subprocess.run(
            wrk_argv(wrk, url, script, concurrency, duration_s),
            capture_output=True,
            text=True,
            timeout=duration_s + 120,
        )
        client_cpu = children_cpu_s() - cpu_before
    if run.returncode != 0:
        raise RuntimeError(f"wrk failed ({run.returncode}): {run.stderr or run.stdout}")
    return measurement_of(parse_result(run.stdout), client_cpu)
