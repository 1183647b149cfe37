"""KServe's ``ModelServer`` with the project's request handling in front of KServe's own routes.

What it adds, and why:

- ``POST /v2/models/{name}[/versions/{v}]/infer`` decodes the body with :mod:`serving.codec` (binary tensors stay
  numpy arrays; every malformed body is a 400 with a message instead of a 422 or 500), accepts
  ``Content-Encoding: gzip|deflate`` (as tritonclient can send), then runs KServe's data plane as usual.
- Versioned paths answer for :data:`MODEL_VERSION` (the loaded bundle) and 404 for other versions; KServe's own
  answer them with 501. ``GET /v2/`` answers like ``GET /v2``. Model metadata lists ``versions``.
- A request body limit (``--max-request-bytes``; KServe sets none, kserve#2810): larger bodies get 400.
- ``--bind_host``: KServe always binds 0.0.0.0; local runs and tests bind 127.0.0.1.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import ORJSONResponse
from kserve import ModelServer
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import InvalidInput, ModelNotReady
from kserve.model import BaseKServeModel
from kserve.protocol.dataplane import DataPlane

from serving import codec
from serving.errors import UnknownModel

MODEL_VERSION = codec.MODEL_VERSION
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
_DRAIN_CAP = 64 * 1024 * 1024  # an over-limit body is read (and dropped) up to this much, so the client sees the 400

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _too_large(limit: int, got: str) -> bytes:
    return orjson.dumps({"error": f"the request body is too large: allowed at most {limit} bytes "
                                  f"(--max-request-bytes), got {got} bytes"})


class RequestSizeLimit:
    """ASGI middleware: a POST body over ``max_bytes`` (declared or streamed) gets 400 before any parsing."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(receive, send, declared.decode())
            return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                await self._reject(receive, send, f"more than {self.max_bytes}", more=message.get("more_body", False))
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, receive: Receive, send: Send, got: str, more: bool = True) -> None:
        drained = 0
        while more and drained < _DRAIN_CAP:  # read the rest so the client is not cut off mid-upload
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            drained += len(message.get("body", b""))
            more = message.get("more_body", False)
        body = _too_large(self.max_bytes, got)
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (gzip or deflate), refusing results over ``limit`` bytes (zip bombs)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise InvalidInput(f"Content-Encoding {encoding!r} is not supported; allowed: identity, gzip, deflate")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"the {encoding} request body cannot be decompressed: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise InvalidInput(f"the request body is too large once decompressed: allowed at most {limit} bytes "
                           "(--max-request-bytes)")
    if not inflater.eof:
        raise InvalidInput(f"the {encoding} request body is truncated")
    return out


async def _validation_error(_: Request, exc: Exception) -> ORJSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    where = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors[:3])
    return ORJSONResponse(status_code=400, content={"error": f"the request does not fit the endpoint: {where}"})


class Routes:
    """The handlers registered ahead of KServe's; they reuse KServe's data plane."""

    def __init__(self, dataplane: DataPlane, max_request_bytes: int) -> None:
        self.dataplane = dataplane
        self.max_request_bytes = max_request_bytes

    def check_model(self, model_name: str, version: str | None = None) -> None:
        served = sorted(self.dataplane.model_registry.get_models())
        if model_name not in served:
            raise UnknownModel(f"model {model_name!r} is not served here; allowed: {served}")
        if version is not None and version != MODEL_VERSION:
            raise UnknownModel(f"model {model_name!r} has no version {version!r}; allowed versions: "
                               f"[{MODEL_VERSION!r}] (or no /versions/ segment)")

    async def infer(self, request: Request, model_name: str) -> Response:
        return await self._infer(request, model_name, None)

    async def infer_version(self, request: Request, model_name: str, model_version: str) -> Response:
        return await self._infer(request, model_name, model_version)

    async def _infer(self, request: Request, model_name: str, version: str | None) -> Response:
        self.check_model(model_name, version)
        if not await self.dataplane.model_ready(model_name, True):
            raise ModelNotReady(model_name)
        body = decompress(await request.body(), request.headers.get("content-encoding"), self.max_request_bytes)
        infer_request = codec.parse_request(body, request.headers.get(INFERENCE_CONTENT_LENGTH_HEADER), model_name)
        headers = dict(request.headers)
        response, response_headers = await self.dataplane.infer(model_name=model_name, request=infer_request,
                                                                headers=headers)
        content, extra = self.dataplane.encode(model_name=model_name, response=response, headers=headers,
                                               req_attributes={})
        response_headers = {**response_headers, **extra}
        for key in ("content-length", "content-type"):
            response_headers.pop(key, None)
        if isinstance(content, bytes):
            return Response(content=content, headers=response_headers, media_type="application/octet-stream")
        return ORJSONResponse(content=content, headers=response_headers)

    async def metadata(self, model_name: str) -> dict[str, Any]:
        self.check_model(model_name)
        return {**await self.dataplane.model_metadata(model_name), "versions": [MODEL_VERSION]}

    async def metadata_version(self, model_name: str, model_version: str) -> dict[str, Any]:
        self.check_model(model_name, model_version)
        return await self.metadata(model_name)

    async def ready_version(self, model_name: str, model_version: str) -> dict[str, Any]:
        self.check_model(model_name, model_version)
        if not await self.dataplane.model_ready(model_name):
            raise ModelNotReady(model_name)
        return {"name": model_name, "ready": True}

    async def server_metadata(self) -> dict[str, Any]:
        return self.dataplane.metadata()

    def router(self) -> APIRouter:
        router = APIRouter()
        router.add_api_route("/v2/", self.server_metadata, methods=["GET"])
        router.add_api_route("/v2/models/{model_name}", self.metadata, methods=["GET"])
        router.add_api_route("/v2/models/{model_name}/versions/{model_version}", self.metadata_version,
                             methods=["GET"])
        router.add_api_route("/v2/models/{model_name}/versions/{model_version}/ready", self.ready_version,
                             methods=["GET"])
        router.add_api_route("/v2/models/{model_name}/infer", self.infer, methods=["POST"])
        router.add_api_route("/v2/models/{model_name}/versions/{model_version}/infer", self.infer_version,
                             methods=["POST"])
        return router


def install(app: FastAPI, dataplane: DataPlane, max_request_bytes: int) -> None:
    """Put the project's routes, body limit and 400 handler on KServe's app (before KServe adds its routes)."""
    if getattr(app.state, "rakuten_routes", False):
        return
    app.state.rakuten_routes = True
    app.add_middleware(RequestSizeLimit, max_bytes=max_request_bytes)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(Routes(dataplane, max_request_bytes).router())


class RakutenModelServer(ModelServer):
    """``kserve.ModelServer`` + :func:`install` + a configurable bind address (one uvicorn worker)."""

    def __init__(self, *, bind_host: str = "0.0.0.0", max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bind_host = bind_host
        self.max_request_bytes = max_request_bytes

    def start(self, models: list[BaseKServeModel]) -> None:
        from kserve.model_server import app

        install(app, self.dataplane, self.max_request_bytes)
        super().start(models)

    async def _serve(self) -> None:
        # ModelServer.start has built the uvicorn config (host 0.0.0.0) but not bound it yet.
        if self._rest_server is not None:
            self._rest_server.config.host = self.bind_host
        await super()._serve()
