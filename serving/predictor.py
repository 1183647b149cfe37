"""The KServe predictor: loads a bundle and does all bundle-specific work (:mod:`serving.contract`'s hop).

Inputs (``GET /v2/models/rakuten`` lists them; request parameter ``contract_version`` = ``"2"`` is required):

- ``designation`` BYTES [B] (required) and ``description`` BYTES [B] (optional): raw UTF-8 text. Cleaning,
  vocabulary and the token cap are the bundle's (:class:`rakuten_mm.model.Classifier`).
- ``image`` UINT8 [B, 3, 256, 256] (optional): the canonical transport form (:func:`rakuten_mm.image.to_canonical`);
  the bundle's preset resizes and normalises it here, on the predictor's device.
- ``image_mask`` BOOL [B] (optional): which rows carry an image. Without it every row of ``image`` counts as
  present; without ``image`` no row has one.

A product with neither usable text (no word left after cleaning) nor an image is a 400. Outputs: ``prdtypecode``
INT64 [B], ``category`` BYTES [B], ``probabilities`` FP32 [B, C] (the bundle's label order). Concurrent requests
are merged into one forward pass (:mod:`serving.batching`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest, InferResponse

from rakuten_mm.config import resolve_device
from rakuten_mm.model import Classifier, load_bundle
from rakuten_mm.text import text_present
from serving import codec, contract
from serving.batching import MicroBatcher, TensorBatch, merge, split
from serving.errors import client_errors, reject_v1
from serving.settings import PredictorSettings, check_products, check_text


@dataclass
class _Call:
    """One request on its way through preprocess → predict → postprocess."""

    request: InferRequest
    batch: TensorBatch
    probabilities: np.ndarray | None = None


class RakutenPredictor(contract.ContractModel):
    def __init__(self, name: str, settings: PredictorSettings) -> None:
        super().__init__(name)
        self.settings = settings
        self.classifier: Classifier | None = None
        self.batcher: MicroBatcher[TensorBatch, np.ndarray] | None = None

    def load(self) -> bool:
        """Verify and load the bundle (local dir, s3:// URI or the KServe mount); ready only afterwards."""
        self.classifier = load_bundle(self.settings.model_dir, resolve_device(self.settings.device),
                                      self.settings.precision)
        self.batcher = MicroBatcher(self._forward, max_batch_size=self.settings.max_batch_size,
                                    max_delay_ms=self.settings.max_batch_delay_ms, rows=lambda b: b.rows,
                                    name=self.name)
        self.ready = True
        return self.ready

    def stop(self) -> None:
        self.ready = False
        if self.batcher is not None:
            self.batcher.close()

    @property
    def _model(self) -> Classifier:
        if self.classifier is None:
            raise RuntimeError("the predictor is used before load()")
        return self.classifier

    def get_input_types(self) -> list[dict[str, Any]]:
        return contract.hop_input_types()

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> _Call:
        if not isinstance(payload, InferRequest):
            reject_v1(self.name, "the predictor takes the hop's V2 tensors: " + ", ".join(contract.HOP_INPUTS))
        first = contract.check_hop_parameters(payload.parameters)
        codec.check_requested_outputs(payload, list(contract.OUTPUTS))
        tensors = codec.find_inputs(payload, contract.HOP_INPUTS, required=("designation",))
        # Cleaning + tokenising up to --max-products long texts: off the event loop, which keeps answering probes.
        return _Call(payload, await asyncio.to_thread(self.tensor_batch, tensors, first))

    def tensor_batch(self, tensors: dict[str, np.ndarray], first: int = 0) -> TensorBatch:
        """Check the hop's tensors (shapes, limits, agreeing batch sizes), tokenise → a :class:`TensorBatch`."""
        designations = codec.bytes_column("designation", tensors["designation"], None)
        assert designations is not None
        rows = len(designations)
        with client_errors():
            check_products(rows, self.settings.max_products)
        descriptions = codec.bytes_column("description", tensors.get("description"), rows) or [b""] * rows
        with client_errors():
            check_text(designations, descriptions, self.settings.max_text_chars, first)
        image, mask = tensors.get("image"), tensors.get("image_mask")
        if image is not None and (image.ndim != 4 or list(image.shape[1:]) != contract.CANONICAL_SHAPE):
            raise InvalidInput(f"input 'image': shape must be [B, {', '.join(map(str, contract.CANONICAL_SHAPE))}] "
                               f"(the canonical transport form), got {list(image.shape)}")
        if mask is not None and mask.ndim != 1:
            raise InvalidInput(f"input 'image_mask': shape must be [B], got {list(mask.shape)}")
        for name, arr in (("image", image), ("image_mask", mask)):
            if arr is not None and arr.shape[0] != rows:
                raise InvalidInput(f"batch sizes disagree: designation has {rows} rows, {name} has {arr.shape[0]}; "
                                   "allowed: the same B for every input")
        if mask is None:
            mask = np.full(rows, image is not None)
        elif image is None and mask.any():
            raise InvalidInput("input 'image_mask' marks rows as having an image but no 'image' tensor was sent; "
                               "allowed: send 'image' too, or an all-false mask")
        token_ids = self._model.pre.encode_text(designations, descriptions)
        if (empty := np.flatnonzero(~text_present(token_ids) & ~mask)).size:
            raise InvalidInput(f"product {first + int(empty[0])} has no usable text (no word is left in its "
                               "designation and description after cleaning) and no image; allowed: a designation "
                               "with at least one word, or an image")
        return TensorBatch(token_ids, image, np.asarray(mask, dtype=bool), designations, descriptions)

    def _forward(self, batches: list[TensorBatch]) -> list[np.ndarray]:
        """Runs in the batcher's thread: one merged forward (chunked at ``max_batch_size`` rows)."""
        merged = merge(batches)
        step = max(self.settings.max_batch_size, 1)
        out = []
        for start in range(0, merged.rows, step):
            stop = start + step
            images = merged.images[start:stop] if merged.images is not None else None
            texts = (merged.designations[start:stop], merged.descriptions[start:stop])
            out.append(self._model.predict_tensors(merged.token_ids[start:stop], images, merged.image_mask[start:stop],
                                                   texts))
        return split(np.concatenate(out) if len(out) > 1 else out[0], batches)

    async def predict(self, payload: _Call, headers: dict[str, str] | None = None) -> _Call:
        if self.batcher is None:
            raise RuntimeError("the predictor is used before load()")
        payload.probabilities = await self.batcher.submit(payload.batch)
        return payload

    async def postprocess(self, result: _Call, headers: dict[str, str] | None = None,
                          response_headers: dict[str, str] | None = None) -> InferResponse:
        assert result.probabilities is not None
        probs = np.ascontiguousarray(result.probabilities, dtype=np.float32)
        labels = self._model.labels
        best = probs.argmax(axis=1)
        return codec.respond(result.request, self.name, {
            "prdtypecode": np.asarray(labels.codes, dtype=np.int64)[best],
            "category": np.array([labels.names[i].encode("utf-8") for i in best], dtype=object),
            "probabilities": probs})
