"""The minimal peer: a synchronous grpcio server calling onnxruntime, nothing else.

`python -m benchmarks.baseline_server --model-repository DIR --port P` serves every
`<model>/<version>/model.onnx` under DIR (its newest version) through ModelInfer with raw
tensors: no batching, no metrics, no version routing; the floor our server is measured against.
"""

from __future__ import annotations

import argparse
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

from mlops_core.protocol import open_inference_pb2 as pb
from mlops_core.protocol import open_inference_pb2_grpc as pb_grpc
from mlops_core.signature import NUMPY_TO_OIP, OIP_TO_NUMPY


def load_sessions(root: Path) -> dict[str, ort.InferenceSession]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    sessions = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        newest = max(
            (p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        )
        sessions[model_dir.name] = ort.InferenceSession(
            str(newest / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
    return sessions


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, sessions: dict[str, ort.InferenceSession]) -> None:
        self.sessions = sessions

    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> object:
        session = self.sessions.get(request.model_name)
        if session is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.model_name!r}")
        feeds = {
            tensor.name: np.frombuffer(raw, dtype=OIP_TO_NUMPY[tensor.datatype]).reshape(
                tuple(tensor.shape)
            )
            for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        names = [o.name for o in session.get_outputs()]
        results = session.run(names, feeds)
        response = pb.ModelInferResponse(
            model_name=request.model_name, model_version="1", id=request.id
        )
        for name, array in zip(names, results, strict=True):
            array = np.ascontiguousarray(array)
            response.outputs.add(
                name=name, datatype=NUMPY_TO_OIP[array.dtype], shape=list(array.shape)
            )
            response.raw_output_contents.append(array.tobytes())
        return response


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.baseline_server")
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.threads))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        Servicer(load_sessions(args.model_repository)), server
    )
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    stopped.wait()
    server.stop(1)


if __name__ == "__main__":
    main()
