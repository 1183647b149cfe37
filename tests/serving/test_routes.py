"""The project's routes on a fresh FastAPI app (no server process): docs and schema only on request."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.responses import ORJSONResponse
from fastapi.testclient import TestClient

from serving import kserve_compat

pytestmark = [pytest.mark.serving, pytest.mark.unit]


def _client(enable_docs_url: bool) -> TestClient:
    kserve_compat.import_model_server()
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane

    from serving.server import ServerOptions, install

    app = FastAPI(default_response_class=ORJSONResponse)  # KServe's app is created the same way (openapi on)
    install(app, DataPlane(ModelRepository()), ServerOptions("rakuten", 1024, enable_docs_url=enable_docs_url))
    return TestClient(app)


def test_schema_and_docs_are_off_by_default() -> None:
    client = _client(False)
    for path in ("/openapi.json", "/docs"):
        r = client.get(path)
        assert r.status_code == 404 and r.json() == {"error": f"Not Found: GET {path}"}


def test_enable_docs_url_serves_schema_and_docs() -> None:
    client = _client(True)
    assert client.get("/openapi.json").json()["paths"]
    assert "swagger" in client.get("/docs").text.lower()
