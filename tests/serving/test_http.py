"""Both servers as real processes on loopback, called through tritonclient.http, kserve.InferenceRESTClient and raw
HTTP (binary and JSON tensors, V1, gzip), plus health, metadata, metrics, micro-batching, readiness that follows the
predictor, the 503/504 paths (unreachable, SIGSTOPped predictor) and the model repository switch."""

from __future__ import annotations

import asyncio
import base64
import gzip
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from kserve import InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest
from serving_helpers import binary_body, hop_inputs, tensor

from devtools.local_servers import LocalServers, ServerProcess, free_port
from rakuten_mm.image import canonical_images
from rakuten_mm.model import Classifier, load_bundle
from serving import codec

pytestmark = [pytest.mark.serving, pytest.mark.integration]


@pytest.fixture(scope="module")
def classifier(serving_bundle: Path) -> Classifier:
    return load_bundle(serving_bundle)


def address(url: str) -> str:
    return url.removeprefix("http://")


def bytes_tensor(name: str, values: list[bytes], binary: bool) -> triton.InferInput:
    inp = triton.InferInput(name, [len(values)], "BYTES")
    inp.set_data_from_numpy(np.array(values, dtype=object), binary_data=binary)
    return inp


PRODUCTS = [("Console de jeux portable", "", True), ("Livre de cuisine", "<p>Recettes&nbsp;faciles</p>", False),
            ("Chaise de jardin pliante", "Acier &amp; toile", True)]


def expected(classifier: Classifier, jpeg: bytes) -> np.ndarray:
    images, mask = canonical_images([jpeg if p[2] else None for p in PRODUCTS])
    return classifier.predict_raw([p[0] for p in PRODUCTS], [p[1] for p in PRODUCTS], images, mask)


# ---- health and metadata ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["predictor_url", "transformer_url"])
def test_health_metadata_and_readiness(which: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(which)
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/rakuten/ready",
                 "/v2/models/rakuten/versions/1/ready"):
        assert httpx.get(url + path).status_code == 200, path
    for path in ("/v2", "/v2/"):
        meta = httpx.get(url + path).json()
        assert meta["name"] and meta["version"] and "extensions" in meta
    model = httpx.get(url + "/v2/models/rakuten").json()
    assert model["name"] == "rakuten" and model["versions"] == ["1"]
    assert httpx.get(url + "/v2/models/rakuten/versions/1").json() == model
    names = {t["name"] for t in model["inputs"]}
    assert names == ({"designation", "description", "image", "image_mask"} if which == "predictor_url"
                     else {"designation", "description", "image"})
    assert [o["name"] for o in model["outputs"]] == ["prdtypecode", "category", "probabilities"]


def test_triton_client_health(transformer_url: str) -> None:
    client = triton.InferenceServerClient(address(transformer_url))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("rakuten")
    assert client.get_model_metadata("rakuten")["outputs"][1] == {"name": "category", "datatype": "BYTES",
                                                                  "shape": [-1]}
    client.close()


# ---- tritonclient ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_through_transformer_and_predictor(transformer_url: str, classifier: Classifier, jpeg: bytes,
                                                        binary: bool) -> None:
    images = [jpeg if p[2] else b"" for p in PRODUCTS]
    if not binary:  # JSON carries images as base64 strings (the project's convention)
        images = [base64.b64encode(b) for b in images]
    inputs = [bytes_tensor("designation", [p[0].encode() for p in PRODUCTS], binary),
              bytes_tensor("description", [p[1].encode() for p in PRODUCTS], binary),
              bytes_tensor("image", images, binary)]
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("prdtypecode", "category",
                                                                              "probabilities")]
    client = triton.InferenceServerClient(address(transformer_url))
    result = client.infer("rakuten", inputs, outputs=outputs, request_id="triton-1")
    client.close()
    assert result.get_response()["id"] == "triton-1"
    probs = result.as_numpy("probabilities")
    want = expected(classifier, jpeg)
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-6)
    assert result.as_numpy("prdtypecode").tolist() == [classifier.labels.codes[i] for i in want.argmax(1)]
    categories = [c.decode() if isinstance(c, bytes) else c for c in result.as_numpy("category")]
    assert categories == [classifier.labels.names[i] for i in want.argmax(1)]


def test_tritonclient_gzip_request(transformer_url: str) -> None:
    client = triton.InferenceServerClient(address(transformer_url))
    result = client.infer("rakuten", [bytes_tensor("designation", [b"Peluche lapin"] * 2, True)],
                          request_compression_algorithm="gzip")
    client.close()
    assert result.as_numpy("probabilities").shape == (2, 27)


def test_tritonclient_straight_to_the_predictor(predictor_url: str, classifier: Classifier, jpeg: bytes) -> None:
    """The hop contract is usable by any V2 client: raw text, canonical uint8 images, the contract version."""
    texts = ["lampe de bureau", "jeu de cartes"]
    images, mask = canonical_images([jpeg, None])
    inputs = []
    for inp in hop_inputs(texts, None, images, mask):
        array = codec.to_numpy(inp)
        triton_input = triton.InferInput(inp.name, list(array.shape), inp.datatype)
        triton_input.set_data_from_numpy(array, binary_data=True)
        inputs.append(triton_input)
    client = triton.InferenceServerClient(address(predictor_url))
    result = client.infer("rakuten", inputs, parameters={"contract_version": "2"})
    client.close()
    np.testing.assert_allclose(result.as_numpy("probabilities"), classifier.predict_raw(texts, None, images, mask),
                               rtol=1e-5, atol=1e-6)


# ---- kserve's client and raw HTTP --------------------------------------------------------------------------------

@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_kserve_rest_client(transformer_url: str, classifier: Classifier, jpeg: bytes, binary: bool) -> None:
    def column(name: str, values: list[bytes]) -> InferInput:
        if not binary:
            return InferInput(name, [len(values)], "BYTES", data=[v.decode() for v in values])
        return codec.to_input(name, np.array(values, dtype=object))

    images = [jpeg if p[2] else b"" for p in PRODUCTS]
    request = InferRequest("rakuten", [
        column("designation", [p[0].encode() for p in PRODUCTS]),
        column("description", [p[1].encode() for p in PRODUCTS]),
        column("image", images if binary else [base64.b64encode(b) for b in images])], request_id="ks-1")

    async def go() -> object:
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
        try:
            return await client.infer(transformer_url, request, model_name="rakuten")
        finally:
            await client.close()

    response = asyncio.run(go())
    assert response.id == "ks-1"  # type: ignore[attr-defined]
    probs = response.get_output_by_name("probabilities").as_numpy()  # type: ignore[attr-defined]
    np.testing.assert_allclose(probs, expected(classifier, jpeg), rtol=1e-5, atol=1e-6)


def test_raw_json_without_content_type(transformer_url: str) -> None:
    body = {"id": "raw-1", "inputs": [tensor("designation", "BYTES", [1], ["Piscine tubulaire ronde"])],
            "outputs": [{"name": "category"}]}
    response = httpx.post(f"{transformer_url}/v2/models/rakuten/infer", content=httpx.Request(
        "POST", "/", json=body).read(), headers={})
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["id"] == "raw-1" and doc["model_name"] == "rakuten" and doc["model_version"] == "1"
    assert [o["name"] for o in doc["outputs"]] == ["category"]
    assert isinstance(doc["outputs"][0]["data"][0], str)


def test_raw_binary_request_and_binary_outputs(transformer_url: str, jpeg: bytes) -> None:
    body, headers = binary_body([("designation", np.array([b"Lampe", b"Table"], dtype=object)),
                                 ("image", np.array([jpeg, b""], dtype=object))],
                                parameters={"binary_data_output": True})
    response = httpx.post(f"{transformer_url}/v2/models/rakuten/versions/1/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    json_length = int(response.headers["inference-header-content-length"])
    header = response.json() if json_length == len(response.content) else __import__("json").loads(
        response.content[:json_length])
    sizes = {o["name"]: o["parameters"]["binary_data_size"] for o in header["outputs"]}
    assert sizes["probabilities"] == 2 * 27 * 4 and sizes["prdtypecode"] == 2 * 8
    assert json_length + sum(sizes.values()) == len(response.content)


def test_v1_instances(transformer_url: str, jpeg: bytes) -> None:
    body = {"instances": [{"designation": "Peluche lapin 30 cm", "description": "", "image": None},
                          {"designation": "Lampe", "image": base64.b64encode(jpeg).decode()}]}
    response = httpx.post(f"{transformer_url}/v1/models/rakuten:predict", json=body)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    assert all(set(p) == {"prdtypecode", "category", "probability"} for p in predictions)


# ---- metrics and batching ---------------------------------------------------------------------------------------

def _metric(text: str, name: str) -> float:
    match = re.search(rf'^{name}{{model_name="rakuten"}} ([0-9.e+-]+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_concurrent_requests_are_micro_batched_and_measured(transformer_url: str, predictor_url: str,
                                                            jpeg: bytes) -> None:
    before = httpx.get(f"{predictor_url}/metrics").text

    def one(i: int) -> int:
        client = triton.InferenceServerClient(address(transformer_url))
        try:
            result = client.infer("rakuten", [bytes_tensor("designation", [f"Produit {i}".encode()], True),
                                              bytes_tensor("image", [jpeg], True)])
            return int(result.as_numpy("prdtypecode")[0])
        finally:
            client.close()

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(one, range(32)))
    assert len(codes) == 32
    after = httpx.get(f"{predictor_url}/metrics").text
    rows = _metric(after, "rakuten_batch_rows_sum") - _metric(before, "rakuten_batch_rows_sum")
    batches = _metric(after, "rakuten_batch_rows_count") - _metric(before, "rakuten_batch_rows_count")
    assert rows == 32
    assert batches < rows, f"32 concurrent requests ran as {batches:.0f} forward passes: no micro-batching"
    for name in ("request_preprocess_seconds_count", "request_predict_seconds_count",
                 "request_postprocess_seconds_count", "rakuten_batch_queue_seconds_count",
                 "rakuten_batch_forward_seconds_count"):
        assert _metric(after, name) > 0, name
    transformer_metrics = httpx.get(f"{transformer_url}/metrics").text
    for name in ("request_predict_seconds_count", "rakuten_transformer_encode_seconds_count",
                 "rakuten_transformer_predictor_request_bytes_count"):
        assert _metric(transformer_metrics, name) > 0, name


# ---- errors that need processes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["predictor_url", "transformer_url"])
def test_unknown_model_and_version_are_404(which: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(which)
    body = {"inputs": [tensor("designation", "BYTES", [1], ["x"])]}
    r = httpx.post(f"{url}/v2/models/nope/infer", json=body)
    assert r.status_code == 404 and "model 'nope' is not served here; allowed: ['rakuten']" in r.json()["error"]
    r = httpx.post(f"{url}/v2/models/rakuten/versions/7/infer", json=body)
    assert r.status_code == 404 and "has no version '7'; allowed versions: ['1']" in r.json()["error"]
    assert httpx.get(f"{url}/v2/models/nope/ready").status_code == 404
    assert httpx.get(f"{url}/v2/models/rakuten/versions/7").status_code == 404


@pytest.fixture(scope="module")
def orphan_transformer(tmp_path_factory: pytest.TempPathFactory) -> object:
    """A transformer whose predictor address has nothing listening."""
    dead = free_port()
    server = ServerProcess("transformer", free_port(), ["--predictor_host", f"127.0.0.1:{dead}",
                                                        "--predictor_request_timeout_seconds", "5"],
                           tmp_path_factory.mktemp("orphan") / "t.log")
    server.start()
    try:
        server.wait_ready(180, path="/v2/health/live")
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_transformer_answers_503_when_the_predictor_is_unreachable(orphan_transformer: ServerProcess) -> None:
    url = orphan_transformer.url
    body = {"inputs": [tensor("designation", "BYTES", [1], ["Lampe"])]}
    for _ in range(2):  # and it stays up
        r = httpx.post(f"{url}/v2/models/rakuten/infer", json=body, timeout=30)
        assert r.status_code == 503
        assert "the predictor at http://127.0.0.1:" in r.json()["error"] and "is unreachable" in r.json()["error"]
    r = httpx.post(f"{url}/v1/models/rakuten:predict", json={"instances": [{"designation": "a"}]})
    assert r.status_code == 503
    # A client error is still a 400, before any predictor call.
    r = httpx.post(f"{url}/v2/models/rakuten/infer", json={"inputs": []})
    assert r.status_code == 400
    # Readiness follows the predictor (503, never 200 and never 500); liveness does not.
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
    for path in ("/v2/health/ready", "/v2/models/rakuten/ready", "/v2/models/rakuten/versions/1/ready",
                 "/v1/models/rakuten"):
        r = httpx.get(url + path, timeout=30)
        assert r.status_code == 503, (path, r.text)
        assert "the predictor at http://127.0.0.1:" in r.json()["error"], r.text
    # Metadata needs no predictor (nor bundle).
    assert httpx.get(f"{url}/v2/models/rakuten").json()["inputs"][0]["name"] == "designation"


def test_readiness_of_a_transformer_started_before_its_predictor(serving_bundle: Path, tmp_path: Path) -> None:
    """Started first, the transformer is live but not ready; it becomes ready when its predictor does."""
    pred_port = free_port()
    transformer = ServerProcess("transformer", free_port(), ["--predictor_host", f"127.0.0.1:{pred_port}"],
                                tmp_path / "t.log").start()
    predictor = ServerProcess("predictor", pred_port, ["--model_dir", str(serving_bundle)], tmp_path / "p.log")
    try:
        transformer.wait_ready(120, path="/v2/health/live")
        assert httpx.get(f"{transformer.url}/v2/health/ready").status_code == 503
        assert httpx.get(f"{transformer.url}/v2/models/rakuten/ready").status_code == 503
        predictor.start().wait_ready(180)
        transformer.wait_ready(30)
        assert httpx.get(f"{transformer.url}/v2/health/ready").status_code == 200
    finally:
        transformer.stop()
        predictor.stop()


@pytest.mark.slow
def test_a_wedged_predictor_gives_504_within_the_hop_timeout(servers: LocalServers, tmp_path: Path) -> None:
    """SIGSTOP the predictor: infer answers 504 and readiness 503, each within the timeout; SIGCONT recovers."""
    assert servers.predictor is not None
    transformer = ServerProcess("transformer", free_port(), ["--predictor_host", servers.predictor.address,
                                                             "--predictor_request_timeout_seconds", "2"],
                                tmp_path / "t.log").start()
    try:
        transformer.wait_ready(120)
        body = {"inputs": [tensor("designation", "BYTES", [1], ["Lampe"])]}
        os.kill(servers.predictor.pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            r = httpx.post(f"{transformer.url}/v2/models/rakuten/infer", json=body, timeout=30)
            took = time.monotonic() - start
            assert r.status_code == 504, r.text
            assert "did not answer within 2 s (--predictor_request_timeout_seconds" in r.json()["error"]
            assert took < 5, took
            start = time.monotonic()
            r = httpx.get(f"{transformer.url}/v2/health/ready", timeout=30)
            assert r.status_code == 503 and time.monotonic() - start < 5, r.text
        finally:
            os.kill(servers.predictor.pid, signal.SIGCONT)
        transformer.wait_ready(30)
        assert httpx.post(f"{transformer.url}/v2/models/rakuten/infer", json=body, timeout=30).status_code == 200
    finally:
        transformer.stop()


@pytest.mark.slow
def test_model_repository_routes_only_with_the_flag(serving_bundle: Path, tmp_path: Path) -> None:
    """With --enable-model-repository, unload works (trusted networks only) and readiness then says 503."""
    predictor = ServerProcess("predictor", free_port(), ["--model_dir", str(serving_bundle),
                                                         "--enable-model-repository"], tmp_path / "p.log").start()
    try:
        predictor.wait_ready(180)
        r = httpx.post(f"{predictor.url}/v2/repository/models/rakuten/unload")
        assert r.status_code == 200, r.text
        for path in ("/v2/health/ready", "/v2/models/rakuten/ready"):
            r = httpx.get(predictor.url + path)
            assert r.status_code in (404, 503) and "error" in r.json(), (path, r.text)
        assert httpx.get(f"{predictor.url}/v2/health/ready").status_code == 503
        assert httpx.get(f"{predictor.url}/v2/health/live").status_code == 200
    finally:
        predictor.stop()


def test_an_empty_cloudevent_does_not_break_the_connection(transformer_url: str) -> None:
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "t", "ce-type": "predict",
               "content-type": "application/json"}
    with httpx.Client(base_url=transformer_url, timeout=30) as client:  # one keep-alive connection
        r = client.post("/v1/models/rakuten:predict", content=b"", headers=headers)
        assert r.status_code == 400 and "the binary CloudEvent has no data" in r.json()["error"]
        ok = client.post("/v1/models/rakuten:predict", json={"instances": [{"designation": "Lampe"}]})
        assert ok.status_code == 200, ok.text


def test_servers_are_bound_to_loopback_only(servers: LocalServers) -> None:
    assert servers.predictor is not None and servers.transformer is not None
    log = servers.transformer.log_path.read_text()
    assert f"Uvicorn running on http://127.0.0.1:{servers.transformer.port}" in log
    assert servers.predictor.process is not None and servers.predictor.process.poll() is None


def test_gzip_bomb_is_refused(transformer_url: str) -> None:
    from serving_helpers import tensor as t

    huge = gzip.compress(b"{" + b" " * 5_000_000 + b"}")
    r = httpx.post(f"{transformer_url}/v2/models/rakuten/infer", content=huge, headers={"content-encoding": "gzip"})
    assert r.status_code == 400 and "too large once decompressed" in r.json()["error"]
    ok = httpx.post(f"{transformer_url}/v2/models/rakuten/infer",
                    json={"inputs": [t("designation", "BYTES", [1], ["Lampe"])]})
    assert ok.status_code == 200
