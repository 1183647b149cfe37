"""Fixtures of tests/deploy: the fake Kubernetes API server (tests/support/fake_kube_api.py) as a real
subprocess on 127.0.0.1, reset before each test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.fake_kube_api import FakeKube, running


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeKube]:
    with running() as fake:
        yield fake


@pytest.fixture
def fake(fake_server: FakeKube) -> FakeKube:
    fake_server.reset()
    return fake_server


@pytest.fixture
def api(fake: FakeKube) -> Iterator[Any]:
    client = fake.client()
    yield client
    client.close()
