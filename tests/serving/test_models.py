"""Server-direct tests: the predictor and transformer ``kserve.Model``s called in-process on ``InferRequest``s.

The transformer talks to a real in-process predictor through an ``httpx.MockTransport`` that decodes the wire
bytes exactly as the predictor's HTTP route does, so the transformer → predictor hop is exercised byte for byte.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse, RequestedOutput
from serving_helpers import image_bytes

from rakuten_mm.bundle import Classifier, load_bundle
from rakuten_mm.errors import RakutenError
from serving import codec
from serving.errors import PredictorUnavailable
from serving.predictor import PredictorSettings, RakutenPredictor
from serving.transformer import RakutenTransformer, TransformerSettings

pytestmark = [pytest.mark.serving, pytest.mark.unit]


@pytest.fixture(scope="module")
def classifier(serving_bundle: Path) -> Classifier:
    return load_bundle(serving_bundle)


@pytest.fixture(scope="module")
def predictor(serving_bundle: Path) -> RakutenPredictor:
    model = RakutenPredictor("rakuten", PredictorSettings(model_dir=str(serving_bundle), device="cpu",
                                                          max_batch_size=8, max_batch_delay_ms=20))
    assert not model.ready
    assert model.load() and model.ready
    return model


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def call(model: Any, request: Any) -> Any:
    async def go() -> Any:
        response, _ = await model(request, headers={})
        return response

    return run(go())


def predictor_request(ids: np.ndarray, images: np.ndarray | None = None, mask: np.ndarray | None = None,
                      binary: bool = True, **kwargs: Any) -> InferRequest:
    inputs = [codec.to_input("token_ids", ids, binary)]
    if images is not None:
        inputs.append(codec.to_input("image", images, binary))
    if mask is not None:
        inputs.append(codec.to_input("image_mask", mask, binary))
    return InferRequest("rakuten", inputs, **kwargs)


def outputs(response: InferResponse) -> dict[str, np.ndarray]:
    return {out.name: out.as_numpy() if not isinstance(out.data, np.ndarray) else out.data
            for out in response.outputs}


@pytest.fixture(scope="module")
def tensors(classifier: Classifier) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = classifier.pre.encode_text(["console de jeux portable", "livre de cuisine", "x"],
                                     ["", "<p>recettes&nbsp;faciles</p>", ""])
    images, mask = classifier.pre.encode_images([image_bytes(), None, image_bytes(fmt="PNG", color=(0, 0, 255))])
    return ids, images, mask


# ---- predictor ----------------------------------------------------------------------------------------------------

def test_predictor_metadata_describes_the_tensor_contract(predictor: RakutenPredictor) -> None:
    assert predictor.get_input_types() == [
        {"name": "token_ids", "datatype": "INT64", "shape": [-1, -1]},
        {"name": "image", "datatype": "UINT8", "shape": [-1, 3, 32, 32]},
        {"name": "image_mask", "datatype": "BOOL", "shape": [-1]}]
    assert predictor.get_output_types()[0] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 27]}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_predictor_matches_the_in_process_classifier(predictor: RakutenPredictor, classifier: Classifier,
                                                     tensors: tuple[np.ndarray, ...], binary: bool) -> None:
    ids, images, mask = tensors
    response = call(predictor, predictor_request(ids, images, mask, binary=binary, request_id="req-1"))
    assert response.id == "req-1"
    out = outputs(response)
    expected = classifier.predict_tensors(ids, images, mask)
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-5, atol=1e-6)
    assert out["probabilities"].dtype == np.float32
    assert out["prdtypecode"].tolist() == [classifier.labels.codes[i] for i in expected.argmax(1)]


def test_predictor_without_image_tensor_answers_with_text(predictor: RakutenPredictor, classifier: Classifier,
                                                          tensors: tuple[np.ndarray, ...]) -> None:
    ids = tensors[0]
    out = outputs(call(predictor, predictor_request(ids)))
    np.testing.assert_allclose(out["probabilities"], classifier.predict_tensors(ids), rtol=1e-5, atol=1e-6)


def test_predictor_image_without_mask_counts_every_row_present(predictor: RakutenPredictor, classifier: Classifier,
                                                               tensors: tuple[np.ndarray, ...]) -> None:
    ids, images, _ = tensors
    out = outputs(call(predictor, predictor_request(ids, images)))
    expected = classifier.predict_tensors(ids, images, np.ones(len(ids), bool))
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-5, atol=1e-6)


def test_predictor_truncates_token_ids_longer_than_the_bundle_limit(predictor: RakutenPredictor,
                                                                     classifier: Classifier) -> None:
    limit = classifier.pre.cleaning.max_tokens
    ids = np.random.default_rng(0).integers(2, len(classifier.pre.vocab), size=(2, limit + 40))
    out = outputs(call(predictor, predictor_request(ids)))
    np.testing.assert_allclose(out["probabilities"], classifier.predict_tensors(ids[:, :limit]), rtol=1e-5,
                               atol=1e-6)


def test_concurrent_requests_are_batched_with_the_same_results(predictor: RakutenPredictor, classifier: Classifier,
                                                               tensors: tuple[np.ndarray, ...]) -> None:
    """Requests of different lengths merged into one forward give each the result it gets alone."""
    ids, images, mask = tensors
    requests = [(ids[i:i + 1, : 1 + i * 3], images[i:i + 1], mask[i:i + 1]) for i in range(3)]
    requests += [(ids[:2], None, None), (ids, images, mask)]

    async def go() -> list[Any]:
        return list(await asyncio.gather(*(predictor(predictor_request(*r), headers={}) for r in requests)))

    before = predictor.batcher.run  # type: ignore[union-attr]
    calls: list[int] = []

    def counting(batches: list[Any]) -> list[np.ndarray]:
        calls.append(len(batches))
        return before(batches)

    predictor.batcher.run = counting  # type: ignore[union-attr]
    try:
        results = run(go())
    finally:
        predictor.batcher.run = before  # type: ignore[union-attr]
    assert max(calls) > 1, f"expected merged batches, got batch sizes {calls}"
    for (r_ids, r_images, r_mask), (response, _) in zip(requests, results, strict=True):
        expected = classifier.predict_tensors(r_ids, r_images, r_mask)
        np.testing.assert_allclose(outputs(response)["probabilities"], expected, rtol=1e-5, atol=1e-6)


def test_predictor_honours_requested_outputs(predictor: RakutenPredictor, tensors: tuple[np.ndarray, ...]) -> None:
    request = predictor_request(tensors[0], request_outputs=[RequestedOutput("prdtypecode")])
    body, _ = call(predictor, request).to_rest()
    assert [o["name"] for o in body["outputs"]] == ["prdtypecode"]


PREDICTOR_BAD: list[tuple[str, Callable[[np.ndarray, np.ndarray, np.ndarray], list[InferInput]], str]] = [
    ("no token_ids", lambda i, im, m: [codec.to_input("image", im)], "input 'token_ids' is required"),
    ("1-D token_ids", lambda i, im, m: [codec.to_input("token_ids", i[0])], "shape must be [B, L]"),
    ("FP32 token_ids", lambda i, im, m: [codec.to_input("token_ids", i.astype(np.float32))],
     "datatype must be INT64, got FP32"),
    ("ids outside vocab", lambda i, im, m: [codec.to_input("token_ids", i + 10**9)], "ids must lie in [0,"),
    ("negative ids", lambda i, im, m: [codec.to_input("token_ids", -i - 1)], "ids must lie in [0,"),
    ("empty batch", lambda i, im, m: [codec.to_input("token_ids", i[:0])], "the batch is empty"),
    ("image size", lambda i, im, m: [codec.to_input("token_ids", i), codec.to_input("image", im[:, :, :16])],
     "shape must be [B, 3, 32, 32]"),
    ("image rows", lambda i, im, m: [codec.to_input("token_ids", i), codec.to_input("image", im[:2])],
     "batch sizes disagree: token_ids has 3 rows, image has 2"),
    ("mask rows", lambda i, im, m: [codec.to_input("token_ids", i), codec.to_input("image_mask", m[:1])],
     "batch sizes disagree"),
    ("mask without image", lambda i, im, m: [codec.to_input("token_ids", i), codec.to_input("image_mask", m)],
     "no 'image' tensor was sent"),
    ("FP32 image", lambda i, im, m: [codec.to_input("token_ids", i), codec.to_input("image", im / 255.0)],
     "datatype must be UINT8, got FP64"),
    ("unknown input", lambda i, im, m: [codec.to_input("token_ids", i), codec.to_input("pixels", im)],
     "unknown input 'pixels'"),
]


@pytest.mark.parametrize(("case", "build", "message"), PREDICTOR_BAD, ids=[c[0] for c in PREDICTOR_BAD])
def test_predictor_rejects_bad_tensors(predictor: RakutenPredictor, tensors: tuple[np.ndarray, ...], case: str,
                                       build: Callable[..., list[InferInput]], message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        call(predictor, InferRequest("rakuten", build(*tensors)))
    assert message in str(err.value)


def test_predictor_refuses_v1_payloads(predictor: RakutenPredictor) -> None:
    with pytest.raises(InvalidInput, match="V2 protocol only"):
        call(predictor, {"instances": [[1, 2]]})


def test_predictor_fails_to_load_a_missing_bundle(tmp_path: Path) -> None:
    model = RakutenPredictor("rakuten", PredictorSettings(model_dir=str(tmp_path / "nothing")))
    with pytest.raises(RakutenError):
        model.load()
    assert not model.ready


@pytest.mark.integration
def test_predictor_loads_a_bundle_from_s3(serving_bundle: Path, s3_bucket: str) -> None:
    from rakuten_mm import storage

    storage.upload_dir(serving_bundle, f"s3://{s3_bucket}/bundles/v1", last="manifest.json")
    model = RakutenPredictor("rakuten", PredictorSettings(model_dir=f"s3://{s3_bucket}/bundles/v1"))
    assert model.load() and model.ready
    assert model.get_input_types()[1]["shape"] == [-1, 3, 32, 32]


# ---- transformer with an in-process predictor ---------------------------------------------------------------------

class PredictorHop:
    """An httpx transport that decodes the transformer's request like the predictor's route, and answers with
    the real predictor; it records what crossed the hop."""

    def __init__(self, predictor: RakutenPredictor) -> None:
        self.predictor = predictor
        self.requests: list[tuple[httpx.Request, InferRequest]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        infer = codec.parse_request(body, request.headers.get("inference-header-content-length"), "rakuten")
        self.requests.append((request, infer))
        response, _ = await self.predictor(infer, headers=dict(request.headers))
        content, json_length = response.to_rest()
        if json_length is None:
            return httpx.Response(200, json=content)
        return httpx.Response(200, content=content, headers={"inference-header-content-length": str(json_length)})


def transformer_for(bundle: Path, handler: Callable[[httpx.Request], Any], **settings: Any) -> RakutenTransformer:
    model = RakutenTransformer("rakuten", TransformerSettings(predictor_host="predictor.test:80",
                                                              model_dir=str(bundle), **settings),
                               transport=httpx.MockTransport(handler))
    assert model.load() and model.ready
    return model


def bytes_input(name: str, values: list[bytes] | list[str], binary: bool = True) -> InferInput:
    return codec.to_input(name, np.array(values, dtype=object), binary)


def test_transformer_end_to_end_matches_the_core(serving_bundle: Path, predictor: RakutenPredictor,
                                                 classifier: Classifier) -> None:
    hop = PredictorHop(predictor)
    transformer = transformer_for(serving_bundle, hop)
    designations = ["Console de jeux portable", "Livre de cuisine", "Chaise de jardin"]
    descriptions = ["", "<p>Recettes&nbsp;faciles</p>", ""]
    images = [image_bytes(), b"", image_bytes(fmt="PNG", color=(0, 0, 255))]
    request = InferRequest("rakuten", [bytes_input("designation", [d.encode() for d in designations]),
                                       bytes_input("description", [d.encode() for d in descriptions]),
                                       bytes_input("image", images)], request_id="client-7")
    response = call(transformer, request)
    assert response.id == "client-7"
    out = outputs(response)
    ids = classifier.pre.encode_text(designations, descriptions)
    pixels, mask = classifier.pre.encode_images([b or None for b in images])
    expected = classifier.predict_tensors(ids, pixels, mask)
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-5, atol=1e-6)
    best = expected.argmax(1)
    assert out["prdtypecode"].tolist() == [classifier.labels.codes[i] for i in best]
    assert [c.decode() for c in out["category"]] == [classifier.labels.names[i] for i in best]
    # The hop: binary tensors, uint8 pixels, an explicit mask.
    wire, sent = hop.requests[-1]
    assert "inference-header-content-length" in wire.headers
    shapes = {i.name: (i.datatype, list(codec.to_numpy(i).shape)) for i in sent.inputs}
    assert shapes == {"token_ids": ("INT64", list(ids.shape)), "image": ("UINT8", [3, 3, 32, 32]),
                      "image_mask": ("BOOL", [3])}
    assert all(codec.is_binary(i) for i in sent.inputs)
    run(transformer.aclose())


def test_transformer_json_base64_images_equal_binary_images(serving_bundle: Path,
                                                            predictor: RakutenPredictor) -> None:
    transformer = transformer_for(serving_bundle, PredictorHop(predictor))
    jpeg = image_bytes()
    as_binary = InferRequest("rakuten", [bytes_input("designation", [b"Lampe", b"Table"]),
                                         bytes_input("image", [jpeg, b""])])
    as_json = InferRequest("rakuten", [bytes_input("designation", ["Lampe", "Table"], binary=False),
                                       bytes_input("image", ["data:image/jpeg;base64,"
                                                             + base64.b64encode(jpeg).decode(), ""], binary=False)])
    a, b = outputs(call(transformer, as_binary)), outputs(call(transformer, as_json))
    np.testing.assert_array_equal(a["probabilities"], b["probabilities"])


def test_transformer_without_images_sends_token_ids_only(serving_bundle: Path, predictor: RakutenPredictor) -> None:
    hop = PredictorHop(predictor)
    transformer = transformer_for(serving_bundle, hop)
    request = InferRequest("rakuten", [codec.to_input("designation", np.array([[b"Peluche lapin"]], dtype=object))])
    out = outputs(call(transformer, request))
    assert out["probabilities"].shape == (1, 27)
    assert [i.name for i in hop.requests[-1][1].inputs] == ["token_ids"]


def test_transformer_v1_instances(serving_bundle: Path, predictor: RakutenPredictor) -> None:
    transformer = transformer_for(serving_bundle, PredictorHop(predictor))
    body = {"instances": [{"designation": "Peluche lapin", "description": None},
                          {"designation": "Lampe", "image": base64.b64encode(image_bytes()).decode()}]}
    result = call(transformer, body)
    assert set(result) == {"predictions"} and len(result["predictions"]) == 2
    for pred in result["predictions"]:
        assert set(pred) == {"prdtypecode", "category", "probability"}
        assert 0 < pred["probability"] <= 1 and isinstance(pred["prdtypecode"], int)


def test_transformer_truncates_long_text(serving_bundle: Path, predictor: RakutenPredictor) -> None:
    hop = PredictorHop(predictor)
    transformer = transformer_for(serving_bundle, hop, max_text_chars=50)
    request = InferRequest("rakuten", [bytes_input("designation", [("mot " * 100_000).encode()])])
    assert outputs(call(transformer, request))["prdtypecode"].shape == (1,)
    ids = codec.to_numpy(hop.requests[-1][1].inputs[0])
    assert 0 < ids.shape[1] <= 13  # 50 characters hold at most 13 "mot " tokens


@pytest.mark.parametrize(("answer", "error", "message"), [
    (httpx.ConnectError("refused"), PredictorUnavailable, "is unreachable (ConnectError"),
    (httpx.ReadTimeout("slow"), PredictorUnavailable, "did not answer within"),
    (httpx.Response(503, json={"error": "Model with name rakuten is not ready."}), PredictorUnavailable,
     "is not ready to serve model 'rakuten' (HTTP 503"),
    (httpx.Response(404, json={"error": "no such model"}), PredictorUnavailable, "HTTP 404: no such model"),
    (httpx.Response(400, json={"error": "bad token ids"}), InvalidInput, "the predictor rejected the request: bad"),
    (httpx.Response(500, text="oops"), InferenceError, "failed with HTTP 500"),
    (httpx.Response(200, json={"model_name": "rakuten", "id": "1", "outputs": [
        {"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 0.5]}]}),
     InferenceError, "do predictor and transformer load the same bundle?"),
    (httpx.Response(200, content=b"not json", headers={"inference-header-content-length": "8"}), InferenceError,
     "answered an unreadable V2 response"),
], ids=["connect", "timeout", "503", "404", "400", "500", "wrong-classes", "unreadable"])
def test_transformer_maps_predictor_failures(serving_bundle: Path, answer: Any, error: type[Exception],
                                             message: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(answer, Exception):
            raise answer
        return answer

    transformer = transformer_for(serving_bundle, handler, predictor_timeout_s=1.0)
    with pytest.raises(error) as err:
        call(transformer, InferRequest("rakuten", [bytes_input("designation", [b"Lampe"])]))
    assert message in str(err.value)


TRANSFORMER_BAD: list[tuple[str, Callable[[], Any], str]] = [
    ("no designation", lambda: InferRequest("rakuten", [bytes_input("description", [b"x"])]),
     "input 'designation' is required; allowed inputs: designation (BYTES), description (BYTES), image (BYTES)"),
    ("empty designation", lambda: InferRequest("rakuten", [bytes_input("designation", [b"ok", b"  "])]),
     "designation of product 1 is empty"),
    ("bad base64", lambda: InferRequest("rakuten", [bytes_input("designation", ["a"], False),
                                                    bytes_input("image", ["not base64!"], False)]),
     "image of product 0 is not valid base64"),
    ("not an image", lambda: InferRequest("rakuten", [bytes_input("designation", [b"a"]),
                                                      bytes_input("image", [b"GIF? no, text"])]),
     "image of product 0: bytes are not a JPEG or PNG image"),
    ("truncated jpeg", lambda: InferRequest("rakuten", [bytes_input("designation", [b"a"]),
                                                        bytes_input("image", [image_bytes((300, 300))[:400]])]),
     "image of product 0: image could not be decoded (truncated or corrupt)"),
    ("2-D designation", lambda: InferRequest("rakuten", [codec.to_input("designation",
                                                                        np.array([[b"a", b"b"]], dtype=object))]),
     "shape must be [B] (or [B, 1]), got [1, 2]"),
    ("v1 not a list", lambda: {"instances": "x"}, 'the V1 request must be {"instances"'),
    ("v1 unknown key", lambda: {"instances": [{"designation": "a", "title": "b"}]},
     "instance 0 has unknown keys ['title']; allowed keys: ['designation', 'description', 'image']"),
    ("v1 no designation", lambda: {"instances": [{"description": "b"}]}, "instance 0: 'designation' is required"),
    ("v1 empty", lambda: {"instances": []}, "the batch is empty: 0 products were sent"),
]


@pytest.mark.parametrize(("case", "build", "message"), TRANSFORMER_BAD, ids=[c[0] for c in TRANSFORMER_BAD])
def test_transformer_rejects_bad_products(serving_bundle: Path, case: str, build: Callable[[], Any],
                                          message: str) -> None:
    def never(request: httpx.Request) -> httpx.Response:
        raise AssertionError("a bad request must not reach the predictor")

    transformer = transformer_for(serving_bundle, never)
    with pytest.raises(InvalidInput) as err:
        call(transformer, build())
    assert message in str(err.value)


def test_transformer_rejects_images_over_the_pixel_limit(serving_bundle: Path) -> None:
    transformer = transformer_for(serving_bundle, lambda r: httpx.Response(500), max_image_pixels=100 * 100)
    request = InferRequest("rakuten", [bytes_input("designation", [b"a"]),
                                       bytes_input("image", [image_bytes((200, 100))])])
    with pytest.raises(InvalidInput, match="image of product 0: image has 200x100 pixels; at most 10000 allowed"):
        call(transformer, request)
