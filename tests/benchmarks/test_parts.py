"""The smaller parts: py-spy summaries, swap phases, MLServer's configuration, CPU meters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.measure import CpuMeter, descendants
from benchmarks.peers import mlserver_rest_body, write_mlserver_folder
from benchmarks.profile import top_frames
from benchmarks.scenarios import Plan, server_keys
from benchmarks.swap import Call, phase_summary

COLLAPSED = """\
thread (1): MainThread;main (inference/__main__.py);InferenceServicer.ModelInfer (inference/servicer.py);decode_inputs (inference/tensors.py) 30
thread (1): MainThread;main (inference/__main__.py);sendmsg (libc.so.6) 50
thread (1): MainThread;main (inference/__main__.py);Loop__run (loop.c);epoll_pwait (libc.so.6) 400
thread (7): ort_0;_worker (concurrent/futures/thread.py);_queue_SimpleQueue_get (_queuemodule.c.h);0x7f (libc.so.6) 300
thread (8): ort_1;_worker (concurrent/futures/thread.py);OnnxModel.run (inference/runtime.py);onnxruntime::InferenceSession::Run (libonnxruntime.so) 20
"""  # noqa: E501


def test_profile_leaves_out_waiting_threads_and_lists_our_code():
    summary = top_frames(COLLAPSED)
    assert (summary["samples"], summary["waiting_samples"]) == (100, 700)
    assert summary["threads"] == [("MainThread", 80.0), ("ort_1", 20.0)]
    assert summary["self"][0] == ("sendmsg (libc.so.6)", 50.0)
    own = dict(summary["own_code"])
    assert own["main (inference/__main__.py)"] == 80.0
    assert own["decode_inputs (inference/tensors.py)"] == 30.0
    assert own["OnnxModel.run (inference/runtime.py)"] == 20.0
    assert not any("concurrent" in frame for frame in own)


def test_swap_phases_split_calls_by_start_time():
    calls = [Call(0.5, 0.010, "1", "OK"), Call(1.5, 0.020, "1", "OK")]
    calls += [Call(2.0 + i / 100, 0.001 * (i + 1), str(2 + i % 3), "OK") for i in range(99)]
    calls.append(Call(2.5, 0.3, "", "UNAVAILABLE"))
    steady, swaps = phase_summary(calls, 1.0, 2.0), phase_summary(calls, 2.0, 3.0)
    assert (steady["requests"], steady["errors"], steady["versions_seen"]) == (1, 0, ["1"])
    assert swaps["requests"] == 100 and swaps["error_codes"] == {"UNAVAILABLE": 1}
    assert swaps["versions_seen"] == ["2", "3", "4"]
    assert swaps["p99_ms"] < 100, "failed calls are counted as errors, not as latencies"


def test_mlserver_runs_without_parallel_workers_and_debug(tmp_path: Path):
    joblib_file = tmp_path / "model.joblib"
    folder = write_mlserver_folder(tmp_path / "ml", {"iris-lr": joblib_file}, True, 8080, 8081)
    settings = json.loads((folder / "settings.json").read_text())
    assert (settings["parallel_workers"], settings["debug"]) == (0, False)
    assert (settings["http_port"], settings["grpc_port"]) == (8080, 8081)
    model = json.loads((folder / "iris-lr" / "model-settings.json").read_text())
    assert model["implementation"] == "mlserver_sklearn.SKLearnModel"
    assert model["parameters"] == {"uri": str(joblib_file.resolve()), "version": "1"}
    assert (model["max_batch_size"], model["max_batch_time"]) == (32, 0.002)
    unbatched = write_mlserver_folder(tmp_path / "ml2", {"iris-lr": joblib_file}, False, 1, 2)
    assert "max_batch_size" not in json.loads(
        (unbatched / "iris-lr" / "model-settings.json").read_text()
    )


def test_mlserver_rest_body_is_an_oip_tensor():
    body = json.loads(mlserver_rest_body([[5.1, 3.5, 1.4, 0.2], [6.0, 2.2, 5.0, 1.5]]))
    assert body == {
        "inputs": [
            {
                "name": "input",
                "shape": [2, 4],
                "datatype": "FP32",
                "data": [5.1, 3.5, 1.4, 0.2, 6.0, 2.2, 5.0, 1.5],
            }
        ]
    }


def test_server_matrix_has_one_and_n_replicas_with_defaults_and_forced_batching():
    assert server_keys(Plan(replicas=3)) == [
        "ours-1r",
        "ours-1r-batch",
        "ours-3r",
        "ours-3r-batch",
        "baseline",
        "baseline-pinned",
    ]
    assert server_keys(Plan(peers=True, servers=["mlserver", "baseline"])) == [
        "baseline",
        "mlserver",
    ]


def test_cpu_meter_counts_a_process_tree():
    code = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'while True: pass'])"
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(100):
            if len(descendants([parent.pid])) == 2:
                break
            subprocess.run(["sleep", "0.05"], check=True)
        meter = CpuMeter({"server": [parent.pid]})
        subprocess.run(["sleep", "0.5"], check=True)
        used = meter.stop()["server"]
    finally:
        for pid in reversed(descendants([parent.pid])):
            subprocess.run(["kill", str(pid)], check=False)
        parent.wait()
    assert used > 0.1, "the busy grandchild's CPU is the server's"
