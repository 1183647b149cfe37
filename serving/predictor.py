"""The KServe predictor: loads a bundle and answers V2 infer on tensors (LSTM + VGG16 + weighted ensemble).

Inputs (``GET /v2/models/rakuten`` lists them):

- ``token_ids`` INT64 [B, L] (required): token ids from the bundle's vocabulary, right-padded with 0; an all-zero
  row means "no text". Rows longer than the bundle's ``max_tokens`` are truncated to it, as the transformer does.
- ``image`` UINT8 [B, 3, S, S] (optional): RGB pixels already resized to the bundle's image size S (``to_uint8`` of
  the shared image preset). Normalisation happens here, on the predictor's device.
- ``image_mask`` BOOL [B] (optional): which rows carry an image. Without it, every row of ``image`` counts as
  present; without ``image``, no row has one and the text member answers alone.

Outputs: ``probabilities`` FP32 [B, C] (C = 27 classes, in the bundle's label order) and ``prdtypecode`` INT64 [B].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest, InferResponse

from rakuten_mm.bundle import Classifier, load_bundle
from rakuten_mm.config import resolve_device
from serving import codec
from serving.batching import MicroBatcher, TensorBatch, merge, split
from serving.errors import reject_v1

INPUTS = {"token_ids": "INT64", "image": "UINT8", "image_mask": "BOOL"}
OUTPUTS = ("probabilities", "prdtypecode")
DEFAULT_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts storageUri


@dataclass(frozen=True)
class PredictorSettings:
    """Everything the predictor is configured with; built once by ``serving.cli``."""

    model_dir: str = DEFAULT_MODEL_DIR
    device: str = "auto"
    max_batch_size: int = 16
    max_batch_delay_ms: float = 5.0


@dataclass
class _Call:
    """One request on its way through preprocess → predict → postprocess."""

    request: InferRequest
    batch: TensorBatch
    probabilities: np.ndarray | None = None


class RakutenPredictor(Model):
    def __init__(self, name: str, settings: PredictorSettings) -> None:
        super().__init__(name)
        self.settings = settings
        self.classifier: Classifier | None = None
        self.batcher: MicroBatcher[TensorBatch, np.ndarray] | None = None

    def load(self) -> bool:
        """Verify and load the bundle (local dir, s3:// URI or the KServe mount); ready only afterwards."""
        self.classifier = load_bundle(self.settings.model_dir, resolve_device(self.settings.device))
        self.batcher = MicroBatcher(self._forward, max_batch_size=self.settings.max_batch_size,
                                    max_delay_ms=self.settings.max_batch_delay_ms, rows=lambda b: b.rows,
                                    name=self.name)
        self.ready = True
        return self.ready

    def start(self) -> None:
        """KServe's default marks any model ready here; readiness comes from :meth:`load` only."""

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
        size = self._model.pre.image_preset.size
        return [{"name": "token_ids", "datatype": "INT64", "shape": [-1, -1]},
                {"name": "image", "datatype": "UINT8", "shape": [-1, 3, size, size]},
                {"name": "image_mask", "datatype": "BOOL", "shape": [-1]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(self._model.labels)]},
                {"name": "prdtypecode", "datatype": "INT64", "shape": [-1]}]

    def validate(self, payload: Any) -> Any:
        return payload  # preprocess already checked every tensor

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> _Call:
        if not isinstance(payload, InferRequest):
            reject_v1(self.name, "the predictor takes V2 tensors (token_ids, image, image_mask)")
        codec.check_requested_outputs(payload, OUTPUTS)
        tensors = codec.find_inputs(payload, INPUTS, required=("token_ids",))
        return _Call(payload, self.tensor_batch(tensors))

    def tensor_batch(self, tensors: dict[str, np.ndarray]) -> TensorBatch:
        """Check the tensor contract (shapes, ranges, agreeing batch sizes) → a :class:`TensorBatch`."""
        model = self._model
        token_ids = tensors["token_ids"]
        if token_ids.ndim != 2 or token_ids.shape[1] < 1:
            raise InvalidInput(f"input 'token_ids': shape must be [B, L] with L >= 1, got {list(token_ids.shape)}")
        rows = token_ids.shape[0]
        if rows == 0:
            raise InvalidInput("the batch is empty: token_ids has 0 rows; allowed: at least 1 row")
        vocab = len(model.pre.vocab)
        if token_ids.min() < 0 or token_ids.max() >= vocab:
            raise InvalidInput(f"input 'token_ids': ids must lie in [0, {vocab}) (the bundle's vocabulary), got "
                               f"[{int(token_ids.min())}, {int(token_ids.max())}]")
        # A copy: binary inputs are read-only views of the request body, which torch warns about.
        token_ids = np.array(token_ids[:, : model.pre.cleaning.max_tokens], dtype=np.int64)
        image, mask = tensors.get("image"), tensors.get("image_mask")
        size = model.pre.image_preset.size
        if image is not None and (image.ndim != 4 or list(image.shape[1:]) != [3, size, size]):
            raise InvalidInput(f"input 'image': shape must be [B, 3, {size}, {size}] (the bundle's image size), "
                               f"got {list(image.shape)}")
        if mask is not None and mask.ndim != 1:
            raise InvalidInput(f"input 'image_mask': shape must be [B], got {list(mask.shape)}")
        for name, arr in (("image", image), ("image_mask", mask)):
            if arr is not None and arr.shape[0] != rows:
                raise InvalidInput(f"batch sizes disagree: token_ids has {rows} rows, {name} has {arr.shape[0]}; "
                                   "allowed: the same B for every input")
        if mask is None:
            mask = np.full(rows, image is not None)
        elif image is None and mask.any():
            raise InvalidInput("input 'image_mask' marks rows as having an image but no 'image' tensor was sent; "
                               "allowed: send 'image' too, or an all-false mask")
        return TensorBatch(token_ids, image, mask)

    def _forward(self, batches: list[TensorBatch]) -> list[np.ndarray]:
        """Runs in the batcher's thread: one merged forward (chunked at ``max_batch_size`` rows)."""
        merged = merge(batches)
        step = max(self.settings.max_batch_size, 1)
        out = []
        for start in range(0, merged.rows, step):
            stop = start + step
            images = merged.images[start:stop] if merged.images is not None else None
            out.append(self._model.predict_tensors(merged.token_ids[start:stop], images, merged.image_mask[start:stop]))
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
        codes = np.asarray(self._model.labels.codes, dtype=np.int64)[probs.argmax(axis=1)]
        request = result.request
        return InferResponse(response_id=codec.response_id(request), model_name=self.name,
                             model_version=codec.MODEL_VERSION,
                             infer_outputs=[codec.to_output("probabilities", probs),
                                            codec.to_output("prdtypecode", codes)],
                             use_binary_outputs=request.use_binary_outputs,
                             requested_outputs=request.request_outputs)
