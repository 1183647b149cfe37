"""Table tests of the V2 tensor ↔ numpy codec (MLServer ``codecs`` style): JSON data, binary data, whole requests."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest

from serving import codec

pytestmark = [pytest.mark.serving, pytest.mark.unit]


def _bytes_tensor(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


# ---- JSON data → numpy ---------------------------------------------------------------------------------------

JSON_OK: list[tuple[str, list[int], Any, np.ndarray]] = [
    ("BOOL", [2], [True, False], np.array([True, False])),
    ("UINT8", [2, 2], [[1, 2], [3, 4]], np.array([[1, 2], [3, 4]], np.uint8)),
    ("UINT8", [2, 2], [1, 2, 3, 255], np.array([[1, 2], [3, 255]], np.uint8)),
    ("INT8", [2], [-128, 127], np.array([-128, 127], np.int8)),
    ("INT64", [3], [-1, 0, 2**40], np.array([-1, 0, 2**40], np.int64)),
    ("UINT64", [1], [2**64 - 1], np.array([2**64 - 1], np.uint64)),
    ("FP32", [2], [1, 2.5], np.array([1.0, 2.5], np.float32)),
    ("FP16", [1], [0.5], np.array([0.5], np.float16)),
    ("FP64", [1, 1], [[1e300]], np.array([[1e300]], np.float64)),
    ("INT32", [0], [], np.zeros(0, np.int32)),
    ("INT32", [], [7], np.array(7, np.int32)),
    ("BYTES", [2], ["a", "é"], np.array([b"a", "é".encode()], dtype=object)),
    ("BYTES", [1, 2], [["a", "b"]], np.array([[b"a", b"b"]], dtype=object)),
    ("BYTES", [1], [""], np.array([b""], dtype=object)),
]


@pytest.mark.parametrize(("datatype", "shape", "data", "expected"), JSON_OK,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(JSON_OK)])
def test_from_json(datatype: str, shape: list[int], data: Any, expected: np.ndarray) -> None:
    out = codec.from_json("x", datatype, shape, data)
    assert out.dtype == expected.dtype
    assert out.shape == expected.shape
    assert out.tolist() == expected.tolist()


JSON_BAD: list[tuple[str, list[int], Any, str]] = [
    ("UINT8", [1], [256], "must lie in [0, 255], got [256, 256]"),
    ("INT8", [1], [-129], "must lie in [-128, 127]"),
    ("INT64", [2], [1, 1.5], "INT64 data must hold integers"),
    ("INT32", [1], ["1"], "INT32 data must hold integers"),
    ("BOOL", [1], [1], "BOOL data must hold true/false"),
    ("FP32", [2], [1.0, None], "FP32 data must hold numbers"),
    ("FP32", [1], [{"a": 1}], "FP32 data must hold numbers"),
    ("INT64", [3], [1, 2], "shape [3] holds 3 elements, got 2 values"),
    ("INT64", [2, 2], [[1], [2, 3]], "regular (non-ragged)"),
    ("BYTES", [1], [1], "BYTES data must hold strings, got int"),
    ("BYTES", [2], ["a"], "shape [2] holds 2 elements, got 1 values"),
    ("INT64", [1], "abc", "data must be a list, got str"),
    ("BYTES", [1], {"a": 1}, "data must be a list, got dict"),
]


@pytest.mark.parametrize(("datatype", "shape", "data", "message"), JSON_BAD,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(JSON_BAD)])
def test_from_json_rejects(datatype: str, shape: list[int], data: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        codec.from_json("x", datatype, shape, data)
    assert message in str(err.value)
    assert "input 'x'" in str(err.value)


# ---- binary data → numpy -------------------------------------------------------------------------------------

BINARY_OK: list[tuple[str, list[int], bytes, list[Any]]] = [
    ("INT64", [2], np.array([3, -4], "<i8").tobytes(), [3, -4]),
    ("UINT8", [1, 3], bytes([0, 128, 255]), [[0, 128, 255]]),
    ("BOOL", [3], bytes([1, 0, 2]), [True, False, True]),
    ("FP32", [1], np.array([0.25], "<f4").tobytes(), [0.25]),
    ("BYTES", [2], _bytes_tensor(b"\xff\xd8jpeg", b""), [b"\xff\xd8jpeg", b""]),
    ("BYTES", [0], b"", []),
]


@pytest.mark.parametrize(("datatype", "shape", "raw", "expected"), BINARY_OK,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(BINARY_OK)])
def test_from_binary(datatype: str, shape: list[int], raw: bytes, expected: list[Any]) -> None:
    out = codec.from_binary("x", datatype, shape, raw)
    assert list(out.shape) == shape
    assert out.tolist() == expected
    if datatype != "BYTES":
        assert out.dtype == codec.DATATYPES[datatype]


BINARY_BAD: list[tuple[str, list[int], bytes, str]] = [
    ("INT64", [2], b"\0" * 15, "needs 16 bytes, got 15"),
    ("UINT8", [2, 3], b"\0" * 7, "needs 6 bytes, got 7"),
    ("BYTES", [1], b"\x05\0", "4-byte length prefix was expected at offset 0, got 2 bytes"),
    ("BYTES", [1], struct.pack("<I", 10) + b"abc", "declares 10 bytes, only 3 remain"),
    ("BYTES", [2], _bytes_tensor(b"a"), "holds 2 elements, got 1 binary BYTES elements"),
]


@pytest.mark.parametrize(("datatype", "shape", "raw", "message"), BINARY_BAD,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(BINARY_BAD)])
def test_from_binary_rejects(datatype: str, shape: list[int], raw: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[")):
        codec.from_binary("x", datatype, shape, raw)


# ---- datatypes, outputs, inputs ------------------------------------------------------------------------------

@pytest.mark.parametrize(("array", "datatype"), [
    (np.zeros(1, bool), "BOOL"), (np.zeros(1, np.uint8), "UINT8"), (np.zeros(1, np.int64), "INT64"),
    (np.zeros(1, np.float32), "FP32"), (np.zeros(1, np.float16), "FP16"), (np.array([b"a"], dtype=object), "BYTES"),
    (np.array(["a"]), "BYTES"), (np.array([b"a"]), "BYTES")])
def test_datatype_of(array: np.ndarray, datatype: str) -> None:
    assert codec.datatype_of(array) == datatype


def test_datatype_of_rejects_complex() -> None:
    with pytest.raises(TypeError, match="no V2 datatype"):
        codec.datatype_of(np.zeros(1, np.complex64))


def test_to_output_encodes_str_arrays_as_bytes() -> None:
    out = codec.to_output("category", np.array(["Books", "Toys"]))
    assert (out.datatype, out.shape) == ("BYTES", [2])
    assert out.data.tolist() == [b"Books", b"Toys"]


@pytest.mark.parametrize("binary", [True, False])
def test_request_round_trip_through_kserve_serialisation(binary: bool) -> None:
    """Arrays → KServe's own REST serialisation (binary or JSON) → parse_request → the same arrays."""
    arrays = {"token_ids": np.array([[4, 5, 0], [7, 0, 0]], np.int64),
              "image": np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4),
              "image_mask": np.array([True, False])}
    request = InferRequest("rakuten", [codec.to_input(k, v, binary=binary) for k, v in arrays.items()],
                           request_id="abc")
    body, json_length = request.to_rest()
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    parsed = codec.parse_request(raw, None if json_length is None else str(json_length), "rakuten")
    assert parsed.id == "abc"
    for inp in parsed.inputs:
        assert codec.is_binary(inp) is binary
        np.testing.assert_array_equal(codec.to_numpy(inp), arrays[inp.name])


def test_to_numpy_accepts_kserve_inputs_of_every_form() -> None:
    ids = np.array([[1, 2]], np.int64)
    as_list = InferInput("token_ids", [1, 2], "INT64", data=[1, 2])
    as_raw = InferInput("token_ids", [1, 2], "INT64")
    as_raw.set_data_from_numpy(ids, binary_data=True)
    as_array = InferInput("token_ids", [1, 2], "INT64", data=ids)
    for inp in (as_list, as_raw, as_array):
        np.testing.assert_array_equal(codec.to_numpy(inp), ids)
    wrong = InferInput("token_ids", [1, 3], "INT64", data=ids)
    with pytest.raises(InvalidInput, match=r"declared shape \[1, 3\], got an array of shape \[1, 2\]"):
        codec.to_numpy(wrong)


# ---- whole requests ------------------------------------------------------------------------------------------

def _json(doc: Any) -> bytes:
    return orjson.dumps(doc)


GOOD_INPUT = {"name": "a", "datatype": "INT64", "shape": [1], "data": [1]}

REQUEST_BAD: list[tuple[bytes, str | None, str]] = [
    (b"", None, "the request body is empty"),
    (b"{nope", None, "the request body is not valid JSON"),
    (b"[1, 2]", None, "must be a JSON object with an 'inputs' list, got list"),
    (_json({}), None, "'inputs' must be a list of tensors, got NoneType"),
    (_json({"inputs": {"a": 1}}), None, "'inputs' must be a list of tensors, got dict"),
    (_json({"inputs": [1]}), None, "inputs[0] must be an object"),
    (_json({"inputs": [{"datatype": "INT64", "shape": [1], "data": [1]}]}), None, "inputs[0].name must be"),
    (_json({"inputs": [{**GOOD_INPUT, "datatype": "INT128"}]}), None, "datatype must be one of"),
    (_json({"inputs": [{**GOOD_INPUT, "shape": [-1]}]}), None, "shape must be a list of at most 8 non-negative"),
    (_json({"inputs": [{**GOOD_INPUT, "shape": "1"}]}), None, "shape must be a list"),
    (_json({"inputs": [{**GOOD_INPUT, "shape": [1] * 9}]}), None, "at most 8"),
    (_json({"inputs": [{"name": "a", "datatype": "INT64", "shape": [1]}]}), None, "'data' is missing"),
    (_json({"inputs": [{**GOOD_INPUT, "parameters": {"binary_data_size": 8}}]}), None, "has both 'data' and"),
    (_json({"inputs": [{**GOOD_INPUT, "parameters": []}]}), None, "parameters must be an object"),
    (_json({"inputs": [GOOD_INPUT, GOOD_INPUT]}), None, "appears more than once"),
    (_json({"inputs": [], "id": 5}), None, "'id' must be a string"),
    (_json({"inputs": [], "parameters": [1]}), None, "'parameters' must be an object"),
    (_json({"inputs": [], "outputs": "x"}), None, "'outputs' must be a list"),
    (_json({"inputs": [], "outputs": [{"x": 1}]}), None, "outputs[0] must be an object with a non-empty string"),
    (_json({"inputs": []}), "abc", "inference-header-content-length must be an integer"),
    (_json({"inputs": []}), "9999", "inference-header-content-length must lie in [1,"),
    (_json({"inputs": []}) + b"xx", None, "not valid JSON"),
]


@pytest.mark.parametrize(("body", "header", "message"), REQUEST_BAD, ids=range(len(REQUEST_BAD)))
def test_parse_request_rejects(body: bytes, header: str | None, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        codec.parse_request(body, header, "rakuten")
    assert message in str(err.value)


def _binary_request(size: int, payload: bytes) -> tuple[bytes, str]:
    header = _json({"inputs": [{"name": "a", "datatype": "UINT8", "shape": [2],
                                "parameters": {"binary_data_size": size}}]})
    return header + payload, str(len(header))


@pytest.mark.parametrize(("size", "payload", "message"), [
    (2, b"\1", "parameters.binary_data_size is 2 but only 1 binary bytes remain"),
    (2, b"\1\2\3", "1 bytes after its declared binary tensors"),
    (-1, b"", "binary_data_size must be a non-negative integer"),
    (3, b"\1\2\3", "needs 2 bytes, got 3"),
])
def test_parse_request_rejects_inconsistent_binary(size: int, payload: bytes, message: str) -> None:
    body, header = _binary_request(size, payload)
    with pytest.raises(InvalidInput, match=message):
        codec.parse_request(body, header, "rakuten")


def test_parse_request_keeps_binary_arrays_zero_copy() -> None:
    body, header = _binary_request(2, bytes([7, 9]))
    request = codec.parse_request(body, header, "rakuten")
    array = codec.to_numpy(request.inputs[0])
    assert array.tolist() == [7, 9]
    assert not array.flags.owndata  # a view of the body, not a Python list


ALLOWED = {"designation": "BYTES", "image": "BYTES"}


@pytest.mark.parametrize(("inputs", "message"), [
    ([InferInput("title", [1], "BYTES", data=["x"])], "unknown input 'title'; allowed inputs: designation (BYTES)"),
    ([InferInput("image", [1], "BYTES", data=["x"])], "input 'designation' is required"),
    ([InferInput("designation", [1], "INT64", data=[1])], "datatype must be BYTES, got INT64"),
])
def test_find_inputs_rejects(inputs: list[InferInput], message: str) -> None:
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        codec.find_inputs(InferRequest("m", inputs), ALLOWED, required=("designation",))


def test_check_requested_outputs() -> None:
    from kserve.protocol.infer_type import RequestedOutput

    request = InferRequest("m", [], request_outputs=[RequestedOutput("nope")])
    with pytest.raises(InvalidInput, match=r"unknown output 'nope'; allowed outputs: \['a'\]"):
        codec.check_requested_outputs(request, ["a"])
