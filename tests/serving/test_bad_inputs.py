"""The bad-input table: each malformed request gets its status code and a message saying what was allowed and what
arrived, and the server still answers a good request right afterwards."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
from serving_helpers import binary_body, image_bytes, png_bomb, tensor

pytestmark = [pytest.mark.serving, pytest.mark.integration]

INFER = "/v2/models/rakuten/infer"
V1 = "/v1/models/rakuten:predict"


@dataclass
class Case:
    id: str
    server: str  # "transformer" | "predictor"
    status: int
    message: str
    json: Any = None
    body: bytes | Callable[[], bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    path: str = INFER
    binary: Callable[[], tuple[bytes, dict[str, str]]] | None = None


def designation(*values: str) -> dict[str, Any]:
    return tensor("designation", "BYTES", [len(values)], list(values))


def _truncated_jpeg() -> tuple[bytes, dict[str, str]]:
    return binary_body([("designation", np.array([b"Lampe"], dtype=object)),
                        ("image", np.array([image_bytes((400, 300))[:600]], dtype=object))])


def _bomb(side: int) -> Callable[[], tuple[bytes, dict[str, str]]]:
    return lambda: binary_body([("designation", np.array([b"Lampe"], dtype=object)),
                                ("image", np.array([png_bomb(side, side)], dtype=object))])


def _big_image() -> tuple[bytes, dict[str, str]]:  # 1.2 M pixels > the servers' --max-image-pixels 1 000 000
    return binary_body([("designation", np.array([b"Lampe"], dtype=object)),
                        ("image", np.array([image_bytes((1200, 1000), fmt="PNG")], dtype=object))])


def _truncated_bytes_prefix() -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": "designation", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": 2}}]}).encode()
    return header + b"\x05\x00", {"inference-header-content-length": str(len(header))}


def _short_binary() -> tuple[bytes, dict[str, str]]:
    body, headers = binary_body([("token_ids", np.array([[3, 4]], np.int64))])
    return body[:-3], headers


def _predictor_ids(ids: np.ndarray, **more: np.ndarray) -> Callable[[], tuple[bytes, dict[str, str]]]:
    return lambda: binary_body([("token_ids", ids), *more.items()])


CASES = [
    # --- transformer: the product inputs
    Case("missing designation", "transformer", 400, "input 'designation' is required; allowed inputs: designation "
         "(BYTES), description (BYTES), image (BYTES); got ['description']",
         json={"inputs": [tensor("description", "BYTES", [1], ["x"])]}),
    Case("designation INT64", "transformer", 400, "input 'designation': datatype must be BYTES, got INT64",
         json={"inputs": [tensor("designation", "INT64", [1], [1])]}),
    Case("designation 2-D", "transformer", 400, "input 'designation': shape must be [B] (or [B, 1]), got [1, 2]",
         json={"inputs": [tensor("designation", "BYTES", [1, 2], ["a", "b"])]}),
    Case("shape vs data", "transformer", 400, "shape [2] holds 2 elements, got 1 values",
         json={"inputs": [tensor("designation", "BYTES", [2], ["a"])]}),
    Case("batch sizes disagree", "transformer", 400,
         "batch sizes disagree: designation has 2 rows, description has 1; allowed: the same B for every input",
         json={"inputs": [designation("a", "b"), tensor("description", "BYTES", [1], ["x"])]}),
    Case("empty batch", "transformer", 400, "the batch is empty: 0 products were sent; allowed: at least 1",
         json={"inputs": [tensor("designation", "BYTES", [0], [])]}),
    Case("blank designation", "transformer", 400, "designation of product 1 is empty",
         json={"inputs": [designation("ok", "   ")]}),
    Case("unknown input", "transformer", 400, "unknown input 'title'; allowed inputs: designation",
         json={"inputs": [designation("a"), tensor("title", "BYTES", [1], ["b"])]}),
    Case("unknown output", "transformer", 400,
         "unknown output 'label'; allowed outputs: ['prdtypecode', 'category', 'probabilities']",
         json={"inputs": [designation("a")], "outputs": [{"name": "label"}]}),
    Case("duplicate input", "transformer", 400, "input 'designation' appears more than once",
         json={"inputs": [designation("a"), designation("b")]}),
    Case("bad base64", "transformer", 400, "image of product 0 is not valid base64",
         json={"inputs": [designation("a"), tensor("image", "BYTES", [1], ["%%%not-base64%%%"])]}),
    Case("not an image", "transformer", 400, "image of product 0: bytes are not a JPEG or PNG image",
         json={"inputs": [designation("a"), tensor("image", "BYTES", [1],
                                                   [base64.b64encode(b"plain text, not pixels").decode()])]}),
    Case("truncated JPEG", "transformer", 400, "image of product 0: image could not be decoded (truncated or corrupt)",
         binary=_truncated_jpeg),
    Case("decompression bomb (Pillow's guard)", "transformer", 400,
         "image of product 0: image is too large (decompression bomb guard)", binary=_bomb(50_000)),
    Case("decompression bomb (--max-image-pixels)", "transformer", 400,
         "image of product 0: image has 5000x5000 pixels; at most 1000000 allowed", binary=_bomb(5000)),
    Case("over --max-image-pixels", "transformer", 400, "image has 1200x1000 pixels; at most 1000000 allowed",
         binary=_big_image),
    Case("long text is truncated, not rejected", "transformer", 200, "",
         json={"inputs": [designation("mot " * 200_000)]}),
    # --- transformer: the request body
    Case("request over --max-request-bytes", "transformer", 400,
         "the request body is too large: allowed at most 2000000 bytes (--max-request-bytes), got 3000",
         body=lambda: b"x" * 3_000_000),
    Case("gzip over the limit once inflated", "transformer", 400, "too large once decompressed",
         body=lambda: gzip.compress(b" " * 2_500_000), headers={"content-encoding": "gzip"}),
    Case("corrupt gzip", "transformer", 400, "the gzip request body cannot be decompressed",
         body=b"\x1f\x8bnot really gzip", headers={"content-encoding": "gzip"}),
    Case("unsupported encoding", "transformer", 400,
         "Content-Encoding 'br' is not supported; allowed: identity, gzip, deflate", body=b"{}",
         headers={"content-encoding": "br"}),
    Case("not JSON", "transformer", 400, "the request body is not valid JSON", body=b"designation=lampe"),
    Case("empty body", "transformer", 400, "the request body is empty", body=b""),
    Case("JSON array body", "transformer", 400, "must be a JSON object with an 'inputs' list, got list", json=[1]),
    Case("inputs not a list", "transformer", 400, "'inputs' must be a list of tensors, got dict",
         json={"inputs": {"designation": "a"}}),
    Case("empty inputs", "transformer", 400, "input 'designation' is required", json={"inputs": []}),
    Case("unknown datatype", "transformer", 400, "datatype must be one of", json={"inputs": [
        tensor("designation", "STRING", [1], ["a"])]}),
    Case("negative dim", "transformer", 400, "shape must be a list of at most 8 non-negative integers",
         json={"inputs": [tensor("designation", "BYTES", [-1], ["a"])]}),
    Case("id not a string", "transformer", 400, "'id' must be a string, got int",
         json={"id": 42, "inputs": [designation("a")]}),
    Case("header length past the body", "transformer", 400, "inference-header-content-length must lie in [1,",
         body=b'{"inputs": []}', headers={"inference-header-content-length": "999"}),
    Case("binary BYTES prefix truncated", "transformer", 400,
         "input 'designation': binary BYTES data is truncated: a 4-byte length prefix was expected",
         binary=_truncated_bytes_prefix),
    Case("V1 unknown key", "transformer", 400,
         "instance 0 has unknown keys ['title']; allowed keys: ['designation', 'description', 'image']",
         path=V1, json={"instances": [{"designation": "a", "title": "b"}]}),
    Case("V1 not JSON", "transformer", 400, "Unrecognized request format", path=V1, body=b"{nope",
         headers={"content-type": "application/json"}),
    Case("V1 bad base64", "transformer", 400, "image of product 0 is not valid base64", path=V1,
         json={"instances": [{"designation": "a", "image": "@@@"}]}),
    Case("V1 without instances", "transformer", 400, 'the V1 request must be {"instances"', path=V1,
         json={"inputs": []}),
    Case("unknown model", "transformer", 404, "model 'other' is not served here; allowed: ['rakuten']",
         path="/v2/models/other/infer", json={"inputs": [designation("a")]}),
    Case("unknown version", "transformer", 404, "model 'rakuten' has no version '2'; allowed versions: ['1']",
         path="/v2/models/rakuten/versions/2/infer", json={"inputs": [designation("a")]}),
    # --- predictor: the tensor contract
    Case("ids outside the vocabulary", "predictor", 400, "input 'token_ids': ids must lie in [0,",
         binary=_predictor_ids(np.array([[10**9]], np.int64))),
    Case("wrong image size", "predictor", 400, "input 'image': shape must be [B, 3, 32, 32] (the bundle's image "
         "size), got [1, 3, 64, 64]",
         binary=_predictor_ids(np.array([[3]], np.int64), image=np.zeros((1, 3, 64, 64), np.uint8))),
    Case("FP32 image", "predictor", 400, "input 'image': datatype must be UINT8, got FP32",
         binary=_predictor_ids(np.array([[3]], np.int64), image=np.zeros((1, 3, 32, 32), np.float32))),
    Case("mask without image", "predictor", 400, "no 'image' tensor was sent",
         binary=_predictor_ids(np.array([[3]], np.int64), image_mask=np.array([True]))),
    Case("image rows disagree", "predictor", 400, "batch sizes disagree: token_ids has 2 rows, image has 1",
         binary=_predictor_ids(np.array([[3], [4]], np.int64), image=np.zeros((1, 3, 32, 32), np.uint8))),
    Case("predictor empty batch", "predictor", 400, "the batch is empty",
         json={"inputs": [tensor("token_ids", "INT64", [0, 1], [])]}),
    Case("token_ids as floats", "predictor", 400, "INT64 data must hold integers",
         json={"inputs": [tensor("token_ids", "INT64", [1, 2], [1.5, 2])]}),
    Case("binary body cut short", "predictor", 400,
         "input 'token_ids': parameters.binary_data_size is 16 but only 13 binary bytes remain", binary=_short_binary),
    Case("V1 to the predictor", "predictor", 400, "speaks the V2 protocol only", path=V1,
         json={"instances": [[1, 2]]}),
    Case("predictor request too large", "predictor", 400, "the request body is too large",
         body=lambda: b"0" * 2_100_000),
]


def good_request(server: str) -> dict[str, Any]:
    if server == "transformer":
        return {"inputs": [designation("Lampe de chevet")]}
    return {"inputs": [tensor("token_ids", "INT64", [1, 2], [3, 4])]}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(f"{case.server}_url")
    headers = dict(case.headers)
    if case.binary is not None:
        content, extra = case.binary()
        headers.update(extra)
    elif case.json is not None:
        content, headers["content-type"] = json.dumps(case.json).encode(), "application/json"
    else:
        content = case.body() if callable(case.body) else (case.body or b"")
    response = httpx.post(url + case.path, content=content, headers=headers, timeout=60)
    assert response.status_code == case.status, response.text[:500]
    if case.status != 200:
        assert response.headers["content-type"].startswith("application/json")
        assert case.message in response.json()["error"], response.json()["error"]
    # ...and the server still answers.
    follow = httpx.post(url + INFER, json=good_request(case.server), timeout=60)
    assert follow.status_code == 200, follow.text[:300]


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 30
    assert {c.server for c in CASES} == {"transformer", "predictor"}
    assert len({c.id for c in CASES}) == len(CASES)

