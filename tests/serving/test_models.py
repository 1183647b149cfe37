"""Server-direct tests: the predictor and transformer ``kserve.Model``s called in-process on ``InferRequest``s.

The transformer talks to a real in-process predictor through an ``httpx.MockTransport`` that decodes the wire
bytes exactly as the predictor's HTTP route does, so the transformer → predictor hop is exercised byte for byte.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse, RequestedOutput
from PIL import Image
from serving_helpers import hop_inputs, hop_request, image_bytes

from rakuten_mm.errors import RakutenError
from rakuten_mm.image import canonical_images
from rakuten_mm.model import Classifier, load_bundle
from serving import codec, contract
from serving.errors import PredictorTimeout, PredictorUnavailable
from serving.predictor import RakutenPredictor
from serving.settings import PredictorSettings, TransformerSettings
from serving.transformer import RakutenTransformer

pytestmark = [pytest.mark.serving, pytest.mark.unit]

DESIGNATIONS = ["console de jeux portable", "livre de cuisine", "chaise"]
DESCRIPTIONS = ["", "<p>recettes&nbsp;faciles</p>", ""]


@pytest.fixture(scope="module")
def classifier(serving_bundle: Path) -> Classifier:
    return load_bundle(serving_bundle)


@pytest.fixture(scope="module")
def predictor(serving_bundle: Path) -> RakutenPredictor:
    model = RakutenPredictor("rakuten", PredictorSettings(model_dir=str(serving_bundle), device="cpu",
                                                          max_batch_size=8, max_batch_delay_ms=20, max_products=10,
                                                          max_text_chars=1000))
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


def outputs(response: InferResponse) -> dict[str, np.ndarray]:
    return {out.name: out.as_numpy() if not isinstance(out.data, np.ndarray) else out.data
            for out in response.outputs}


@pytest.fixture(scope="module")
def canonical() -> tuple[np.ndarray, np.ndarray]:
    return canonical_images([image_bytes(), None, image_bytes(fmt="PNG", color=(0, 0, 255))])


# ---- predictor ----------------------------------------------------------------------------------------------------

def test_predictor_metadata_describes_the_hop_contract(predictor: RakutenPredictor) -> None:
    assert predictor.get_input_types() == [
        {"name": "designation", "datatype": "BYTES", "shape": [-1]},
        {"name": "description", "datatype": "BYTES", "shape": [-1]},
        {"name": "image", "datatype": "UINT8", "shape": [-1, 3, 256, 256]},
        {"name": "image_mask", "datatype": "BOOL", "shape": [-1]}]
    assert predictor.get_output_types() == contract.output_types()
    assert contract.output_types()[2] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 27]}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_predictor_matches_the_in_process_classifier(predictor: RakutenPredictor, classifier: Classifier,
                                                     canonical: tuple[np.ndarray, np.ndarray], binary: bool) -> None:
    images, mask = canonical
    response = call(predictor, hop_request(DESIGNATIONS, DESCRIPTIONS, images, mask, binary=binary,
                                           request_id="req-1"))
    assert response.id == "req-1"
    out = outputs(response)
    expected = classifier.predict_raw(DESIGNATIONS, DESCRIPTIONS, images, mask)
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-5, atol=1e-6)
    assert out["probabilities"].dtype == np.float32
    best = expected.argmax(1)
    assert out["prdtypecode"].tolist() == [classifier.labels.codes[i] for i in best]
    assert [c.decode() if isinstance(c, bytes) else c for c in out["category"]] == \
        [classifier.labels.names[i] for i in best]


def test_predictor_without_image_tensor_answers_with_text(predictor: RakutenPredictor,
                                                          classifier: Classifier) -> None:
    out = outputs(call(predictor, hop_request(DESIGNATIONS)))
    np.testing.assert_allclose(out["probabilities"], classifier.predict_raw(DESIGNATIONS), rtol=1e-5, atol=1e-6)


def test_predictor_image_without_mask_counts_every_row_present(predictor: RakutenPredictor, classifier: Classifier,
                                                               canonical: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = canonical
    out = outputs(call(predictor, hop_request(DESIGNATIONS, None, images)))
    expected = classifier.predict_raw(DESIGNATIONS, None, images, np.ones(3, bool))
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-5, atol=1e-6)


def test_concurrent_requests_are_batched_with_the_same_results(predictor: RakutenPredictor, classifier: Classifier,
                                                               canonical: tuple[np.ndarray, np.ndarray]) -> None:
    """Requests of different lengths merged into one forward give each the result it gets alone."""
    images, mask = canonical
    texts = ["lampe", "lampe de chevet en laiton", "jeu de cartes pour enfants de huit ans et plus"]
    requests: list[tuple[Any, ...]] = [([texts[i]], None, images[i:i + 1], mask[i:i + 1]) for i in range(3)]
    requests += [(texts[:2], None, None, None), (texts, DESCRIPTIONS, images, mask)]

    async def go() -> list[Any]:
        return list(await asyncio.gather(*(predictor(hop_request(*r), headers={}) for r in requests)))

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
    for r, (response, _) in zip(requests, results, strict=True):
        np.testing.assert_allclose(outputs(response)["probabilities"], classifier.predict_raw(*r), rtol=1e-5,
                                   atol=1e-6)


def test_predictor_honours_requested_outputs(predictor: RakutenPredictor) -> None:
    request = hop_request(DESIGNATIONS, request_outputs=[RequestedOutput("prdtypecode")])
    body, _ = call(predictor, request).to_rest()
    assert [o["name"] for o in body["outputs"]] == ["prdtypecode"]


def _hop(*args: Any, **kwargs: Any) -> Callable[[tuple[np.ndarray, np.ndarray]], InferRequest]:
    return lambda c: hop_request(*args, **kwargs)


def _with(build: Callable[[np.ndarray, np.ndarray], list[InferInput]], **kwargs: Any
          ) -> Callable[[tuple[np.ndarray, np.ndarray]], InferRequest]:
    return lambda c: InferRequest("rakuten", build(*c), parameters=kwargs.get("parameters",
                                                                              contract.hop_parameters(0)))


PREDICTOR_BAD: list[tuple[str, Callable[[tuple[np.ndarray, np.ndarray]], InferRequest], str]] = [
    ("no designation", _with(lambda im, m: [codec.to_input("image", im)]), "input 'designation' is required"),
    ("token ids (contract 1)", _with(lambda im, m: [codec.to_input("token_ids", np.ones((1, 2), np.int64))]),
     "unknown input 'token_ids'; allowed inputs: designation (BYTES), description (BYTES), image (UINT8), "
     "image_mask (BOOL)"),
    ("no contract version", _hop(["a"], parameters={}),
     "the request has no parameters.contract_version; this predictor speaks hop contract '2'"),
    ("other contract version", _hop(["a"], parameters={"contract_version": "1"}),
     "hop contract mismatch: the request speaks contract_version '1', this predictor speaks '2'"),
    ("bad first_product", _hop(["a"], parameters={"contract_version": "2", "first_product": -1}),
     "parameters.first_product must be a non-negative integer, got -1"),
    ("empty batch", _hop([]), "the batch is empty: 0 products were sent"),
    ("too many products", _hop(["lampe"] * 11),
     "the request has 11 products; allowed at most 10 per request (--max-products)"),
    ("text too long", _hop(["lampe", "x" * 1001]),
     "designation of product 1 has 1001 characters; allowed at most 1000 (--max-text-chars)"),
    ("no usable text, no image", _hop(["lampe", "<p></p>"]),
     "product 1 has no usable text (no word is left in its designation and description after cleaning) and no "
     "image"),
    ("punctuation only", _hop(["!!! ???"], parameters={"contract_version": "2", "first_product": 40}),
     "product 40 has no usable text"),
    ("image not canonical", _with(lambda im, m: hop_inputs(DESIGNATIONS, None, im[:, :, :32, :32])),
     "input 'image': shape must be [B, 3, 256, 256] (the canonical transport form), got [3, 3, 32, 32]"),
    ("image rows", _with(lambda im, m: hop_inputs(DESIGNATIONS, None, im[:2])),
     "batch sizes disagree: designation has 3 rows, image has 2"),
    ("description rows", _hop(DESIGNATIONS, ["a"]), "batch sizes disagree: designation has 3 rows, description has 1"),
    ("mask rows", _with(lambda im, m: hop_inputs(DESIGNATIONS, None, im, m[:1])), "batch sizes disagree"),
    ("mask without image", _with(lambda im, m: hop_inputs(DESIGNATIONS, None, None, m)),
     "no 'image' tensor was sent"),
    ("FP32 image", _with(lambda im, m: [*hop_inputs(DESIGNATIONS), codec.to_input("image", im / 255.0)]),
     "datatype must be UINT8, got FP64"),
    ("unknown input", _with(lambda im, m: [*hop_inputs(DESIGNATIONS), codec.to_input("pixels", im)]),
     "unknown input 'pixels'"),
]


@pytest.mark.parametrize(("case", "build", "message"), PREDICTOR_BAD, ids=[c[0] for c in PREDICTOR_BAD])
def test_predictor_rejects_bad_tensors(predictor: RakutenPredictor, canonical: tuple[np.ndarray, np.ndarray],
                                       case: str, build: Callable[..., InferRequest], message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        call(predictor, build(canonical))
    assert message in str(err.value)


def test_no_usable_text_with_an_image_is_answered(predictor: RakutenPredictor,
                                                  canonical: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = canonical
    out = outputs(call(predictor, hop_request(["<p></p>"], None, images[:1], np.array([True]))))
    assert out["probabilities"].shape == (1, 27)


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
    assert model.classifier is not None and model.classifier.pre.image_preset.size == 32


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
        try:
            response, _ = await self.predictor(infer, headers=dict(request.headers))
        except InvalidInput as exc:
            return httpx.Response(400, json={"error": str(exc)})
        content, json_length = response.to_rest()
        if json_length is None:
            return httpx.Response(200, json=content)
        return httpx.Response(200, content=content, headers={"inference-header-content-length": str(json_length)})


def transformer_for(handler: Callable[[httpx.Request], Any], **settings: Any) -> RakutenTransformer:
    model = RakutenTransformer("rakuten", TransformerSettings(predictor_host="predictor.test:80", **settings),
                               transport=httpx.MockTransport(handler))
    assert model.load() and model.ready
    return model


def bytes_input(name: str, values: list[bytes] | list[str], binary: bool = True) -> InferInput:
    return codec.to_input(name, np.array(values, dtype=object), binary)


def test_transformer_needs_no_bundle_and_describes_the_client_contract() -> None:
    transformer = transformer_for(lambda r: httpx.Response(500))
    assert transformer.get_input_types() == [{"name": n, "datatype": "BYTES", "shape": [-1]}
                                             for n in ("designation", "description", "image")]
    assert transformer.get_output_types() == contract.output_types()


def test_transformer_end_to_end_matches_the_core(predictor: RakutenPredictor, classifier: Classifier) -> None:
    hop = PredictorHop(predictor)
    transformer = transformer_for(hop)
    designations = ["Console de jeux portable", "Livre de cuisine", "Chaise de jardin"]
    descriptions = ["", "<p>Recettes&nbsp;faciles</p>", ""]
    images = [image_bytes(), b"", image_bytes(fmt="PNG", color=(0, 0, 255))]
    request = InferRequest("rakuten", [bytes_input("designation", [d.encode() for d in designations]),
                                       bytes_input("description", [d.encode() for d in descriptions]),
                                       bytes_input("image", images)], request_id="client-7")
    response = call(transformer, request)
    assert response.id == "client-7"
    out = outputs(response)
    pixels, mask = canonical_images([b or None for b in images])
    expected = classifier.predict_raw(designations, descriptions, pixels, mask)
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-5, atol=1e-6)
    best = expected.argmax(1)
    assert out["prdtypecode"].tolist() == [classifier.labels.codes[i] for i in best]
    assert [c.decode() for c in out["category"]] == [classifier.labels.names[i] for i in best]
    # The hop: binary tensors, raw text, canonical uint8 pixels, an explicit mask, the contract version.
    wire, sent = hop.requests[-1]
    assert "inference-header-content-length" in wire.headers
    shapes = {i.name: (i.datatype, list(codec.to_numpy(i).shape)) for i in sent.inputs}
    assert shapes == {"designation": ("BYTES", [3]), "description": ("BYTES", [3]),
                      "image": ("UINT8", [3, 3, 256, 256]), "image_mask": ("BOOL", [3])}
    assert codec.to_numpy(sent.inputs[1]).tolist() == [d.encode() for d in descriptions]  # text unchanged
    assert sent.parameters["contract_version"] == "2"
    assert all(codec.is_binary(i) for i in sent.inputs)
    run(transformer.aclose())


def test_transformer_splits_large_requests_into_hop_chunks(predictor: RakutenPredictor,
                                                          classifier: Classifier) -> None:
    hop = PredictorHop(predictor)
    transformer = transformer_for(hop, hop_products=4, max_products=30)
    designations = [f"produit numero {i} lampe" for i in range(10)]
    images = [image_bytes(color=(i * 20, 0, 0)) if i % 3 == 0 else b"" for i in range(10)]
    request = InferRequest("rakuten", [bytes_input("designation", [d.encode() for d in designations]),
                                       bytes_input("image", images)])
    out = outputs(call(transformer, request))
    assert [len(codec.to_numpy(r.inputs[0])) for _, r in hop.requests[-3:]] == [4, 4, 2]
    assert [r.parameters["first_product"] for _, r in hop.requests[-3:]] == [0, 4, 8]
    pixels, mask = canonical_images([b or None for b in images])
    np.testing.assert_allclose(out["probabilities"], classifier.predict_raw(designations, None, pixels, mask),
                               rtol=1e-5, atol=1e-6)


def test_a_predictor_error_names_the_clients_row(predictor: RakutenPredictor) -> None:
    transformer = transformer_for(PredictorHop(predictor), hop_products=2)
    request = InferRequest("rakuten", [bytes_input("designation", [b"lampe", b"table", b"chaise", b"<br>"])])
    with pytest.raises(InvalidInput, match="the predictor rejected the request: product 3 has no usable text"):
        call(transformer, request)


def test_transformer_json_base64_images_equal_binary_images(predictor: RakutenPredictor) -> None:
    transformer = transformer_for(PredictorHop(predictor))
    jpeg = image_bytes()
    as_binary = InferRequest("rakuten", [bytes_input("designation", [b"Lampe", b"Table"]),
                                         bytes_input("image", [jpeg, b""])])
    as_json = InferRequest("rakuten", [bytes_input("designation", ["Lampe", "Table"], binary=False),
                                       bytes_input("image", ["data:image/jpeg;base64,"
                                                             + base64.b64encode(jpeg).decode(), ""], binary=False)])
    a, b = outputs(call(transformer, as_binary)), outputs(call(transformer, as_json))
    np.testing.assert_array_equal(a["probabilities"], b["probabilities"])


def test_transformer_without_images_sends_text_only(predictor: RakutenPredictor) -> None:
    hop = PredictorHop(predictor)
    transformer = transformer_for(hop)
    request = InferRequest("rakuten", [codec.to_input("designation", np.array([[b"Peluche lapin"]], dtype=object))])
    out = outputs(call(transformer, request))
    assert out["probabilities"].shape == (1, 27)
    assert [i.name for i in hop.requests[-1][1].inputs] == ["designation", "description"]


def test_transformer_v1_probability_is_the_predicted_class_probability(predictor: RakutenPredictor) -> None:
    transformer = transformer_for(PredictorHop(predictor))
    body = {"instances": [{"designation": "Peluche lapin", "description": None},
                          {"designation": "Lampe", "image": base64.b64encode(image_bytes()).decode()}]}
    result = call(transformer, body)
    v2 = outputs(call(transformer, InferRequest("rakuten", [
        bytes_input("designation", [b"Peluche lapin", b"Lampe"]), bytes_input("image", [b"", image_bytes()])])))
    assert set(result) == {"predictions"} and len(result["predictions"]) == 2
    for pred, probs, code in zip(result["predictions"], v2["probabilities"], v2["prdtypecode"], strict=True):
        assert set(pred) == {"prdtypecode", "category", "probability"}
        assert pred["prdtypecode"] == int(code) and isinstance(pred["prdtypecode"], int)
        assert pred["probability"] == pytest.approx(float(probs.max()), rel=1e-6)
        assert pred["probability"] > float(probs.min())


def _image_file(image: Image.Image, fmt: str, **save: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _image_file(Image.new("RGB", (80, 40), (200, 30, 40)), "JPEG", exif=exif)


USER_IMAGES = {
    "MPO (phone JPEG)": lambda: _image_file(Image.new("RGB", (64, 48), (250, 10, 10)), "MPO", save_all=True,
                                            append_images=[Image.new("RGB", (64, 48), (0, 0, 250))]),
    "EXIF-rotated JPEG": _exif_rotated,
    "16-bit greyscale PNG": lambda: _image_file(
        Image.fromarray(np.linspace(0, 65535, 48 * 64).astype(np.uint16).reshape(48, 64)), "PNG"),
}


@pytest.mark.parametrize("kind", list(USER_IMAGES))
def test_images_users_send_are_decoded_like_the_core(predictor: RakutenPredictor, classifier: Classifier,
                                                     kind: str) -> None:
    data = USER_IMAGES[kind]()
    transformer = transformer_for(PredictorHop(predictor))
    out = outputs(call(transformer, InferRequest("rakuten", [bytes_input("designation", [b"Lampe"]),
                                                             bytes_input("image", [data])])))
    pixels, mask = canonical_images([data])
    np.testing.assert_allclose(out["probabilities"], classifier.predict_raw(["Lampe"], None, pixels, mask),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("answer", "error", "message"), [
    (httpx.ConnectError("refused"), PredictorUnavailable, "is unreachable (ConnectError"),
    (httpx.ReadTimeout("slow"), PredictorTimeout, "did not answer within 1 s"),
    (httpx.Response(503, json={"error": "Model with name rakuten is not ready."}), PredictorUnavailable,
     "is not ready to serve model 'rakuten' (HTTP 503"),
    (httpx.Response(404, json={"error": "no such model"}), PredictorUnavailable, "HTTP 404: no such model"),
    (httpx.Response(400, json={"error": "bad text"}), InvalidInput, "the predictor rejected the request: bad"),
    (httpx.Response(500, text="oops"), InferenceError, "failed with HTTP 500"),
    (httpx.Response(200, json={"model_name": "rakuten", "id": "1", "outputs": [
        {"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 0.5]}]}),
     InferenceError, "the predictor's response has no 'prdtypecode' output"),
    (httpx.Response(200, content=b"not json", headers={"inference-header-content-length": "8"}), InferenceError,
     "answered an unreadable V2 response"),
], ids=["connect", "timeout", "503", "404", "400", "500", "missing-output", "unreadable"])
def test_transformer_maps_predictor_failures(answer: Any, error: type[Exception], message: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(answer, Exception):
            raise answer
        return answer

    transformer = transformer_for(handler, predictor_timeout_s=1.0)
    with pytest.raises(error) as err:
        call(transformer, InferRequest("rakuten", [bytes_input("designation", [b"Lampe"])]))
    assert message in str(err.value)


def test_a_wedged_predictor_times_out_within_the_hop_timeout() -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(60)
        raise AssertionError("unreachable")

    transformer = transformer_for(never, predictor_timeout_s=0.3)

    async def go() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(PredictorTimeout, match="did not answer within 0.3 s"):
            await transformer(InferRequest("rakuten", [bytes_input("designation", [b"Lampe"])]), headers={})
        return loop.time() - start

    assert run(go()) < 2.0


TRANSFORMER_BAD: list[tuple[str, Callable[[], Any], str]] = [
    ("no designation", lambda: InferRequest("rakuten", [bytes_input("description", [b"x"])]),
     "input 'designation' is required; allowed inputs: designation (BYTES), description (BYTES), image (BYTES)"),
    ("empty designation", lambda: InferRequest("rakuten", [bytes_input("designation", [b"ok", b"  "])]),
     "designation of product 1 is empty"),
    ("too many products", lambda: InferRequest("rakuten", [bytes_input("designation", [b"a"] * 6)]),
     "the request has 6 products; allowed at most 5 per request (--max-products)"),
    ("description too long", lambda: InferRequest("rakuten", [bytes_input("designation", [b"a", b"b"]),
                                                              bytes_input("description", [b"", "é".encode() * 101])]),
     "description of product 1 has 101 characters; allowed at most 100 (--max-text-chars)"),
    ("too many pixels per request", lambda: InferRequest("rakuten", [
        bytes_input("designation", [b"a", b"b"]), bytes_input("image", [image_bytes((100, 60))] * 2)]),
     "the request's images have 12000 pixels in all; allowed at most 10000 per request (--max-request-pixels)"),
    ("over the pixel limit", lambda: InferRequest("rakuten", [bytes_input("designation", [b"a"]),
                                                              bytes_input("image", [image_bytes((200, 60))])]),
     "image of product 0: image has 200x60 pixels; at most 9000 allowed"),
    ("bad base64", lambda: InferRequest("rakuten", [bytes_input("designation", ["a"], False),
                                                    bytes_input("image", ["not base64!"], False)]),
     "image of product 0 is not valid base64"),
    ("not an image", lambda: InferRequest("rakuten", [bytes_input("designation", [b"a"]),
                                                      bytes_input("image", [b"GIF? no, text"])]),
     "image of product 0: bytes are not an image (JPEG (MPO too), PNG, WebP, GIF or BMP)"),
    ("TIFF", lambda: InferRequest("rakuten", [bytes_input("designation", [b"a"]),
                                              bytes_input("image", [image_bytes((8, 8), fmt="TIFF")])]),
     "image of product 0: image format must be JPEG (MPO too), PNG, WebP, GIF or BMP, got TIFF"),
    ("truncated jpeg", lambda: InferRequest("rakuten", [bytes_input("designation", [b"a"]),
                                                        bytes_input("image", [image_bytes((90, 90))[:400]])]),
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
def test_transformer_rejects_bad_products(case: str, build: Callable[[], Any], message: str) -> None:
    def never(request: httpx.Request) -> httpx.Response:
        raise AssertionError("a bad request must not reach the predictor")

    transformer = transformer_for(never, max_products=5, hop_products=5, max_text_chars=100, max_image_pixels=9000,
                                  max_request_pixels=10_000)
    with pytest.raises(InvalidInput) as err:
        call(transformer, build())
    assert message in str(err.value)
