"""Typed serving errors. Each subclasses the KServe error whose handler gives the right status code:

- :class:`kserve.errors.InvalidInput` → 400 (used directly for client errors; messages say allowed vs got),
- :class:`UnknownModel` (a ``ModelNotFound``) → 404,
- :class:`PredictorUnavailable` (a ``ModelNotReady``) → 503,

all as ``{"error": "..."}``. A 500 means a bug.
"""

from __future__ import annotations

from typing import NoReturn

from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady


class UnknownModel(ModelNotFound):
    """A model name (or version) this server does not serve."""

    def __init__(self, message: str) -> None:
        super().__init__(None)
        self.reason = message


class PredictorUnavailable(ModelNotReady):
    """The transformer cannot get an answer from its predictor (unreachable, timing out, or not ready)."""

    def __init__(self, model_name: str, message: str) -> None:
        super().__init__(model_name)
        self.error_msg = message


def reject_v1(model_name: str, what: str) -> NoReturn:
    raise InvalidInput(f"this endpoint of model {model_name!r} speaks the V2 protocol only ({what}); "
                       f"allowed: POST /v2/models/{model_name}/infer")
