"""Serving fixtures: the tiny bundle, both servers as real processes on free loopback ports, sample payloads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from serving_helpers import image_bytes

from serving.local import LocalServers

# Small limits so that the "too large" cases of the bad-input table stay cheap.
MAX_REQUEST_BYTES = 2_000_000
MAX_IMAGE_PIXELS = 1_000_000


@pytest.fixture(scope="session")
def serving_bundle(tiny_bundle: Path) -> Path:
    """The session's tiny bundle (synth 200 products, 2+2 epochs, 32 px, random VGG16 base), shared with the
    core tests so that the bundle is trained once per session."""
    return tiny_bundle


@pytest.fixture(scope="session")
def servers(serving_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServers]:
    """Predictor + transformer as real processes (``rakuten serve ...``) bound to 127.0.0.1, stopped by PID."""
    local = LocalServers(serving_bundle, log_dir=tmp_path_factory.mktemp("serve-logs"),
                         predictor_args=["--max-batch-size", "8", "--max-batch-delay-ms", "20",
                                         "--max-request-bytes", str(MAX_REQUEST_BYTES)],
                         transformer_args=["--max-request-bytes", str(MAX_REQUEST_BYTES),
                                           "--max-image-pixels", str(MAX_IMAGE_PIXELS), "--max-text-chars", "5000"])
    local.start(timeout=180)
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def transformer_url(servers: LocalServers) -> str:
    assert servers.transformer is not None
    return servers.transformer.url


@pytest.fixture(scope="session")
def predictor_url(servers: LocalServers) -> str:
    assert servers.predictor is not None
    return servers.predictor.url


@pytest.fixture(scope="session")
def jpeg() -> bytes:
    return image_bytes()


@pytest.fixture(scope="session")
def png() -> bytes:
    return image_bytes(fmt="PNG", color=(10, 120, 240))
