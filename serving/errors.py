"""Typed serving errors, each mapped to one status code, all answered as ``{"error": "..."}``:

- :class:`kserve.errors.InvalidInput` → 400 (client errors; messages say what was allowed and what arrived;
  :func:`client_errors` turns the core's :class:`rakuten_mm.errors.InputError` into it),
- :class:`UnknownModel` (a ``ModelNotFound``) and :class:`RouteOff` → 404,
- :class:`PredictorUnavailable` (a ``ModelNotReady``) → 503,
- :class:`PredictorTimeout` → 504 (the predictor did not answer within the hop timeout).

KServe's handlers answer the first three; :func:`install_handlers` adds the rest, plus ``{"error"}`` bodies for
Starlette's own 404/405. A 500 means a bug.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from fastapi import FastAPI, Request
from fastapi.responses import ORJSONResponse
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
from starlette.exceptions import HTTPException

from rakuten_mm.errors import InputError


class UnknownModel(ModelNotFound):
    """A model name (or version) this server does not serve."""

    def __init__(self, message: str) -> None:
        super().__init__(None)
        self.reason = message


class PredictorUnavailable(ModelNotReady):
    """The transformer cannot get an answer from its predictor (unreachable or not ready)."""

    def __init__(self, model_name: str, message: str) -> None:
        super().__init__(model_name)
        self.error_msg = message


class PredictorTimeout(Exception):
    """The predictor accepted the connection but did not answer within the hop timeout (wedged or overloaded)."""


class RouteOff(Exception):
    """A route this server has but does not serve with the current flags (e.g. the model repository API)."""


@contextmanager
def client_errors(prefix: str = "") -> Iterator[None]:
    """Turn the core's :class:`InputError` (a bad product) into a 400."""
    try:
        yield
    except InputError as exc:
        raise InvalidInput(f"{prefix}{exc}") from None


def reject_v1(model_name: str, what: str) -> NoReturn:
    raise InvalidInput(f"this endpoint of model {model_name!r} speaks the V2 protocol only ({what}); "
                       f"allowed: POST /v2/models/{model_name}/infer")


async def _http_error(request: Request, exc: Exception) -> ORJSONResponse:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
    headers = exc.headers if isinstance(exc, HTTPException) else None
    return ORJSONResponse(status_code=status, headers=headers,
                          content={"error": f"{detail}: {request.method} {request.url.path}"})


async def _timeout(_: Request, exc: Exception) -> ORJSONResponse:
    return ORJSONResponse(status_code=504, content={"error": str(exc)})


async def _route_off(_: Request, exc: Exception) -> ORJSONResponse:
    return ORJSONResponse(status_code=404, content={"error": str(exc)})


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(PredictorTimeout, _timeout)
    app.add_exception_handler(RouteOff, _route_off)
