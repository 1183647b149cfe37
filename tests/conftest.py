"""Shared fixtures: tiny synthetic data, a tiny trained bundle, a real moto S3 server, the real-data sample."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.local_servers import free_port
from tests.support.paths import REAL_DATA

BIN = Path(sys.executable).parent


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(autouse=True, scope="session")
def _isolated_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every test session gets its own state dir (MLflow store, pipeline roots), never the user's."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAKUTEN_STATE_DIR", str(tmp_path_factory.mktemp("state")))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        env.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        yield


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset in the challenge layout (read-only for tests: copy it before changing it)."""
    from rakuten_mm.synth import generate

    return generate(tmp_path_factory.mktemp("synth") / "data", products=200, seed=0, image_size=32).root


@pytest.fixture(scope="session")
def tiny_bundle(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle trained in-process on ``synth_data`` (2 epochs, 32 px, random VGG16 base)."""
    from rakuten_mm.config import TrainConfig
    from rakuten_mm.training import train

    out = tmp_path_factory.mktemp("bundle") / "bundle"
    cfg = TrainConfig(epochs_text=2, epochs_image=2, image_size=32, image_weights="none", batch_size=32)
    return Path(train(str(synth_data), str(out), cfg).bundle_uri)


@pytest.fixture(scope="session")
def quality_bundle(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of the quality configuration: chartfidf + image on EfficientNet-Lite0 (random weights, 32 px),
    ensemble weights fitted out of fold (2 folds)."""
    from rakuten_mm.config import TrainConfig
    from rakuten_mm.training import train

    cfg = TrainConfig(epochs_text=1, epochs_image=2, image_size=32, image_backbone="efficientnet_lite0",
                      image_weights="none", members=("chartfidf", "image"), ensemble_folds=2, ensemble_step=0.1)
    return Path(train(str(synth_data), str(tmp_path_factory.mktemp("quality") / "bundle"), cfg).bundle_uri)


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[dict[str, str]]:
    """A real moto S3 server on a free loopback port; yields the environment that points boto3 at it."""
    port = free_port()
    exe = shutil.which("moto_server", path=str(BIN)) or "moto_server"
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        wait_for_port(port, proc)
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            yield env
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(moto_s3: dict[str, str], request: pytest.FixtureRequest) -> str:
    """A fresh bucket on the moto server."""
    import boto3

    name = f"t-{request.node.name.lower().replace('_', '-')[:40]}-{os.getpid()}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not (REAL_DATA / "X.csv").is_file():
        pytest.skip(f"real data sample not found at {REAL_DATA}")
    return REAL_DATA
