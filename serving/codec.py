"""Open Inference Protocol (V2) tensors ↔ numpy, in the style of MLServer's ``codecs``.

KServe's own decoding turns every binary tensor into a Python list (slow for ``uint8`` images) and decodes BYTES
elements as UTF-8 (JPEG bytes fail with a 500), and pydantic rejects malformed JSON bodies with 422s. This module is
the project's one place where request bytes become arrays, and every way a body can be wrong becomes
:class:`kserve.errors.InvalidInput` (HTTP 400) whose message says what was allowed and what arrived.

Conventions (OIP REST + the binary tensor extension):

- JSON ``data`` may be flat or nested; its element count must match ``shape``. Integer types take JSON integers
  (range-checked), floating types take numbers, ``BOOL`` takes ``true``/``false``, ``BYTES`` takes strings (UTF-8
  encoded to bytes).
- A binary input carries ``parameters.binary_data_size`` and its bytes follow the JSON header, whose length is in the
  ``inference-header-content-length`` HTTP header. Fixed-size types are little-endian, row-major; BYTES elements are
  each prefixed by their length as a little-endian ``uint32``.
"""

from __future__ import annotations

import math
import struct
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import orjson
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse, RequestedOutput

from serving import kserve_compat
from serving.contract import MODEL_VERSION

# V2 datatype name → numpy dtype (binary payloads are little-endian).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
MAX_DIMS = 8
BINARY_SIZE = "binary_data_size"
_LEN = struct.Struct("<I")


def _name(name: object) -> str:
    return f"input {name!r}"


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype of a numpy array (object/bytes/str arrays are BYTES)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    for name, dtype in DATATYPES.items():
        if name != "BYTES" and array.dtype == dtype:
            return name
    raise TypeError(f"no V2 datatype for numpy dtype {array.dtype}; allowed: {sorted(DATATYPES)}")


def check_datatype(name: str, datatype: object) -> str:
    if not isinstance(datatype, str) or datatype.upper() not in DATATYPES:
        raise InvalidInput(f"{_name(name)}: datatype must be one of {sorted(DATATYPES)}, got {datatype!r}")
    return datatype.upper()


def check_shape(name: str, shape: object) -> list[int]:
    """A shape is a list of at most ``MAX_DIMS`` non-negative integers."""
    if (not isinstance(shape, list | tuple) or len(shape) > MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise InvalidInput(f"{_name(name)}: shape must be a list of at most {MAX_DIMS} non-negative integers, "
                           f"got {shape!r:.200}")
    return [int(d) for d in shape]


def _count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _flatten_strings(name: str, data: Iterable[Any]) -> list[bytes]:
    out: list[bytes] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list | tuple):
                stack.append(iter(item))
                break
            if isinstance(item, str):
                out.append(item.encode("utf-8", errors="surrogatepass"))
            elif isinstance(item, bytes | bytearray | memoryview):
                out.append(bytes(item))
            else:
                raise InvalidInput(f"{_name(name)}: BYTES data must hold strings, got {type(item).__name__} "
                                   f"{item!r:.80}")
        else:
            stack.pop()
    return out


def _bytes_tensor(name: str, shape: Sequence[int], elements: list[bytes], what: str) -> np.ndarray:
    """BYTES elements → an object array of ``shape``; a count that does not fit the shape is a 400."""
    expected = _count(shape)
    if len(elements) != expected:
        raise InvalidInput(f"{_name(name)}: shape {list(shape)} holds {expected} elements, got {len(elements)} {what}")
    out = np.empty(len(elements), dtype=object)
    out[:] = elements
    return out.reshape(shape)


def from_json(name: str, datatype: str, shape: Sequence[int], data: object) -> np.ndarray:
    """JSON ``data`` (flat or nested list) → a numpy array of ``shape``; every mismatch is a 400."""
    expected = _count(shape)
    if datatype == "BYTES":
        if not isinstance(data, list | tuple | np.ndarray):
            raise InvalidInput(f"{_name(name)}: data must be a list, got {type(data).__name__}")
        return _bytes_tensor(name, shape, _flatten_strings(name, data), "values")
    if not isinstance(data, list | tuple | np.ndarray):
        raise InvalidInput(f"{_name(name)}: data must be a list, got {type(data).__name__}")
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError, OverflowError) as exc:  # ragged nesting or values numpy cannot hold
        raise InvalidInput(f"{_name(name)}: data must be a regular (non-ragged) list of numbers: {exc}") from None
    if raw.size != expected:
        raise InvalidInput(f"{_name(name)}: shape {list(shape)} holds {expected} elements, got {raw.size} values")
    dtype = DATATYPES[datatype]
    if raw.size:
        _check_kind(name, datatype, raw)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            low, high = raw.min(), raw.max()
            if low < info.min or high > info.max:
                raise InvalidInput(f"{_name(name)}: {datatype} values must lie in [{info.min}, {info.max}], "
                                   f"got [{low}, {high}]")
    return raw.astype(dtype).reshape(shape)


def _check_kind(name: str, datatype: str, raw: np.ndarray) -> None:
    kind = raw.dtype.kind
    if datatype == "BOOL":
        allowed, what = "b", "true/false"
    elif DATATYPES[datatype].kind in "iu":
        allowed, what = "iu", "integers"
    else:
        allowed, what = "iuf", "numbers"
    if kind not in allowed:
        sample = raw.reshape(-1)[:3].tolist()
        raise InvalidInput(f"{_name(name)}: {datatype} data must hold {what}, got {sample!r:.120} "
                           f"(numpy kind {kind!r})")


def split_bytes_elements(name: str, raw: bytes | memoryview) -> list[bytes]:
    """A binary BYTES tensor (``uint32`` length + bytes, repeated) → its elements."""
    view = memoryview(raw)
    out: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidInput(f"{_name(name)}: binary BYTES data is truncated: a 4-byte length prefix was expected "
                               f"at offset {offset}, got {len(view) - offset} bytes")
        (length,) = _LEN.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(f"{_name(name)}: binary BYTES element {len(out)} declares {length} bytes, "
                               f"only {len(view) - offset} remain")
        out.append(bytes(view[offset:offset + length]))
        offset += length
    return out


def from_binary(name: str, datatype: str, shape: Sequence[int], raw: bytes | memoryview) -> np.ndarray:
    """Binary tensor bytes → a numpy array of ``shape`` (fixed-size types share memory with ``raw``)."""
    expected = _count(shape)
    if datatype == "BYTES":
        return _bytes_tensor(name, shape, split_bytes_elements(name, raw), "binary BYTES elements")
    dtype = DATATYPES[datatype]
    if len(raw) != expected * dtype.itemsize:
        raise InvalidInput(f"{_name(name)}: shape {list(shape)} of {datatype} needs {expected * dtype.itemsize} "
                           f"bytes, got {len(raw)}")
    if datatype == "BOOL":
        return (np.frombuffer(raw, dtype=np.uint8) != 0).reshape(shape)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def is_binary(inp: InferInput) -> bool:
    """Whether an input arrived through the binary extension (raw bytes), not as JSON ``data``."""
    params = inp.parameters
    return bool(params) and BINARY_SIZE in params


def to_numpy(inp: InferInput) -> np.ndarray:
    """Any decoded :class:`InferInput` (from this module, from JSON lists, from gRPC raw contents) → numpy."""
    datatype = check_datatype(inp.name, inp.datatype)
    shape = check_shape(inp.name, inp.shape)
    data = inp.data
    if isinstance(data, np.ndarray):
        if list(data.shape) != shape and data.size == _count(shape):
            data = data.reshape(shape)
        if list(data.shape) != shape:
            raise InvalidInput(f"{_name(inp.name)}: declared shape {shape}, got an array of shape "
                               f"{list(data.shape)}")
        if datatype == "BYTES":  # elements may be str or bytes; normalise to bytes
            return from_json(inp.name, datatype, shape, data.reshape(-1).tolist())
        if data.dtype != DATATYPES[datatype]:
            return from_json(inp.name, datatype, shape, data)
        return data
    raw = kserve_compat.raw_input_bytes(inp)
    if raw is not None:
        return from_binary(inp.name, datatype, shape, raw)
    if data is None:
        raise InvalidInput(f"{_name(inp.name)}: has neither 'data' nor binary data")
    return from_json(inp.name, datatype, shape, data)


def _input_from_json(obj: object, index: int, body: memoryview, offset: int) -> tuple[InferInput, int]:
    if not isinstance(obj, dict):
        raise InvalidInput(f"inputs[{index}] must be an object with name, shape, datatype and data, "
                           f"got {type(obj).__name__}")
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"inputs[{index}].name must be a non-empty string, got {name!r:.80}")
    datatype = check_datatype(name, obj.get("datatype"))
    shape = check_shape(name, obj.get("shape"))
    params = obj.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise InvalidInput(f"{_name(name)}: parameters must be an object, got {type(params).__name__}")
    params = dict(params or {})
    size = params.get(BINARY_SIZE)
    if size is not None:
        if "data" in obj:
            raise InvalidInput(f"{_name(name)}: has both 'data' and parameters.{BINARY_SIZE}; allowed: one of them")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"{_name(name)}: parameters.{BINARY_SIZE} must be a non-negative integer, "
                               f"got {size!r:.80}")
        if offset + size > len(body):
            raise InvalidInput(f"{_name(name)}: parameters.{BINARY_SIZE} is {size} but only "
                               f"{len(body) - offset} binary bytes remain in the request")
        array = from_binary(name, datatype, shape, body[offset:offset + size])
        offset += size
    elif "data" not in obj:
        raise InvalidInput(f"{_name(name)}: 'data' is missing (and no parameters.{BINARY_SIZE} was given)")
    else:
        array = from_json(name, datatype, shape, obj["data"])
    return InferInput(name=name, shape=shape, datatype=datatype, data=array, parameters=params), offset


def _requested_outputs(outputs: object) -> list[RequestedOutput] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise InvalidInput(f"'outputs' must be a list of {{name, parameters}} objects, got {type(outputs).__name__}")
    requested = []
    for i, out in enumerate(outputs):
        name = out.get("name") if isinstance(out, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"outputs[{i}] must be an object with a non-empty string 'name', got {out!r:.80}")
        params = out.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise InvalidInput(f"outputs[{i}].parameters must be an object, got {type(params).__name__}")
        requested.append(RequestedOutput(name=name, parameters=dict(params or {})))
    return requested


def parse_request(body: bytes, header_length: str | None, model_name: str) -> InferRequest:
    """An HTTP infer body (JSON, or JSON header + binary tensors) → an :class:`InferRequest` holding numpy arrays."""
    view = memoryview(body)
    if header_length is None:
        json_length = len(body)
    else:
        try:
            json_length = int(header_length)
        except ValueError:
            raise InvalidInput(f"inference-header-content-length must be an integer, got {header_length!r:.40}"
                               ) from None
        if not 0 < json_length <= len(body):
            raise InvalidInput(f"inference-header-content-length must lie in [1, {len(body)}] (the body size), "
                               f"got {json_length}")
    if not body:
        raise InvalidInput("the request body is empty; allowed: an inference request JSON object")
    try:
        doc = orjson.loads(view[:json_length])
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request body is not valid JSON ({exc}); allowed: an inference request object, "
                           "optionally followed by binary tensors announced by inference-header-content-length"
                           ) from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"the request must be a JSON object with an 'inputs' list, got {type(doc).__name__}")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidInput(f"'inputs' must be a list of tensors, got {type(inputs).__name__}")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string, got {type(request_id).__name__}")
    params = doc.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise InvalidInput(f"'parameters' must be an object, got {type(params).__name__}")
    offset = json_length
    decoded: list[InferInput] = []
    seen: set[str] = set()
    for i, obj in enumerate(inputs):
        inp, offset = _input_from_json(obj, i, view, offset)
        if inp.name in seen:
            raise InvalidInput(f"input {inp.name!r} appears more than once; each input name is allowed once")
        seen.add(inp.name)
        decoded.append(inp)
    if offset != len(body):
        raise InvalidInput(f"the request has {len(body) - offset} bytes after its declared binary tensors; "
                           f"allowed: exactly the sum of the inputs' {BINARY_SIZE}")
    return InferRequest(model_name=model_name, infer_inputs=decoded, request_id=request_id,
                        parameters=params, request_outputs=_requested_outputs(doc.get("outputs")))


def find_inputs(request: InferRequest, allowed: Mapping[str, str], required: Iterable[str]) -> dict[str, np.ndarray]:
    """Inputs by name, checked against ``allowed`` (name → datatype) and ``required``; values are numpy arrays."""
    def listing() -> str:
        return ", ".join(f"{n} ({t})" for n, t in allowed.items())

    found: dict[str, np.ndarray] = {}
    for inp in request.inputs:
        if inp.name not in allowed:
            raise InvalidInput(f"unknown input {inp.name!r}; allowed inputs: {listing()}")
        if inp.name in found:
            raise InvalidInput(f"input {inp.name!r} appears more than once; each input name is allowed once")
        datatype = check_datatype(inp.name, inp.datatype)
        if datatype != allowed[inp.name]:
            raise InvalidInput(f"{_name(inp.name)}: datatype must be {allowed[inp.name]}, got {datatype}")
        found[inp.name] = to_numpy(inp)
    for name in required:
        if name not in found:
            got = [inp.name for inp in request.inputs]
            raise InvalidInput(f"input {name!r} is required; allowed inputs: {listing()}; got {got}")
    return found


def bytes_column(name: str, array: np.ndarray | None, rows: int | None) -> list[bytes] | None:
    """A BYTES input of shape [B] (or [B, 1]) → its elements; ``rows``: the batch size other inputs have."""
    if array is None:
        return None
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise InvalidInput(f"{_name(name)}: shape must be [B] (or [B, 1]), got {list(array.shape)}")
    if rows is not None and array.shape[0] != rows:
        raise InvalidInput(f"batch sizes disagree: designation has {rows} rows, {name} has {array.shape[0]}; "
                           "allowed: the same B for every input")
    return [bytes(x) for x in array.tolist()]


def check_requested_outputs(request: InferRequest, allowed: Sequence[str]) -> None:
    for out in request.request_outputs or []:
        if out.name not in allowed:
            raise InvalidInput(f"unknown output {out.name!r}; allowed outputs: {list(allowed)}")


def to_output(name: str, array: np.ndarray) -> InferOutput:
    """A numpy array → an :class:`InferOutput` (KServe serialises it as JSON or binary when encoding)."""
    if array.dtype.kind in "SU":
        array = np.array([s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in array.reshape(-1)],
                         dtype=object).reshape(array.shape)
    return InferOutput(name=name, shape=list(array.shape), datatype=datatype_of(array), data=array)


def to_input(name: str, array: np.ndarray, binary: bool = True) -> InferInput:
    """A numpy array → an :class:`InferInput` for a request to another server (binary extension by default)."""
    inp = InferInput(name=name, shape=list(array.shape), datatype=datatype_of(array))
    inp.set_data_from_numpy(np.ascontiguousarray(array), binary_data=binary)
    return inp


def response_id(request: InferRequest) -> str:
    """OIP: a request's ``id`` is echoed in the response; without one the server makes one up."""
    return request.id or str(uuid.uuid4())


def respond(request: InferRequest, model_name: str, outputs: Mapping[str, np.ndarray]) -> InferResponse:
    """A V2 response to ``request``: its id echoed, the outputs it asked for, binary when it asked for binary."""
    return InferResponse(response_id=response_id(request), model_name=model_name, model_version=MODEL_VERSION,
                         infer_outputs=[to_output(name, array) for name, array in outputs.items()],
                         use_binary_outputs=request.use_binary_outputs, requested_outputs=request.request_outputs)
