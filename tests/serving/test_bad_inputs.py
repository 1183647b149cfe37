"""The bad-input table: each malformed request gets its status code and a ``{"error": ...}`` body saying what was
allowed and what arrived, and the server still answers a good request right afterwards."""

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
from serving_helpers import MAX_PRODUCTS, MAX_TEXT_CHARS, binary_body, hop_body, image_bytes, png_bomb, tensor

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
    method: str = "POST"


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
    body, headers = hop_body(["Lampe"])
    return body[:-3], headers


def _hop(*args: object, **kwargs: object) -> Callable[[], tuple[bytes, dict[str, str]]]:
    return lambda: hop_body(*args, **kwargs)  # type: ignore[arg-type]


def _images(count: int, size: tuple[int, int]) -> Callable[[], tuple[bytes, dict[str, str]]]:
    return lambda: binary_body([("designation", np.array([b"Lampe"] * count, dtype=object)),
                                ("image", np.array([image_bytes(size, fmt="PNG")] * count, dtype=object))])


CLOUDEVENT = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "test", "ce-type": "predict",
              "content-type": "application/json"}
REPOSITORY_OFF = "the model repository API (load/unload) is off on this server; start it with " \
                 "--enable-model-repository"


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
    Case("not an image", "transformer", 400, "image of product 0: bytes are not an image (JPEG (MPO too), PNG, "
         "WebP, GIF or BMP)",
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
    Case("text over --max-text-chars", "transformer", 400,
         f"designation of product 0 has {MAX_TEXT_CHARS + 4} characters; allowed at most {MAX_TEXT_CHARS} "
         "(--max-text-chars)", json={"inputs": [designation("mot " * (MAX_TEXT_CHARS // 4 + 1))]}),
    Case("text at --max-text-chars", "transformer", 200, "", json={"inputs": [designation("mot " * 1250)]}),
    Case("products over --max-products", "transformer", 400,
         f"the request has {MAX_PRODUCTS + 1} products; allowed at most {MAX_PRODUCTS} per request (--max-products)",
         json={"inputs": [designation(*["Lampe"] * (MAX_PRODUCTS + 1))]}),
    Case("products at --max-products, sent to the predictor in chunks", "transformer", 200, "",
         json={"inputs": [designation(*["Lampe"] * MAX_PRODUCTS)]}),
    Case("pixels over --max-request-pixels", "transformer", 400,
         "the request's images have 3600000 pixels in all; allowed at most 3000000 per request "
         "(--max-request-pixels)", binary=_images(4, (1000, 900))),
    Case("no usable text and no image", "transformer", 400,
         "the predictor rejected the request: product 1 has no usable text (no word is left in its designation and "
         "description after cleaning) and no image", json={"inputs": [designation("Lampe", "<p></p>")]}),
    Case("punctuation only and no image", "transformer", 400, "product 0 has no usable text",
         json={"inputs": [designation("!!! ???")]}),
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
    Case("V1 binary CloudEvent without data", "transformer", 400, "the binary CloudEvent has no data", path=V1,
         body=b"", headers=CLOUDEVENT),
    # --- routes: every error body is {"error": ...}
    Case("unknown route", "transformer", 404, "Not Found: POST /v2/nothing", path="/v2/nothing", json={}),
    Case("wrong method", "transformer", 405, "Method Not Allowed: GET /v2/models/rakuten/infer", method="GET"),
    Case("openapi schema is off", "transformer", 404, "Not Found: GET /openapi.json", path="/openapi.json",
         method="GET"),
    Case("docs are off", "transformer", 404, "Not Found: GET /docs", path="/docs", method="GET"),
    Case("unload is off", "transformer", 404, REPOSITORY_OFF, path="/v2/repository/models/rakuten/unload"),
    Case("load is off", "transformer", 404, REPOSITORY_OFF, path="/v2/repository/models/rakuten/load"),
    Case("unknown model", "transformer", 404, "model 'other' is not served here; allowed: ['rakuten']",
         path="/v2/models/other/infer", json={"inputs": [designation("a")]}),
    Case("unknown version", "transformer", 404, "model 'rakuten' has no version '2'; allowed versions: ['1']",
         path="/v2/models/rakuten/versions/2/infer", json={"inputs": [designation("a")]}),
    # --- predictor: the hop contract
    Case("predictor: no contract version", "predictor", 400,
         "the request has no parameters.contract_version; this predictor speaks hop contract '2'",
         binary=_hop(["Lampe"], parameters={})),
    Case("predictor: other contract version", "predictor", 400,
         "hop contract mismatch: the request speaks contract_version '1', this predictor speaks '2'",
         binary=_hop(["Lampe"], parameters={"contract_version": "1"})),
    Case("predictor: token ids (contract 1)", "predictor", 400, "unknown input 'token_ids'",
         binary=lambda: binary_body([("token_ids", np.array([[3]], np.int64))], parameters={"contract_version": "2"})),
    Case("predictor: image not canonical", "predictor", 400, "input 'image': shape must be [B, 3, 256, 256] (the "
         "canonical transport form), got [1, 3, 32, 32]",
         binary=_hop(["Lampe"], None, np.zeros((1, 3, 32, 32), np.uint8))),
    Case("predictor: FP32 image", "predictor", 400, "input 'image': datatype must be UINT8, got FP32",
         binary=_hop(["Lampe"], None, np.zeros((1, 3, 256, 256), np.float32))),
    Case("predictor: mask without image", "predictor", 400, "no 'image' tensor was sent",
         binary=_hop(["Lampe"], None, None, np.array([True]))),
    Case("predictor: image rows disagree", "predictor", 400, "batch sizes disagree: designation has 2 rows, image "
         "has 1", binary=_hop(["Lampe", "Table"], None, np.zeros((1, 3, 256, 256), np.uint8))),
    Case("predictor: no usable text and no image", "predictor", 400, "product 0 has no usable text",
         binary=_hop(["<br/>"])),
    Case("predictor: products over its --max-products", "predictor", 400,
         "the request has 65 products; allowed at most 64 per request (--max-products)", binary=_hop(["a"] * 65)),
    Case("predictor empty batch", "predictor", 400, "the batch is empty",
         json={"inputs": [tensor("designation", "BYTES", [0], [])], "parameters": {"contract_version": "2"}}),
    Case("binary body cut short", "predictor", 400,
         "input 'designation': parameters.binary_data_size is 9 but only 6 binary bytes remain",
         binary=_short_binary),
    Case("V1 to the predictor", "predictor", 400, "speaks the V2 protocol only", path=V1,
         json={"instances": [[1, 2]]}),
    Case("predictor request too large", "predictor", 400, "the request body is too large",
         body=lambda: b"0" * 2_100_000),
    Case("predictor: unload is off", "predictor", 404, REPOSITORY_OFF, path="/v2/repository/models/rakuten/unload"),
    Case("predictor: wrong method", "predictor", 405, "Method Not Allowed: PUT /v2/models/rakuten/infer",
         method="PUT"),
]


def good_request(server: str) -> dict[str, Any]:
    if server == "transformer":
        return {"inputs": [designation("Lampe de chevet")]}
    return {"inputs": [designation("Lampe de chevet")], "parameters": {"contract_version": "2"}}


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
    response = httpx.request(case.method, url + case.path, content=content, headers=headers, timeout=60)
    assert response.status_code == case.status, response.text[:500]
    if case.status != 200:
        assert response.headers["content-type"].startswith("application/json")
        assert case.message in response.json()["error"], response.json()["error"]
    # ...and the server still answers.
    follow = httpx.post(url + INFER, json=good_request(case.server), timeout=60)
    assert follow.status_code == 200, follow.text[:300]


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 60
    assert {c.server for c in CASES} == {"transformer", "predictor"}
    assert len({c.id for c in CASES}) == len(CASES)

