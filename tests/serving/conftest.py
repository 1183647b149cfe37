"""Serving fixtures: two tiny bundles, both servers as real processes on free loopback ports, sample payloads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from serving_helpers import (
    MAX_IMAGE_PIXELS,
    MAX_PRODUCTS,
    MAX_REQUEST_BYTES,
    MAX_REQUEST_PIXELS,
    MAX_TEXT_CHARS,
    image_bytes,
)

from devtools.local_servers import LocalServers


@pytest.fixture(scope="session")
def serving_bundle(tiny_bundle: Path) -> Path:
    """Bundle A: the session's tiny bundle (synth 200 products, 2+2 epochs, 32 px, random VGG16 base), shared with
    the core tests so that it is trained once per session."""
    return tiny_bundle


@pytest.fixture(scope="session")
def other_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bundle B: other data, another seed and another image size (48 px) than bundle A, so its vocabulary, token
    ids, preset and weights all differ."""
    from rakuten_mm.config import TrainConfig
    from rakuten_mm.synth import generate
    from rakuten_mm.training import train

    data = generate(tmp_path_factory.mktemp("synth-b") / "data", products=200, seed=7, image_size=48).root
    cfg = TrainConfig(epochs_text=2, epochs_image=2, image_size=48, image_weights="none", batch_size=32, seed=7)
    return Path(train(str(data), str(tmp_path_factory.mktemp("bundle-b") / "bundle"), cfg).bundle_uri)


@pytest.fixture(scope="session")
def servers(serving_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServers]:
    """Predictor + transformer as real processes (``rakuten serve ...``) bound to 127.0.0.1, stopped by PID."""
    local = LocalServers(serving_bundle, log_dir=tmp_path_factory.mktemp("serve-logs"),
                         predictor_args=["--max-batch-size", "8", "--max-batch-delay-ms", "20",
                                         "--max-request-bytes", str(MAX_REQUEST_BYTES)],
                         transformer_args=["--max-request-bytes", str(MAX_REQUEST_BYTES),
                                           "--max-image-pixels", str(MAX_IMAGE_PIXELS),
                                           "--max-request-pixels", str(MAX_REQUEST_PIXELS),
                                           "--max-products", str(MAX_PRODUCTS), "--hop-products", "8",
                                           "--max-text-chars", str(MAX_TEXT_CHARS)])
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
