"""The private KServe names the project uses (all in serving/kserve_compat.py) still exist in the installed kserve,
which is the version the compat module was written for."""

from __future__ import annotations

import importlib
from importlib import metadata

import numpy as np
import pytest

from serving import kserve_compat

pytestmark = [pytest.mark.serving, pytest.mark.unit]


def test_kserve_is_the_version_the_compat_module_was_written_for() -> None:
    assert metadata.version("kserve") == kserve_compat.KSERVE_VERSION == "0.21.0", (
        "kserve was upgraded: re-check every name in serving.kserve_compat.PRIVATE_NAMES against the new release, "
        "then update KSERVE_VERSION")


@pytest.fixture(scope="module")
def model_server() -> object:
    return kserve_compat.import_model_server()


def _instance(owner: str, model_server: object) -> object:
    if owner == "ModelServer":
        return model_server.ModelServer(enable_grpc=False)  # type: ignore[attr-defined]
    from kserve.protocol.infer_type import InferInput

    inp = InferInput("x", [1], "UINT8")
    inp.set_data_from_numpy(np.zeros(1, np.uint8), binary_data=True)
    return inp


@pytest.mark.parametrize(("module", "owner", "name"), kserve_compat.PRIVATE_NAMES,
                         ids=[f"{m}.{o or ''}.{n}" for m, o, n in kserve_compat.PRIVATE_NAMES])
def test_every_private_name_still_exists(module: str, owner: str | None, name: str, model_server: object) -> None:
    mod = importlib.import_module(module)
    if owner is None:
        assert hasattr(mod, name)
    else:
        assert hasattr(getattr(mod, owner), name) or hasattr(_instance(owner, model_server), name)


def test_the_wrappers_work_on_this_kserve(model_server: object) -> None:
    import argparse

    from kserve.protocol.infer_type import InferInput

    binary = InferInput("x", [2], "UINT8")
    binary.set_data_from_numpy(np.array([1, 2], np.uint8), binary_data=True)
    assert bytes(kserve_compat.raw_input_bytes(binary) or b"") == b"\x01\x02"
    assert kserve_compat.raw_input_bytes(InferInput("y", [1], "INT64", data=[1])) is None
    saved = model_server.args  # type: ignore[attr-defined]
    try:
        opts = argparse.Namespace(marker=1)
        kserve_compat.use_options(model_server, opts)  # type: ignore[arg-type]
        assert model_server.args is opts  # type: ignore[attr-defined]
    finally:
        kserve_compat.use_options(model_server, saved)  # type: ignore[arg-type]
    server = model_server.ModelServer(enable_grpc=False)  # type: ignore[attr-defined]
    kserve_compat.set_bind_host(server, "127.0.0.1")  # no REST server built yet: nothing to do, no error


def test_no_other_module_uses_a_private_kserve_name() -> None:
    from pathlib import Path

    root = Path(kserve_compat.__file__).parent
    for path in sorted(root.glob("*.py")):
        if path.name == "kserve_compat.py":
            continue
        text = path.read_text()
        for _, _, name in kserve_compat.PRIVATE_NAMES:
            uses = [f".{name}", f'"{name}"'] if name.startswith("_") else ["model_server.args", 'setattr(model_server']
            assert not any(u in text for u in uses), f"{path.name} uses {name} outside the compat module"
        assert "sys.argv" not in text, f"{path.name} swaps sys.argv outside the compat module"
