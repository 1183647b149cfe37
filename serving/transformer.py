"""The KServe transformer: protocol, limits and image decoding; it needs no bundle (and no torch).

V2 inputs (all BYTES [B]; ``[B, 1]`` is accepted too):

- ``designation`` (required, not blank): product title, UTF-8.
- ``description`` (optional): free text, HTML allowed; an empty element means "no description".
- ``image`` (optional): raw image bytes with the binary tensor extension, or a base64 string (RFC 4648,
  ``data:image/...;base64,`` prefix allowed) in JSON; an empty element means "no image".

V2 outputs: ``prdtypecode`` INT64 [B], ``category`` BYTES [B], ``probabilities`` FP32 [B, 27].
V1 compatibility: ``POST /v1/models/rakuten:predict`` with ``{"instances": [{"designation", "description",
"image": <base64>}]}`` answers ``{"predictions": [{"prdtypecode", "category", "probability"}]}`` (probability: the
predicted class's, the row maximum).

Limits (:mod:`serving.settings`; each a 400 naming the limit and the value): products per request, characters per
text field, pixels per image and per request (declared sizes, checked before anything is decoded).

To the predictor it sends the bundle-independent hop of :mod:`serving.contract` (text unchanged, images decoded to
the canonical ``uint8 [3, 256, 256]``), in chunks of at most ``--hop-products`` products, one after the other, each
within ``--predictor_request_timeout_seconds`` (504 past it). Images are decoded by a small thread pool shared by
all requests (``--decode-threads``), which bounds the memory that decoding takes. Readiness (``/v2/health/ready``,
model ready) is the predictor's: 503 while it is unreachable or not ready.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson
from kserve import InferenceRESTClient, RESTConfig
from kserve.errors import InferenceError, InvalidInput
from kserve.model import append_forwardable_headers
from kserve.protocol.infer_type import InferRequest, InferResponse
from prometheus_client import Histogram

from rakuten_mm.image import canonical_images, declared_pixels
from serving import codec, contract
from serving.errors import PredictorTimeout, PredictorUnavailable, client_errors
from serving.settings import TransformerSettings, check_products, check_text

_DATA_URI = re.compile(rb"^data:[\w/+.-]*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(rb"\s+")
READY_TIMEOUT_S = 5.0

ENCODE_SECONDS = Histogram("rakuten_transformer_encode_seconds",
                           "request parsing, limit checks and image decoding to the canonical form, per request",
                           ["model_name"])
HOP_BYTES = Histogram("rakuten_transformer_predictor_request_bytes", "bytes sent to the predictor per hop request",
                      ["model_name"], buckets=(1e3, 1e4, 1e5, 2e5, 5e5, 1e6, 4e6, 16e6, 64e6))


@dataclass
class Products:
    """A decoded client request: B products' raw fields."""

    designations: list[bytes]
    descriptions: list[bytes]
    images: list[bytes | None]

    def __len__(self) -> int:
        return len(self.designations)


@dataclass
class _Call:
    """One client request on its way through preprocess → predict → postprocess."""

    request: InferRequest | None  # None for V1
    request_id: str
    products: Products
    outputs: dict[str, list[np.ndarray]] = field(default_factory=dict)


def decode_base64(row: int, text: bytes) -> bytes:
    """A JSON image element (base64, optionally a data: URI) → raw bytes; 400 naming the row otherwise."""
    payload = _WHITESPACE.sub(b"", _DATA_URI.sub(b"", text.strip(), count=1))
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"image of product {row} is not valid base64 ({exc}); allowed in JSON: a standard base64 "
                           f"string of image bytes (or an empty string for no image), got {text[:40]!r}") from None


class RakutenTransformer(contract.ContractModel):
    def __init__(self, name: str, settings: TransformerSettings,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(name)
        self.settings = settings
        self._transport = transport  # tests hand in a fake predictor; None means the network
        self._client: InferenceRESTClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._decoder = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="rakuten-decode")

    def load(self) -> bool:
        """Nothing to load: the transformer is bundle-independent. Readiness is the predictor's
        (:meth:`check_upstream`)."""
        self.ready = True
        return self.ready

    def stop(self) -> None:
        self.ready = False
        self._decoder.shutdown(wait=False, cancel_futures=True)

    def get_input_types(self) -> list[dict[str, Any]]:
        return contract.client_input_types()

    # ---- client request → products -------------------------------------------------------------------------

    def products_from_v2(self, request: InferRequest) -> Products:
        codec.check_requested_outputs(request, list(contract.OUTPUTS))
        tensors = codec.find_inputs(request, contract.CLIENT_INPUTS, required=("designation",))
        designations = codec.bytes_column("designation", tensors["designation"], None)
        assert designations is not None
        rows = len(designations)
        descriptions = codec.bytes_column("description", tensors.get("description"), rows) or [b""] * rows
        images: list[bytes | None] = [None] * rows
        raw_images = codec.bytes_column("image", tensors.get("image"), rows)
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
        keys = list(contract.V1_KEYS)
        products = Products([], [], [])
        for row, inst in enumerate(instances):
            if not isinstance(inst, dict):
                raise InvalidInput(f"instance {row} must be an object with keys {keys}, got {type(inst).__name__}")
            if unknown := sorted(set(inst) - set(keys)):
                raise InvalidInput(f"instance {row} has unknown keys {unknown}; allowed keys: {keys}")
            if "designation" not in inst:
                raise InvalidInput(f"instance {row}: 'designation' is required; allowed keys: {keys}, "
                                   f"got {sorted(inst)}")
            fields = {}
            for key in keys:
                value = inst.get(key)
                if value is not None and not isinstance(value, str):
                    raise InvalidInput(f"instance {row}: {key!r} must be a string or null, got "
                                       f"{type(value).__name__}")
                fields[key] = (value or "").encode("utf-8", errors="surrogatepass")
            products.designations.append(fields["designation"])
            products.descriptions.append(fields["description"])
            products.images.append(decode_base64(row, fields["image"]) if fields["image"] else None)
        return products

    def check(self, products: Products) -> None:
        """Every limit that needs no decoding: products, blank designations, text length, declared pixels."""
        s = self.settings
        with client_errors():
            check_products(len(products), s.max_products)
        for row, designation in enumerate(products.designations):
            if not designation.strip():
                raise InvalidInput(f"designation of product {row} is empty; every product needs a non-empty "
                                   "designation (description and image are optional)")
        with client_errors():
            check_text(products.designations, products.descriptions, s.max_text_chars)
        total = 0
        for row, blob in enumerate(products.images):
            if blob is not None:
                with client_errors(f"image of product {row}: "):
                    total += declared_pixels(blob, s.max_image_pixels)
        if total > s.max_request_pixels:
            raise InvalidInput(f"the request's images have {total} pixels in all; allowed at most "
                               f"{s.max_request_pixels} per request (--max-request-pixels): split it into several "
                               "requests")

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> _Call:
        with ENCODE_SECONDS.labels(self.name).time():
            if isinstance(payload, InferRequest):
                products = self.products_from_v2(payload)
                request: InferRequest | None = payload
            else:
                products = self.products_from_v1(payload)
                request = None
            self.check(products)
        # The predictor sees the client's request id (or a fresh one), so both servers' logs can be matched.
        request_id = codec.response_id(request) if request is not None else str(uuid.uuid4())
        return _Call(request, request_id, products)

    # ---- products → hop requests → the predictor -----------------------------------------------------------

    def _decode(self, row: int, blob: bytes) -> np.ndarray:
        with client_errors(f"image of product {row}: "):
            canonical, _ = canonical_images([blob], self.settings.max_image_pixels)
        return canonical[0]

    async def hop_request(self, products: Products, start: int, stop: int, request_id: str) -> InferRequest:
        """Products ``[start, stop)`` → the hop's binary V2 request (images decoded on the shared decode pool)."""
        designations = np.array(products.designations[start:stop], dtype=object)
        descriptions = np.array(products.descriptions[start:stop], dtype=object)
        inputs = [codec.to_input("designation", designations), codec.to_input("description", descriptions)]
        blobs = products.images[start:stop]
        if any(blob is not None for blob in blobs):
            loop = asyncio.get_running_loop()
            pixels = np.zeros((stop - start, *contract.CANONICAL_SHAPE), dtype=np.uint8)
            mask = np.array([blob is not None for blob in blobs])
            decoded = await asyncio.gather(*(loop.run_in_executor(self._decoder, self._decode, start + i, blob)
                                             for i, blob in enumerate(blobs) if blob is not None))
            pixels[mask] = np.stack(decoded)
            inputs += [codec.to_input("image", pixels), codec.to_input("image_mask", mask)]
        return InferRequest(model_name=self.name, infer_inputs=inputs, request_id=request_id,
                            parameters={**contract.hop_parameters(start), "binary_data_output": True})

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

    async def check_upstream(self) -> None:
        """Raise :class:`PredictorUnavailable` unless the predictor answers that model ``name`` is ready."""
        url = self.settings.predictor_url
        timeout = min(READY_TIMEOUT_S, self.settings.predictor_timeout_s)
        try:
            ready = await asyncio.wait_for(self._rest_client().is_model_ready(url, self.name, timeout=timeout),
                                           timeout)
        except (httpx.HTTPError, TimeoutError) as exc:
            raise PredictorUnavailable(self.name, f"the predictor at {url} is not reachable or did not answer its "
                                                  f"readiness check within {timeout:g} s ({type(exc).__name__})"
                                       ) from None
        if not ready:
            raise PredictorUnavailable(self.name, f"the predictor at {url} is not ready to serve model "
                                                  f"{self.name!r}")

    async def hop(self, request: InferRequest, headers: dict[str, str] | None) -> InferResponse:
        """One hop request; transport failures become 503 (unreachable, not ready) or 504 (no answer in time)."""
        url = self.settings.predictor_url
        timeout = self.settings.predictor_timeout_s
        body, _ = request.to_rest()
        HOP_BYTES.labels(self.name).observe(len(body) if isinstance(body, bytes) else 0)
        try:
            response = await asyncio.wait_for(self._rest_client().infer(
                url, data=request, model_name=self.name, headers=append_forwardable_headers(headers)), timeout)
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            detail = _error_text(exc.response)
            if status == 400:
                raise InvalidInput(f"the predictor rejected the request: {detail}") from None
            if status in (404, 503):
                raise PredictorUnavailable(self.name, f"the predictor at {url} is not ready to serve model "
                                                      f"{self.name!r} (HTTP {status}: {detail})") from None
            raise InferenceError(f"the predictor at {url} failed with HTTP {status}: {detail}") from None
        except (TimeoutError, httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout) as exc:
            raise PredictorTimeout(f"the predictor at {url} did not answer within {timeout:g} s "
                                   f"(--predictor_request_timeout_seconds; {type(exc).__name__})") from None
        except httpx.TransportError as exc:  # connection refused or reset, DNS, connect timeout
            raise PredictorUnavailable(self.name, f"the predictor at {url} is unreachable ({type(exc).__name__}: "
                                                  f"{exc})") from None
        except InvalidInput as exc:  # KServe's client raises it when the predictor's answer cannot be parsed
            raise InferenceError(f"the predictor at {url} answered an unreadable V2 response: {exc}") from None
        if not isinstance(response, InferResponse):
            raise InferenceError(f"the predictor at {url} answered something that is not a V2 response")
        return response

    async def predict(self, payload: _Call, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> _Call:
        """Send the products in chunks of ``hop_products``, one after the other; collect the outputs."""
        step = self.settings.hop_products
        rows = len(payload.products)
        payload.outputs = {name: [] for name in contract.OUTPUTS}
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            with ENCODE_SECONDS.labels(self.name).time():
                request = await self.hop_request(payload.products, start, stop, payload.request_id)
            response = await self.hop(request, headers)
            for name, array in _outputs(response, stop - start).items():
                payload.outputs[name].append(array)
        return payload

    # ---- predictor outputs → client response ---------------------------------------------------------------

    async def postprocess(self, result: _Call, headers: dict[str, str] | None = None,
                          response_headers: dict[str, str] | None = None) -> InferResponse | dict[str, Any]:
        out = {name: np.concatenate(parts) for name, parts in result.outputs.items()}
        if result.request is None:  # V1
            best = out["probabilities"].max(axis=1)
            return {"predictions": [{"prdtypecode": int(code), "category": category.decode("utf-8"),
                                     "probability": float(p)}
                                    for code, category, p in zip(out["prdtypecode"], out["category"], best,
                                                                 strict=True)]}
        return codec.respond(result.request, self.name, out)


def _outputs(response: InferResponse, rows: int) -> dict[str, np.ndarray]:
    """The predictor's outputs for ``rows`` products, checked against the contract."""
    out: dict[str, np.ndarray] = {}
    for name, (datatype, shape) in contract.OUTPUTS.items():
        output = response.get_output_by_name(name)
        if output is None:
            raise InferenceError(f"the predictor's response has no {name!r} output")
        array = np.asarray(output.as_numpy())
        if array.ndim != len(shape) or array.shape[0] != rows:
            raise InferenceError(f"the predictor returned {name} of shape {list(array.shape)} for {rows} products; "
                                 f"the contract says {datatype} {shape}")
        if datatype == "BYTES":
            array = np.array([v if isinstance(v, bytes) else str(v).encode("utf-8") for v in array], dtype=object)
        out[name] = array.astype(np.float32) if datatype == "FP32" else array
    return out


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    return str(body.get("error", body))[:300] if isinstance(body, dict) else str(body)[:300]
