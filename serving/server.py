"""KServe's ``ModelServer`` with the project's request handling in front of KServe's own routes.

What it adds, and why:

- ``POST /v2/models/{name}[/versions/{v}]/infer`` decodes the body with :mod:`serving.codec` (binary tensors stay
  numpy arrays; every malformed body is a 400 with a message instead of a 422 or 500), accepts
  ``Content-Encoding: gzip|deflate`` (as tritonclient can send), then runs KServe's data plane as usual.
- Readiness that does not lie: ``GET /v2/health/ready``, ``/v2/models/{name}[/versions/{v}]/ready`` and
  ``/v1/models/{name}`` answer 503 unless the served model is loaded and ready and, for the transformer, its
  predictor answers that it is ready (KServe's own answer 200 with no model loaded).
- The model repository API (``/v2/repository/models/{name}/load|unload``: anyone could unload the model) answers
  404 unless ``--enable-model-repository`` (trusted networks only).
- ``POST /v1/models/{name}:predict``: an empty binary CloudEvent is a 400 (KServe: a 500 and a reset connection).
- Every error body is ``{"error": "..."}``, Starlette's 404/405 included; ``/openapi.json`` only with
  ``--enable_docs_url true``.
- Versioned paths answer for :data:`MODEL_VERSION` and 404 for other versions; KServe's own answer them with 501.
  ``GET /v2/`` answers like ``GET /v2``. Model metadata lists ``versions``.
- A request body limit (``--max-request-bytes``; KServe sets none, kserve#2810): larger bodies get 400.
- ``--bind_host``: KServe always binds 0.0.0.0; local runs and tests bind 127.0.0.1.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, ORJSONResponse
from kserve import ModelServer
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import InvalidInput, ModelNotReady, ServerNotReady
from kserve.model import BaseKServeModel
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.rest.v1_endpoints import V1Endpoints

from serving import codec, kserve_compat
from serving.contract import MODEL_VERSION
from serving.errors import RouteOff, UnknownModel, install_handlers

CLOUDEVENT_HEADERS = ("ce-specversion", "ce-id", "ce-source", "ce-type")
_DRAIN_CAP = 64 * 2**20  # an over-limit body is read (and dropped) up to this much, so the client sees the 400

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


@dataclass(frozen=True)
class ServerOptions:
    """The HTTP-level options of one server (the model's own settings are in :mod:`serving.settings`)."""

    model_name: str
    max_request_bytes: int
    enable_model_repository: bool = False
    enable_docs_url: bool = False


class Routes:
    """The handlers registered ahead of KServe's; they reuse KServe's data plane."""

    def __init__(self, dataplane: DataPlane, options: ServerOptions) -> None:
        self.dataplane = dataplane
        self.options = options

    def check_model(self, model_name: str, version: str | None = None) -> None:
        served = sorted(self.dataplane.model_registry.get_models())
        if model_name not in served:
            raise UnknownModel(f"model {model_name!r} is not served here; allowed: {served}")
        if version is not None and version != MODEL_VERSION:
            raise UnknownModel(f"model {model_name!r} has no version {version!r}; allowed versions: "
                               f"[{MODEL_VERSION!r}] (or no /versions/ segment)")

    async def check_ready(self, model_name: str) -> None:
        """503 unless the model is loaded and ready, and its upstream (the transformer's predictor) is too."""
        model = self.dataplane.model_registry.get_model(model_name)
        if model is None or not model.ready:
            raise ModelNotReady(model_name, "It is not loaded.")
        upstream = getattr(model, "check_upstream", None)
        if upstream is not None:
            await upstream()

    async def infer(self, request: Request, model_name: str) -> Response:
        return await self._infer(request, model_name, None)

    async def infer_version(self, request: Request, model_name: str, model_version: str) -> Response:
        return await self._infer(request, model_name, model_version)

    async def _infer(self, request: Request, model_name: str, version: str | None) -> Response:
        self.check_model(model_name, version)
        if not await self.dataplane.model_ready(model_name, True):
            raise ModelNotReady(model_name)
        body = decompress(await request.body(), request.headers.get("content-encoding"),
                          self.options.max_request_bytes)
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

    async def v1_predict(self, request: Request, model_name: str) -> Response | dict[str, Any]:
        self.check_model(model_name)
        if any(h in request.headers for h in CLOUDEVENT_HEADERS) and not await request.body():
            raise InvalidInput("the binary CloudEvent has no data; allowed: a JSON body such as "
                               '{"instances": [{"designation": ...}]}')
        result: Response | dict[str, Any] = await V1Endpoints(self.dataplane).predict(model_name, request)
        return result

    async def metadata(self, model_name: str) -> dict[str, Any]:
        self.check_model(model_name)
        return {**await self.dataplane.model_metadata(model_name), "versions": [MODEL_VERSION]}

    async def metadata_version(self, model_name: str, model_version: str) -> dict[str, Any]:
        self.check_model(model_name, model_version)
        return await self.metadata(model_name)

    async def ready(self, model_name: str) -> dict[str, Any]:
        self.check_model(model_name)
        await self.check_ready(model_name)
        return {"name": model_name, "ready": True}

    async def ready_version(self, model_name: str, model_version: str) -> dict[str, Any]:
        self.check_model(model_name, model_version)
        return await self.ready(model_name)

    async def server_ready(self) -> dict[str, Any]:
        try:
            await self.check_ready(self.options.model_name)
        except ModelNotReady as exc:
            raise ServerNotReady(str(exc)) from None
        return {"ready": True}

    async def server_metadata(self) -> dict[str, Any]:
        return self.dataplane.metadata()

    async def repository_off(self, model_name: str) -> None:
        raise RouteOff("the model repository API (load/unload) is off on this server; start it with "
                       "--enable-model-repository to turn it on (trusted networks only: it lets any caller unload "
                       "the model)")

    def router(self) -> APIRouter:
        router = APIRouter()
        router.add_api_route("/v2/", self.server_metadata, methods=["GET"])
        router.add_api_route("/v2/health/ready", self.server_ready, methods=["GET"])
        router.add_api_route("/v2/models/{model_name}", self.metadata, methods=["GET"])
        router.add_api_route("/v2/models/{model_name}/versions/{model_version}", self.metadata_version,
                             methods=["GET"])
        router.add_api_route("/v2/models/{model_name}/ready", self.ready, methods=["GET"])
        router.add_api_route("/v2/models/{model_name}/versions/{model_version}/ready", self.ready_version,
                             methods=["GET"])
        router.add_api_route("/v2/models/{model_name}/infer", self.infer, methods=["POST"])
        router.add_api_route("/v2/models/{model_name}/versions/{model_version}/infer", self.infer_version,
                             methods=["POST"])
        router.add_api_route("/v1/models/{model_name}", self.ready, methods=["GET"])
        router.add_api_route("/v1/models/{model_name}:predict", self.v1_predict, methods=["POST"],
                             response_model=None)
        if not self.options.enable_model_repository:
            for action in ("load", "unload"):
                router.add_api_route(f"/v2/repository/models/{{model_name}}/{action}", self.repository_off,
                                     methods=["POST"])
        return router


def install(app: FastAPI, dataplane: DataPlane, options: ServerOptions) -> None:
    """Put the project's routes, body limit and error handlers on KServe's app (before KServe adds its routes)."""
    if getattr(app.state, "rakuten_routes", False):
        return
    app.state.rakuten_routes = True
    if not options.enable_docs_url:  # KServe's app always serves the schema; the docs flag only adds /docs
        off = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url} - {None}
        app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) not in off]
        app.openapi_url = app.docs_url = app.redoc_url = None
    elif app.openapi_url is not None and app.docs_url is None:
        url = app.openapi_url

        async def docs() -> HTMLResponse:
            return get_swagger_ui_html(openapi_url=url, title=app.title)

        app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)
    app.add_middleware(RequestSizeLimit, max_bytes=options.max_request_bytes)
    app.add_exception_handler(RequestValidationError, _validation_error)
    install_handlers(app)
    app.include_router(Routes(dataplane, options).router())


class RakutenModelServer(ModelServer):
    """``kserve.ModelServer`` + :func:`install` + a configurable bind address (one uvicorn worker)."""

    def __init__(self, *, bind_host: str = "0.0.0.0", options: ServerOptions, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bind_host = bind_host
        self.options = options

    def start(self, models: list[BaseKServeModel]) -> None:
        from kserve.model_server import app

        install(app, self.dataplane, self.options)
        super().start(models)

    def setup_event_loop(self) -> None:
        # ModelServer.start calls this after building the REST server and before serving: bind it here.
        super().setup_event_loop()
        kserve_compat.set_bind_host(self, self.bind_host)
