"""Tensors of the Open Inference Protocol <-> numpy arrays, for JSON, binary (REST) and protobuf.

Protocol-neutral: a :class:`Tensor` is a name, an OIP datatype and a numpy array (its shape is the
array's). BYTES tensors are numpy object arrays whose elements are ``bytes`` (binary data, gRPC) or
``str`` (JSON, where BYTES elements travel as strings); each model decides what a string means.

Raw encodings (REST binary extension, gRPC raw_input_contents/raw_output_contents) are row-major,
little-endian; a BYTES element is a 4-byte little-endian unsigned length followed by its bytes.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from services.errors import InvalidInput

# OIP datatype -> numpy dtype (explicitly little-endian, as the raw encodings are).
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
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

# OIP datatype -> the InferTensorContents field that carries it (FP16 is raw only).
CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

INTEGER_TYPES = frozenset(t for t in NUMPY_DTYPES if t.startswith(("INT", "UINT")))
FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})
MAX_ELEMENTS = 1 << 28  # refuse absurd shapes before allocating anything


class TensorError(InvalidInput):
    """A tensor that cannot be decoded or does not fit what the model accepts (-> 400)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(None, message, status=status)


@dataclass
class Tensor:
    name: str
    datatype: str
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> list[int]:
        return [int(d) for d in self.data.shape]


# --- shapes and datatypes ---------------------------------------------------------------------


def check_datatype(name: str, datatype: str) -> np.dtype:
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        known = ", ".join(NUMPY_DTYPES)
        raise TensorError(f"input '{name}': datatype {datatype!r} is not supported (one of {known})")
    return dtype


def check_shape(name: str, shape: Iterable[Any]) -> tuple[int, ...]:
    dims = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0:
            raise TensorError(f"input '{name}': shape {list(shape)} must be a list of non-negative integers")
        dims.append(int(d))
    if math.prod(dims) > MAX_ELEMENTS:
        raise TensorError(f"input '{name}': shape {dims} has more than {MAX_ELEMENTS} elements")
    return tuple(dims)


# --- BYTES length-prefixed encoding -------------------------------------------------------------


def _as_bytes(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, (bytearray, memoryview)):
        return bytes(item)
    return str(item).encode("utf-8")


def serialize_bytes(array: np.ndarray) -> bytes:
    """BYTES tensor -> the raw encoding: per element, <u4 length then the bytes (row-major)."""
    parts = []
    for item in array.reshape(-1):
        data = _as_bytes(item)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(buffer: bytes | memoryview, count: int, name: str = "tensor") -> np.ndarray:
    """The raw BYTES encoding -> a flat object array of ``count`` bytes elements."""
    view = memoryview(buffer)
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise TensorError(f"input '{name}': BYTES data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise TensorError(f"input '{name}': BYTES element {len(items)} claims {length} bytes; fewer remain")
        items.append(bytes(view[offset : offset + length]))
        offset += length
        if len(items) > count:
            raise TensorError(f"input '{name}': BYTES data holds more than {count} elements; its shape needs {count}")
    if len(items) != count:
        raise TensorError(f"input '{name}': BYTES data holds {len(items)} elements; its shape needs {count}")
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


# --- raw (binary) data ------------------------------------------------------------------------


def from_raw(name: str, datatype: str, shape: Iterable[Any], raw: bytes | memoryview) -> Tensor:
    dtype = check_datatype(name, datatype)
    dims = check_shape(name, shape)
    count = math.prod(dims)
    if datatype == "BYTES":
        return Tensor(name, datatype, deserialize_bytes(raw, count, name).reshape(dims))
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise TensorError(
            f"input '{name}': {len(raw)} bytes of {datatype} data; shape {list(dims)} needs {expected}"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(dims)
    return Tensor(name, datatype, array)


def to_raw(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        return serialize_bytes(tensor.data)
    dtype = NUMPY_DTYPES[tensor.datatype]
    return np.ascontiguousarray(tensor.data, dtype=dtype).tobytes()


# --- JSON data --------------------------------------------------------------------------------


MAX_NESTING = 32


def _flatten(name: str, data: Any, count: int) -> list:
    """Nested lists -> flat elements, stopping as soon as there are more than ``count`` or the
    nesting is deeper than any tensor's: a small body must not buy a long walk."""
    if isinstance(data, list) and len(data) > count:
        raise TensorError(f"input '{name}': more than {count} elements; its shape needs {count}")
    out: list = []
    stack = [iter(data if isinstance(data, (list, tuple)) else [data])]
    while stack:
        for item in stack[-1]:
            if isinstance(item, (list, tuple)):
                if len(stack) >= MAX_NESTING:
                    raise TensorError(f"input '{name}': data is nested deeper than {MAX_NESTING} levels")
                stack.append(iter(item))
                break
            out.append(item)
            if len(out) > count:
                raise TensorError(f"input '{name}': more than {count} elements; its shape needs {count}")
        else:
            stack.pop()
    return out


def from_list(name: str, datatype: str, shape: Iterable[Any], data: Any) -> Tensor:
    """Typed elements (JSON "data", flat or nested; protobuf contents) -> a tensor."""
    dtype = check_datatype(name, datatype)
    dims = check_shape(name, shape)
    count = math.prod(dims)
    flat = _flatten(name, data, count)
    if len(flat) != count:
        raise TensorError(f"input '{name}': {len(flat)} elements; shape {list(dims)} needs {count}")
    if datatype == "BYTES":
        for item in flat:
            if not isinstance(item, (str, bytes)):
                raise TensorError(f"input '{name}': BYTES elements must be strings, got {type(item).__name__}")
        array = np.empty(count, dtype=object)
        array[:] = flat
        return Tensor(name, datatype, array.reshape(dims))
    for item in flat:
        ok = (
            isinstance(item, bool)
            if datatype == "BOOL"
            else isinstance(item, (int, np.integer)) and not isinstance(item, bool)
            if datatype in INTEGER_TYPES
            else isinstance(item, (int, float, np.integer, np.floating)) and not isinstance(item, bool)
        )
        if not ok:
            raise TensorError(f"input '{name}': {item!r} is not a {datatype} value")
    try:
        array = np.array(flat, dtype=dtype).reshape(dims)
    except (OverflowError, ValueError, TypeError) as exc:
        raise TensorError(f"input '{name}': values do not fit {datatype} ({exc})") from None
    return Tensor(name, datatype, array)


def to_list(tensor: Tensor) -> list:
    """A tensor -> flat, JSON-ready elements (BYTES as UTF-8 strings)."""
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in flat]
    return flat.tolist()


# --- protobuf InferTensorContents -------------------------------------------------------------


def from_contents(name: str, datatype: str, shape: Iterable[Any], contents) -> Tensor:
    """A typed-contents protobuf tensor -> a tensor (values must sit in the datatype's field)."""
    check_datatype(name, datatype)
    field_name = CONTENTS_FIELDS.get(datatype)
    if field_name is None:
        raise TensorError(f"input '{name}': {datatype} data must be sent in raw_input_contents")
    for other in set(CONTENTS_FIELDS.values()) - {field_name}:
        if len(getattr(contents, other)):
            raise TensorError(f"input '{name}': {datatype} data belongs in contents.{field_name}, not {other}")
    values = getattr(contents, field_name)
    dims = check_shape(name, shape)
    count = math.prod(dims)
    if len(values) != count:
        raise TensorError(f"input '{name}': {len(values)} elements; shape {list(dims)} needs {count}")
    if datatype == "BYTES":
        return from_list(name, datatype, dims, list(values))
    if len(values) != count:
        raise TensorError(f"input '{name}': {len(values)} elements; shape {list(dims)} needs {count}")
    try:
        array = np.array(values, dtype=NUMPY_DTYPES[datatype]).reshape(dims)
    except (OverflowError, ValueError, TypeError) as exc:
        raise TensorError(f"input '{name}': values do not fit {datatype} ({exc})") from None
    return Tensor(name, datatype, array)


def fill_contents(tensor: Tensor, contents) -> None:
    """A tensor -> the typed-contents field of a protobuf InferTensorContents (FP16: raw only)."""
    field_name = CONTENTS_FIELDS.get(tensor.datatype)
    if field_name is None:
        raise TensorError(f"output '{tensor.name}': {tensor.datatype} can only be sent raw")
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        getattr(contents, field_name).extend(_as_bytes(x) for x in flat)
    else:
        getattr(contents, field_name).extend(flat.tolist())
