"""Run tritonclient.grpc in its own process (its stubs and ours cannot share one process).

Usage: python -m tests.support.triton_probe '<json>' with
{"url": "127.0.0.1:50051", "model": "iris", "version": "", "rows": [[...], ...],
 "datatype": "FP32", "input": "input", "headers": {"authorization": "Bearer ..."},
 "metadata": true}; prints JSON with metadata (unless "metadata" is false) and outputs.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def main() -> None:
    spec = json.loads(sys.argv[1])
    client = grpcclient.InferenceServerClient(url=spec["url"])
    version = spec.get("version", "")
    headers = spec.get("headers")
    result: dict[str, object] = {
        "live": client.is_server_live(headers=headers),
        "ready": client.is_server_ready(headers=headers),
        "model_ready": client.is_model_ready(spec["model"], version, headers=headers),
    }
    try:
        if spec.get("metadata", True):
            result["metadata"] = client.get_model_metadata(
                spec["model"], version, headers=headers, as_json=True
            )
        rows = np.asarray(spec["rows"], dtype=spec.get("dtype", "float32"))
        infer_input = grpcclient.InferInput(
            spec.get("input", "input"), list(rows.shape), spec.get("datatype", "FP32")
        )
        infer_input.set_data_from_numpy(rows)
        response = client.infer(
            spec["model"], [infer_input], model_version=version, headers=headers
        )
        raw = response.get_response(as_json=True)
        result["model_version"] = raw["model_version"]
        result["outputs"] = {
            o["name"]: response.as_numpy(o["name"]).tolist() for o in raw["outputs"]
        }
    except InferenceServerException as exc:
        result["error"] = {"status": exc.status(), "message": exc.message()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
