"""The servers we compare against: Seldon MLServer 1.7.1 (sklearn runtime, in its own venv, on
the very joblib files our ONNX models came from) and the minimal grpcio + onnxruntime server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import sklearn

from benchmarks.processes import REPO_ROOT, ManagedProcess, free_port, http_ok, port_open
from benchmarks.servers import ServerGroup

MLSERVER_VENV = REPO_ROOT / ".bench-venvs" / "mlserver"
MLSERVER_PACKAGES = [
    "mlserver==1.7.1",
    "mlserver-sklearn==1.7.1",
    # NOTE: uvloop 0.23 crashes MLServer's parallel workers at start (the pitfall);
    # pinned even though we run it with parallel_workers=0, so a reader can switch them on.
    "uvloop==0.21.0",
    # The joblib pickles load only into the scikit-learn that wrote them.
    f"scikit-learn=={sklearn.__version__}",
]
ADAPTIVE_BATCHING = {"max_batch_size": 32, "max_batch_time": 0.002}


def ensure_mlserver_venv(venv: Path = MLSERVER_VENV) -> Path:
    """`venv`/bin/mlserver, creating the venv (uv when our venv has it, else pip) if needed."""
    mlserver = venv / "bin" / "mlserver"
    marker = venv / "bench-packages.txt"
    wanted = "\n".join(MLSERVER_PACKAGES)
    if mlserver.exists() and marker.exists() and marker.read_text() == wanted:
        return mlserver
    print(f"creating {venv} with {' '.join(MLSERVER_PACKAGES)}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    # NOTE: the folder ignores itself, so no project-wide .gitignore needs to know about it.
    (venv.parent / ".gitignore").write_text("*\n")
    uv = Path(sys.executable).parent / "uv"
    if uv.exists():
        install = [str(uv), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python")]
    else:
        install = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*install, *MLSERVER_PACKAGES], check=True)
    marker.write_text(wanted)
    return mlserver


def write_mlserver_folder(
    folder: Path, joblib_files: dict[str, Path], batching: bool, http_port: int, grpc_port: int
) -> Path:
    """settings.json and one model-settings.json per model; `joblib_files` maps name -> file."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "debug": False,  # default true: an access log line per request
        "parallel_workers": 0,  # >= 1 halves throughput on two cores (the figures)
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": free_port(),
        "metrics_dir": str(folder / "metrics"),
        "load_models_at_startup": True,
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    for name, path in joblib_files.items():
        model_dir = folder / name
        model_dir.mkdir(exist_ok=True)
        model_settings = {
            "name": name,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": str(path.resolve()), "version": "1"},
            **(ADAPTIVE_BATCHING if batching else {}),
        }
        (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    return folder


def start_mlserver(
    mlserver: Path, workdir: Path, joblib_files: dict[str, Path], batching: bool
) -> ServerGroup:
    http_port, grpc_port = free_port(), free_port()
    name = "mlserver-batch" if batching else "mlserver"
    folder = write_mlserver_folder(workdir / name, joblib_files, batching, http_port, grpc_port)
    proc = ManagedProcess(
        name, [str(mlserver), "start", str(folder)], workdir / "logs", cwd=folder
    ).start()
    url = f"http://127.0.0.1:{http_port}"
    group = ServerGroup(name, f"127.0.0.1:{grpc_port}", url, {"mlserver": [proc]})
    try:
        proc.wait_until(
            lambda: _models_ready(url, joblib_files) and port_open(grpc_port), 120, "models ready"
        )
    except Exception:
        group.stop()
        raise
    return group


def _models_ready(url: str, names: dict[str, Path]) -> bool:
    return http_ok(f"{url}/v2/health/ready") and all(
        http_ok(f"{url}/v2/models/{name}/ready") for name in names
    )


def start_baseline(repository: Path, workdir: Path, pinned: bool = False) -> ServerGroup:
    """The minimal server; `pinned` runs it under `taskset` on one CPU, as ours run."""
    port = free_port()
    name = "baseline-pinned" if pinned else "baseline"
    proc = ManagedProcess(
        name,
        [
            *(["taskset", "-c", str(min(os.sched_getaffinity(0)))] if pinned else []),
            sys.executable,
            "-m",
            "benchmarks.baseline_server",
            *("--model-repository", str(repository), "--port", str(port)),
        ],
        workdir / "logs",
    ).start()
    group = ServerGroup(name, f"127.0.0.1:{port}", None, {"baseline": [proc]})
    try:
        proc.wait_until(lambda: port_open(port), 60, "gRPC port open")
    except Exception:
        group.stop()
        raise
    return group


def mlserver_rest_body(rows: list[list[float]]) -> str:
    """An Open Inference Protocol v2 REST request for `/v2/models/<name>/infer` (MLServer's,
    and the gateway's)."""
    flat = [value for row in rows for value in row]
    tensor = {"name": "input", "shape": [len(rows), len(rows[0])], "datatype": "FP32"}
    return json.dumps({"inputs": [{**tensor, "data": flat}]})
