"""`gateway.oip_rest` without a server: the rules of the OIP REST body and Triton's binary tensor
data that the gateway's tests over the wire do not reach one by one."""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import numpy as np
import orjson
import pytest

from gateway import oip_rest
from mlops_core.errors import InvalidInput, MessageTooLarge


def binary_body(inputs: list[dict], *chunks: bytes) -> tuple[bytes, str]:
    header = json.dumps({"inputs": inputs}).encode()
    return header + b"".join(chunks), str(len(header))


def test_bytes_tensors_json_and_binary_give_the_same_raw_contents():
    prefixed = b"".join(struct.pack("<I", len(s)) + s for s in (b"a", b"", "é".encode()))
    from_json = oip_rest.decode_infer_request(
        orjson.dumps(
            {"inputs": [{"name": "s", "shape": [3], "datatype": "BYTES", "data": ["a", "", "é"]}]}
        ),
        None,
    )
    tensor = {"name": "s", "shape": [3], "datatype": "BYTES"}
    body, length = binary_body(
        [{**tensor, "parameters": {"binary_data_size": len(prefixed)}}], prefixed
    )
    from_binary = oip_rest.decode_infer_request(body, length)
    assert from_json.inputs[0].raw_contents() == from_binary.inputs[0].raw_contents() == prefixed


def test_bytes_element_count_must_match_the_shape():
    prefixed = struct.pack("<I", 1) + b"a"
    tensor = {"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 5}}
    with pytest.raises(InvalidInput, match=r"1 BYTES elements .* expected 2"):
        oip_rest.decode_infer_request(*binary_body([tensor], prefixed))
    tensor["shape"] = [1]
    with pytest.raises(InvalidInput, match="runs past"):
        oip_rest.decode_infer_request(*binary_body([tensor], struct.pack("<I", 9) + b"a"))


def test_binary_inputs_are_read_in_order_without_a_copy_of_their_values():
    a, b = np.arange(4, dtype=np.float32), np.arange(3, dtype=np.int64)
    body, length = binary_body(
        [
            {
                "name": "a",
                "shape": [1, 4],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 16},
            },
            {
                "name": "b",
                "shape": [3],
                "datatype": "INT64",
                "parameters": {"binary_data_size": 24},
            },
        ],
        a.tobytes(),
        b.tobytes(),
    )
    request = oip_rest.decode_infer_request(body, length)
    first, second = (t.array for t in request.inputs)
    assert first is not None and second is not None
    np.testing.assert_array_equal(first, a.reshape(1, 4))
    np.testing.assert_array_equal(second, b)
    assert not first.flags.owndata  # a view of the body


@pytest.mark.parametrize(
    "tensor, message",
    [
        ({"datatype": "INT8", "data": [1, 300]}, r"outside INT8's range \[-128, 127\]"),
        ({"datatype": "BOOL", "data": [1, 0]}, "BOOL takes booleans"),
        ({"datatype": "FP32", "data": [True, False]}, "FP32 takes numbers"),
        ({"datatype": "FP32", "data": [1, None]}, "not numbers"),
        ({"datatype": "FP32", "shape": [2, -1], "data": [1, 2]}, "a shape is a list of sizes"),
        ({"datatype": "FP32", "shape": [True, 2], "data": [1, 2]}, "a shape is a list of sizes"),
        ({"datatype": "FP32", "data": None, "drop": "data"}, "neither data nor"),
        ({"datatype": "BF16", "data": [1, 2]}, "datatype 'BF16'"),
        ({"datatype": "BYTES", "data": [1, 2]}, "its data must be strings"),
    ],
)
def test_json_tensors_refused_with_a_message_naming_the_input(tensor: dict, message: str):
    item = {"name": "x", "shape": [2], **tensor}
    if item.pop("drop", None):
        del item["data"]
    with pytest.raises(InvalidInput, match=message) as caught:
        oip_rest.decode_infer_request(orjson.dumps({"inputs": [item]}), None)
    assert "'x'" in str(caught.value) or "BF16" in str(caught.value)


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"inputs": []}, "non-empty list"),
        ({"inputs": [{"name": "x"}], "id": 3}, "id must be a string"),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}
            | {"parameters": {"binary_data_output": "yes"}},
            "must be true or false",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}
            | {"outputs": [{"name": "y", "parameters": {"shared_memory_region": "r"}}]},
            "not supported",
        ),
        (
            {
                "inputs": [
                    {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
                    {"name": "x", "shape": [1], "datatype": "FP32", "data": [2]},
                ]
            },
            "repeat a name",
        ),
    ],
)
def test_request_shape_refused(payload: dict, message: str):
    with pytest.raises(InvalidInput, match=message):
        oip_rest.decode_infer_request(orjson.dumps(payload), None)


@pytest.mark.parametrize("length", ["abc", "-1", "999999"])
def test_a_header_length_past_the_body_is_refused(length: str):
    with pytest.raises(InvalidInput, match="Inference-Header-Content-Length"):
        oip_rest.decode_infer_request(b'{"inputs": []}', length)


def test_binary_outputs_per_output_over_the_request_default():
    request = oip_rest.decode_infer_request(
        orjson.dumps(
            {
                "id": "r",
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                "parameters": {"binary_data_output": True},
                "outputs": [{"name": "label", "parameters": {"binary_data": False}}, {"name": "p"}],
            }
        ),
        None,
    )
    label, p = np.array([2, 0]), np.float32([[0.25, 0.75], [1, 0]])
    body, length = oip_rest.encode_infer_response("m", "3", request, {"label": label, "p": p})
    assert length is not None
    header = orjson.loads(body[:length])
    assert header["id"] == "r" and header["model_version"] == "3"
    assert header["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [2], "data": [2, 0]},
        {"name": "p", "datatype": "FP32", "shape": [2, 2], "parameters": {"binary_data_size": 16}},
    ]
    assert body[length:] == p.tobytes()


def test_json_only_answers_have_no_header_length():
    request = oip_rest.InferRequest("", [])
    body, length = oip_rest.encode_infer_response("m", "1", request, {"v": np.float32([[0.5]])})
    assert length is None
    assert orjson.loads(body)["outputs"][0]["data"] == [0.5]


def test_compressed_bodies_are_inflated_within_the_limit():
    body = b'{"inputs": []}'
    assert oip_rest.decoded_body(gzip.compress(body), "gzip", 100) == body
    assert oip_rest.decoded_body(zlib.compress(body), "Deflate", 100) == body
    with pytest.raises(MessageTooLarge):
        oip_rest.decoded_body(gzip.compress(bytes(10_000)), "gzip", 1000)
    with pytest.raises(InvalidInput, match="not valid gzip"):
        oip_rest.decoded_body(body, "gzip", 100)
    with pytest.raises(InvalidInput, match="'br' is not supported"):
        oip_rest.decoded_body(body, "br", 100)
