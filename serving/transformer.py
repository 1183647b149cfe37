"""The KServe transformer: raw products → tensors (the bundle's own cleaning, vocabulary and image preset) → the
predictor → category.

V2 inputs (all BYTES [B]; ``[B, 1]`` is accepted too):

- ``designation`` (required): product title, UTF-8 (invalid bytes are replaced, as in batch prediction).
- ``description`` (optional): free text, HTML allowed; an empty element means "no description".
- ``image`` (optional): the product image as raw JPEG/PNG bytes with the binary tensor extension, or as a base64
  string (RFC 4648, ``data:image/...;base64,`` prefix allowed) in JSON; an empty element means "no image", and that
  product is answered by the text member alone.

Text longer than ``max_text_chars`` characters per field is truncated (then capped at the bundle's ``max_tokens``
tokens), never rejected. Images over ``max_image_pixels`` pixels (decompression bombs), truncated or not images at
all are rejected with 400 naming the product's row.

V2 outputs: ``prdtypecode`` INT64 [B], ``category`` BYTES [B], ``probabilities`` FP32 [B, 27].
V1 compatibility: ``POST /v1/models/rakuten:predict`` with ``{"instances": [{"designation", "description",
"image": <base64>}]}`` answers ``{"predictions": [{"prdtypecode", "category", "probability"}]}``.

To the predictor it sends binary V2 tensors: ``token_ids`` INT64 [B, L], and when some product has an image,
``image`` UINT8 [B, 3, S, S] + ``image_mask`` BOOL [B] (≈ 150 KB per 224×224 image). Its own ``predict`` only maps
transport failures to 503 (predictor unreachable, timing out or not ready).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import orjson
from kserve import InferenceRESTClient, Model, RESTConfig
from kserve.errors import InferenceError, InvalidInput
from kserve.model import append_forwardable_headers
from kserve.protocol.infer_type import InferRequest, InferResponse
from prometheus_client import Histogram

from rakuten_mm.bundle import Preprocessor, load_preprocessor
from rakuten_mm.errors import ConfigError, InputError
from rakuten_mm.image import DEFAULT_MAX_PIXELS
from serving import codec
from serving.errors import PredictorUnavailable
from serving.predictor import DEFAULT_MODEL_DIR

INPUTS = {"designation": "BYTES", "description": "BYTES", "image": "BYTES"}
OUTPUTS = ("prdtypecode", "category", "probabilities")
V1_KEYS = ("designation", "description", "image")
_DATA_URI = re.compile(rb"^data:[\w/+.-]*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(rb"\s+")

ENCODE_SECONDS = Histogram("rakuten_transformer_encode_seconds",
                           "text cleaning + tokenising and image decoding + resizing, per request", ["model_name"])
HOP_BYTES = Histogram("rakuten_transformer_predictor_request_bytes", "bytes sent to the predictor per request",
                      ["model_name"], buckets=(1e3, 1e4, 1e5, 2e5, 5e5, 1e6, 4e6, 16e6, 64e6))


@dataclass(frozen=True)
class TransformerSettings:
    """Everything the transformer is configured with; built once by ``serving.cli``."""

    predictor_host: str
    model_dir: str = DEFAULT_MODEL_DIR
    predictor_use_ssl: bool = False
    predictor_timeout_s: float = 600.0
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_text_chars: int = 10_000

    def __post_init__(self) -> None:
        if not self.predictor_host or "/" in self.predictor_host:
            raise ConfigError(f"--predictor_host must be HOST:PORT (no scheme or path), got {self.predictor_host!r}")
        if self.max_image_pixels < 1 or self.max_text_chars < 1 or self.predictor_timeout_s <= 0:
            raise ConfigError("--max-image-pixels, --max-text-chars and --predictor_request_timeout_seconds must be "
                              f"positive, got {self.max_image_pixels}, {self.max_text_chars}, "
                              f"{self.predictor_timeout_s}")

    @property
    def predictor_url(self) -> str:
        return f"{'https' if self.predictor_use_ssl else 'http'}://{self.predictor_host}"


@dataclass
class Products:
    """A decoded client request: B products' raw fields."""

    designations: list[bytes]
    descriptions: list[bytes]
    images: list[bytes | None]


@dataclass
class _Call:
    """One client request on its way through preprocess → predict → postprocess."""

    request: InferRequest | None  # None for V1
    predictor_request: InferRequest
    rows: int
    response: InferResponse | None = None


def _column(name: str, array: np.ndarray | None, rows: int | None) -> list[bytes] | None:
    if array is None:
        return None
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise InvalidInput(f"input {name!r}: shape must be [B] (or [B, 1]), got {list(array.shape)}")
    if rows is not None and array.shape[0] != rows:
        raise InvalidInput(f"batch sizes disagree: designation has {rows} rows, {name} has {array.shape[0]}; "
                           "allowed: the same B for every input")
    return [bytes(x) for x in array.tolist()]


def decode_base64(row: int, text: bytes) -> bytes:
    """A JSON image element (base64, optionally a data: URI) → raw bytes; 400 naming the row otherwise."""
    payload = _WHITESPACE.sub(b"", _DATA_URI.sub(b"", text.strip(), count=1))
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"image of product {row} is not valid base64 ({exc}); allowed in JSON: a standard base64 "
                           f"string of JPEG/PNG bytes (or an empty string for no image), got {text[:40]!r}") from None


class RakutenTransformer(Model):
    def __init__(self, name: str, settings: TransformerSettings,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(name)
        self.settings = settings
        self.pre: Preprocessor | None = None
        self._transport = transport  # tests hand in a fake predictor; None means the network
        self._client: InferenceRESTClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def load(self) -> bool:
        """Load the bundle's preprocessing (label map, cleaning, vocabulary, image preset); ready afterwards."""
        self.pre = load_preprocessor(self.settings.model_dir)
        self.ready = True
        return self.ready

    def start(self) -> None:
        """KServe's default marks any model ready here; readiness comes from :meth:`load` only."""

    @property
    def _pre(self) -> Preprocessor:
        if self.pre is None:
            raise RuntimeError("the transformer is used before load()")
        return self.pre

    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in INPUTS]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [{"name": "prdtypecode", "datatype": "INT64", "shape": [-1]},
                {"name": "category", "datatype": "BYTES", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(self._pre.labels)]}]

    def validate(self, payload: Any) -> Any:
        return payload  # preprocess already checked the request

    # ---- client request → products -------------------------------------------------------------------------

    def products_from_v2(self, request: InferRequest) -> Products:
        codec.check_requested_outputs(request, OUTPUTS)
        tensors = codec.find_inputs(request, INPUTS, required=("designation",))
        designations = _column("designation", tensors["designation"], None)
        assert designations is not None
        rows = len(designations)
        descriptions = _column("description", tensors.get("description"), rows) or [b""] * rows
        images: list[bytes | None] = [None] * rows
        raw_images = _column("image", tensors.get("image"), rows)
        if raw_images is not None:
            binary = codec.is_binary(next(i for i in request.inputs if i.name == "image"))
            images = [(blob if binary else decode_base64(row, blob)) or None for row, blob in enumerate(raw_images)]
        return Products(designations, descriptions, images)

    def products_from_v1(self, payload: object) -> Products:
        if isinstance(payload, bytes | bytearray):  # KServe leaves bodies of non-JSON content types undecoded
            try:
                payload = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"the V1 request body is not valid JSON ({exc})") from None
        instances = payload.get("instances") if isinstance(payload, dict) else None
        if not isinstance(instances, list):
            raise InvalidInput('the V1 request must be {"instances": [{"designation": ..., "description": ..., '
                               f'"image": <base64>}}, ...]}}, got {str(payload)[:80]!r}')
        products = Products([], [], [])
        for row, inst in enumerate(instances):
            if not isinstance(inst, dict):
                raise InvalidInput(f"instance {row} must be an object with keys {list(V1_KEYS)}, "
                                   f"got {type(inst).__name__}")
            if unknown := sorted(set(inst) - set(V1_KEYS)):
                raise InvalidInput(f"instance {row} has unknown keys {unknown}; allowed keys: {list(V1_KEYS)}")
            fields = {}
            for key in V1_KEYS:
                value = inst.get(key)
                if value is not None and not isinstance(value, str):
                    raise InvalidInput(f"instance {row}: {key!r} must be a string or null, got "
                                       f"{type(value).__name__}")
                fields[key] = (value or "").encode("utf-8", errors="surrogatepass")
            if "designation" not in inst:
                raise InvalidInput(f"instance {row}: 'designation' is required; allowed keys: {list(V1_KEYS)}, "
                                   f"got {sorted(inst)}")
            products.designations.append(fields["designation"])
            products.descriptions.append(fields["description"])
            products.images.append(decode_base64(row, fields["image"]) if fields["image"] else None)
        return products

    # ---- products → predictor tensors ----------------------------------------------------------------------

    def encode(self, products: Products) -> InferRequest:
        """Products → the predictor's binary V2 request (token_ids, and image + image_mask when any image)."""
        pre = self._pre
        rows = len(products.designations)
        if rows == 0:
            raise InvalidInput("the batch is empty: 0 products were sent; allowed: at least 1 product")
        for row, designation in enumerate(products.designations):
            if not designation.strip():
                raise InvalidInput(f"designation of product {row} is empty; every product needs a non-empty "
                                   "designation (description and image are optional)")
        cap = self.settings.max_text_chars
        # Truncated at max_text_chars characters per field before cleaning (the token cap follows in encode_text).
        designations = [d.decode("utf-8", errors="replace")[:cap] for d in products.designations]
        descriptions = [d.decode("utf-8", errors="replace")[:cap] for d in products.descriptions]
        token_ids = pre.encode_text(designations, descriptions)
        inputs = [codec.to_input("token_ids", token_ids)]
        if any(blob is not None for blob in products.images):
            size = pre.image_preset.size
            pixels = np.zeros((rows, 3, size, size), dtype=np.uint8)
            mask = np.zeros(rows, dtype=bool)
            for row, blob in enumerate(products.images):
                if blob is None:
                    continue
                try:
                    one, _ = pre.encode_images([blob], self.settings.max_image_pixels)
                except InputError as exc:
                    raise InvalidInput(f"image of product {row}: {exc}; allowed: JPEG or PNG bytes of at most "
                                       f"{self.settings.max_image_pixels} pixels") from None
                pixels[row], mask[row] = one[0], True
            inputs += [codec.to_input("image", pixels), codec.to_input("image_mask", mask)]
        return InferRequest(model_name=self.name, infer_inputs=inputs)

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> _Call:
        with ENCODE_SECONDS.labels(self.name).time():
            if isinstance(payload, InferRequest):
                products = self.products_from_v2(payload)
                request: InferRequest | None = payload
            else:
                products = self.products_from_v1(payload)
                request = None
            # Image decoding is CPU-bound (Pillow releases the GIL): a worker thread keeps the event loop free.
            predictor_request = await asyncio.to_thread(self.encode, products)
        # The predictor sees the client's request id (or a fresh one), so both servers' logs can be matched.
        predictor_request.id = codec.response_id(request) if request is not None else str(uuid.uuid4())
        return _Call(request, predictor_request, len(products.designations))

    # ---- the predictor call: only transport failures are handled here ----------------------------------------

    def _rest_client(self) -> InferenceRESTClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            config = RESTConfig(transport=self._transport, protocol="v2", retries=0,
                                timeout=self.settings.predictor_timeout_s)
            self._client, self._client_loop = InferenceRESTClient(config), loop
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def predict(self, payload: _Call, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> _Call:
        url = self.settings.predictor_url
        forward = append_forwardable_headers(headers)
        body, _ = payload.predictor_request.to_rest()
        HOP_BYTES.labels(self.name).observe(len(body) if isinstance(body, bytes) else 0)
        try:
            response = await self._rest_client().infer(url, data=payload.predictor_request, model_name=self.name,
                                                       headers=forward)
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            detail = _error_text(exc.response)
            if status == 400:
                raise InvalidInput(f"the predictor rejected the request: {detail}") from None
            if status in (404, 503):
                raise PredictorUnavailable(self.name, f"the predictor at {url} is not ready to serve model "
                                                      f"{self.name!r} (HTTP {status}: {detail})") from None
            raise InferenceError(f"the predictor at {url} failed with HTTP {status}: {detail}") from None
        except httpx.TimeoutException as exc:
            raise PredictorUnavailable(self.name, f"the predictor at {url} did not answer within "
                                                  f"{self.settings.predictor_timeout_s:g} s ({type(exc).__name__})"
                                       ) from None
        except httpx.TransportError as exc:
            raise PredictorUnavailable(self.name, f"the predictor at {url} is unreachable ({type(exc).__name__}: "
                                                  f"{exc})") from None
        except InvalidInput as exc:  # KServe's client raises it when the predictor's answer cannot be parsed
            raise InferenceError(f"the predictor at {url} answered an unreadable V2 response: {exc}") from None
        if not isinstance(response, InferResponse):
            raise InferenceError(f"the predictor at {url} answered something that is not a V2 response")
        payload.response = response
        return payload

    # ---- predictor response → client response ------------------------------------------------------------------

    async def postprocess(self, result: _Call, headers: dict[str, str] | None = None,
                          response_headers: dict[str, str] | None = None) -> InferResponse | dict[str, Any]:
        labels = self._pre.labels
        assert result.response is not None
        out = result.response.get_output_by_name("probabilities")
        if out is None:
            raise InferenceError("the predictor's response has no 'probabilities' output")
        probs = np.asarray(out.as_numpy(), dtype=np.float32)
        if probs.shape != (result.rows, len(labels)):
            raise InferenceError(f"the predictor returned probabilities of shape {list(probs.shape)}, expected "
                                 f"[{result.rows}, {len(labels)}]: do predictor and transformer load the same bundle?")
        best = probs.argmax(axis=1)
        codes = np.asarray(labels.codes, dtype=np.int64)[best]
        names = [labels.names[i] for i in best]
        if result.request is None:  # V1
            return {"predictions": [{"prdtypecode": int(c), "category": n, "probability": float(probs[i, best[i]])}
                                    for i, (c, n) in enumerate(zip(codes, names, strict=True))]}
        request = result.request
        category = np.array([n.encode("utf-8") for n in names], dtype=object)
        return InferResponse(response_id=codec.response_id(request), model_name=self.name,
                             model_version=codec.MODEL_VERSION,
                             infer_outputs=[codec.to_output("prdtypecode", codes),
                                            codec.to_output("category", category),
                                            codec.to_output("probabilities", probs)],
                             use_binary_outputs=request.use_binary_outputs,
                             requested_outputs=request.request_outputs)


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    return str(body.get("error", body))[:300] if isinstance(body, dict) else str(body)[:300]
