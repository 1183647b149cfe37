"""Helpers shared by the serving tests (imported by name: pytest puts this directory on sys.path)."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image

# The session servers' small limits (tests/serving/conftest.py), so that the "too large" cases stay cheap.
MAX_REQUEST_BYTES = 2_000_000
MAX_IMAGE_PIXELS = 1_000_000
MAX_REQUEST_PIXELS = 3_000_000
MAX_PRODUCTS = 40
MAX_TEXT_CHARS = 5000


def image_bytes(size: tuple[int, int] = (64, 48), fmt: str = "JPEG", color: tuple[int, int, int] = (200, 30, 40)
                ) -> bytes:
    """A small real image file (JPEG or PNG) in memory."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def tensor(name: str, datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    """A V2 JSON input tensor."""
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def binary_body(inputs: list[tuple[str, np.ndarray]], **extra: Any) -> tuple[bytes, dict[str, str]]:
    """A V2 request using the binary tensor extension for every input → (body, headers)."""
    from kserve.protocol.infer_type import InferRequest

    from serving import codec

    request = InferRequest("rakuten", [codec.to_input(name, array) for name, array in inputs], **extra)
    body, json_length = request.to_rest()
    assert isinstance(body, bytes)
    return body, {"inference-header-content-length": str(json_length), "content-type": "application/octet-stream"}


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A tiny PNG whose header declares ``width``×``height`` pixels (a decompression bomb's calling card)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def hop_inputs(designations: list[str], descriptions: list[str] | None = None, images: np.ndarray | None = None,
               mask: np.ndarray | None = None, binary: bool = True) -> list[Any]:
    """The transformer → predictor hop's input tensors (raw text, canonical images, mask)."""
    from serving import codec

    inputs = [codec.to_input("designation", np.array([d.encode() for d in designations], dtype=object), binary)]
    if descriptions is not None:
        inputs.append(codec.to_input("description", np.array([d.encode() for d in descriptions], dtype=object),
                                     binary))
    if images is not None:
        inputs.append(codec.to_input("image", images, binary))
    if mask is not None:
        inputs.append(codec.to_input("image_mask", mask, binary))
    return inputs


def hop_request(*args: Any, parameters: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """An in-process hop :class:`InferRequest` carrying the contract version."""
    from kserve.protocol.infer_type import InferRequest

    from serving import contract

    params = contract.hop_parameters(0) if parameters is None else parameters
    binary = kwargs.pop("binary", True)
    return InferRequest("rakuten", hop_inputs(*args, binary=binary), parameters=params, **kwargs)


def hop_body(*args: Any, parameters: dict[str, Any] | None = None, **kwargs: Any) -> tuple[bytes, dict[str, str]]:
    """A hop request on the wire (binary tensors) → (body, headers)."""
    from serving import contract

    params = contract.hop_parameters(0) if parameters is None else parameters
    return binary_body([(i.name, _array(i)) for i in hop_inputs(*args, **kwargs)], parameters=params)


def _array(inp: Any) -> np.ndarray:
    from serving import codec

    return codec.to_numpy(inp)
