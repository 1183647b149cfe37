"""Every use of a private KServe name, in one place. Written for kserve :data:`KSERVE_VERSION`.

KServe's public API does not cover four things the servers need; each is wrapped here, and
``tests/serving/test_kserve_compat.py`` pins the version and checks that every name in :data:`PRIVATE_NAMES` still
exists, so an upgrade fails there first (not in production):

- importing ``kserve.model_server`` parses ``sys.argv`` at import time (known args only) and keeps the result in the
  module global ``args``, which ``ModelServer`` reads later (logging setup, gRPC kwargs): :func:`import_model_server`
  imports it with an empty command line and :func:`use_options` hands it the project's parsed flags instead;
- binary tensors (REST ``set_data_from_numpy(binary_data=True)``, gRPC raw contents) are kept only in
  ``InferInput._raw_data``: :func:`raw_input_bytes`;
- the uvicorn server always binds 0.0.0.0: :func:`set_bind_host` changes the address on the REST server that
  ``ModelServer.start`` keeps in ``ModelServer._rest_server``, after building it and before it binds (from
  ``ModelServer.setup_event_loop``, which ``start`` calls in between).
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import Any

KSERVE_VERSION = "0.21.0"
# (module, class or None for a module global, attribute): every private name used below.
PRIVATE_NAMES: tuple[tuple[str, str | None, str], ...] = (
    ("kserve.model_server", None, "args"),
    ("kserve.model_server", "ModelServer", "_rest_server"),  # an instance attribute set in __init__
    ("kserve.protocol.infer_type", "InferInput", "_raw_data"),  # an instance attribute set in __init__
)


def import_model_server() -> ModuleType:
    """``kserve.model_server`` imported with an empty command line (so it parses none of ours)."""
    saved = sys.argv
    sys.argv = saved[:1] or ["rakuten"]
    try:
        import kserve.model_server as model_server
    finally:
        sys.argv = saved
    return model_server


def use_options(model_server: ModuleType, opts: argparse.Namespace) -> None:
    """Make KServe read the project's parsed flags where it reads its import-time namespace."""
    setattr(model_server, "args", opts)  # noqa: B010 - a module global of KServe's, not an attribute of ours


def raw_input_bytes(inp: Any) -> bytes | memoryview | None:
    """The bytes of a binary :class:`kserve.protocol.infer_type.InferInput`, or ``None`` for JSON data."""
    raw: bytes | memoryview | None = getattr(inp, "_raw_data", None)
    return raw


def set_bind_host(server: Any, host: str) -> None:
    """Bind the REST server of a started-but-not-yet-serving ``kserve.ModelServer`` to ``host``."""
    rest = getattr(server, "_rest_server", None)
    if rest is not None:
        rest.config.host = host
