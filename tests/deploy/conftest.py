"""Fixtures of tests/deploy: the fake Kubernetes API server as a real subprocess on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys

import pytest
from deploy_helpers import CRD_PATH, HERE, FakeKube, load_manifest_tools


@pytest.fixture(scope="session")
def fake_server():
    proc = subprocess.Popen([sys.executable, str(HERE / "fake_kube_api.py"), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            proc.kill()
            pytest.fail(f"the fake API server did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
        yield FakeKube(line.split()[-1])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def fake(fake_server: FakeKube) -> FakeKube:
    fake_server.reset()
    return fake_server


@pytest.fixture
def api(fake: FakeKube):
    client = fake.client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def crd_validator():
    """KServe's real CRD schema, as strict as the API server (tests/platform/manifest_tools.py builds it)."""
    if not CRD_PATH.is_file():
        pytest.skip(f"KServe CRD schema not found at {CRD_PATH} (it lives in the shared/ folder beside the repo)")
    pytest.importorskip("jsonschema")
    tools = load_manifest_tools()
    if tools is None:
        pytest.skip("tests/platform/manifest_tools.py (the strict CRD validator) is missing")
    validator = tools.isvc_validator(tools.load_crd(CRD_PATH), "v1beta1")
    return lambda doc: tools.schema_errors(validator, doc)
