"""The serving contracts, defined once: what clients send and get, and the transformer → predictor hop.

Client → transformer (model ``rakuten``): ``designation`` BYTES [B] (required), ``description`` BYTES [B] and
``image`` BYTES [B] (raw JPEG/PNG/... bytes, base64 strings in JSON; an empty element = absent).

Transformer → predictor, the hop (:data:`HOP_INPUTS`, binary tensor extension, request parameter
``contract_version`` = :data:`CONTRACT_VERSION`): ``designation`` and ``description`` BYTES [B] (the client's UTF-8
text, unchanged), ``image`` UINT8 [B, 3, 256, 256] in the canonical transport form
(:func:`rakuten_mm.image.to_canonical`) and ``image_mask`` BOOL [B]. Nothing in it depends on a bundle: any
transformer in front of any predictor answers what that predictor's bundle answers (a canary splits the two
components' traffic independently). The predictor refuses another contract version with a 400 naming both.
Parameter ``first_product`` (the chunk's first row in the client's request) only makes the predictor's error
messages name the client's row numbers.

Both answer :data:`OUTPUTS`: ``prdtypecode`` INT64 [B], ``category`` BYTES [B], ``probabilities`` FP32 [B, 27].
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kserve import Model
from kserve.errors import InvalidInput

from rakuten_mm.image import CANONICAL_SIZE
from rakuten_mm.labels import KNOWN_CODES

MODEL_VERSION = "1"  # versioned paths answer for this version only
# Version 1 (until 2026-12) carried bundle-specific token ids; 2 carries raw text and canonical images.
CONTRACT_VERSION = "2"
CONTRACT_PARAMETER = "contract_version"
FIRST_PRODUCT_PARAMETER = "first_product"

CLIENT_INPUTS = {"designation": "BYTES", "description": "BYTES", "image": "BYTES"}
HOP_INPUTS = {"designation": "BYTES", "description": "BYTES", "image": "UINT8", "image_mask": "BOOL"}
CANONICAL_SHAPE = [3, CANONICAL_SIZE, CANONICAL_SIZE]
OUTPUTS = {"prdtypecode": ("INT64", [-1]), "category": ("BYTES", [-1]),
           "probabilities": ("FP32", [-1, len(KNOWN_CODES)])}
V1_KEYS = ("designation", "description", "image")


def client_input_types() -> list[dict[str, Any]]:
    return [{"name": name, "datatype": datatype, "shape": [-1]} for name, datatype in CLIENT_INPUTS.items()]


def hop_input_types() -> list[dict[str, Any]]:
    shapes = {"image": [-1, *CANONICAL_SHAPE]}
    return [{"name": name, "datatype": datatype, "shape": shapes.get(name, [-1])}
            for name, datatype in HOP_INPUTS.items()]


def output_types() -> list[dict[str, Any]]:
    return [{"name": name, "datatype": datatype, "shape": shape} for name, (datatype, shape) in OUTPUTS.items()]


def hop_parameters(first_product: int) -> dict[str, Any]:
    return {CONTRACT_PARAMETER: CONTRACT_VERSION, FIRST_PRODUCT_PARAMETER: first_product}


def check_hop_parameters(parameters: Mapping[str, Any] | None) -> int:
    """The hop's request parameters → the first product's row number; 400 on a missing or other contract."""
    params = parameters or {}
    got = params.get(CONTRACT_PARAMETER)
    if got is None:
        raise InvalidInput(f"the request has no parameters.{CONTRACT_PARAMETER}; this predictor speaks hop contract "
                           f"{CONTRACT_VERSION!r} (inputs {', '.join(HOP_INPUTS)}): send "
                           f'"parameters": {{"{CONTRACT_PARAMETER}": "{CONTRACT_VERSION}"}}')
    if str(got) != CONTRACT_VERSION:
        raise InvalidInput(f"hop contract mismatch: the request speaks contract_version {str(got)!r}, this predictor "
                           f"speaks {CONTRACT_VERSION!r}; deploy a transformer and a predictor of the same contract")
    first = params.get(FIRST_PRODUCT_PARAMETER, 0)
    if not isinstance(first, int) or isinstance(first, bool) or first < 0:
        raise InvalidInput(f"parameters.{FIRST_PRODUCT_PARAMETER} must be a non-negative integer, got {first!r:.40}")
    return first


class ContractModel(Model):
    """What both servers' ``kserve.Model``s share: this module's outputs, readiness from ``load`` only, and
    ``preprocess`` as the one place requests are checked."""

    def start(self) -> None:
        """KServe's default marks any model ready here; readiness comes from ``load`` only."""

    def get_output_types(self) -> list[dict[str, Any]]:
        return output_types()

    def validate(self, payload: Any) -> Any:
        return payload  # preprocess checks the request
