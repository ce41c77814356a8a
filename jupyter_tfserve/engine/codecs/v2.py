"""KServe V2 (Open Inference Protocol) tensors to and from numpy, JSON and the binary tensor extension.

Every claim a request makes (a shape, a ``binary_data_size``, a BYTES element's length) is checked
against the bytes the body actually holds before anything is allocated, so a client can never make
the engine allocate more than it sent. Inputs are matched by name to the signature that will answer,
and their datatype and shape are checked against it: a mismatch is a 400 naming the input, never a
TensorFlow error from deep inside the run.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import invalid_argument
from ..signature import (
    DT_BFLOAT16,
    DT_BOOL,
    DT_DOUBLE,
    DT_FLOAT,
    DT_HALF,
    DT_INT8,
    DT_INT16,
    DT_INT32,
    DT_INT64,
    DT_STRING,
    DT_UINT8,
    DT_UINT32,
    DT_UINT64,
    SignatureSpec,
    TensorSpec,
)

DT_UINT16 = 17  # TF's types.proto; signature.py does not name it

# TF DataType enum → V2 datatype name (DT_UINT16 is 17 in TF's types.proto).
DATATYPES: dict[int, str] = {
    DT_BOOL: "BOOL", DT_UINT8: "UINT8", DT_UINT16: "UINT16", DT_UINT32: "UINT32", DT_UINT64: "UINT64",
    DT_INT8: "INT8", DT_INT16: "INT16", DT_INT32: "INT32", DT_INT64: "INT64",
    DT_HALF: "FP16", DT_FLOAT: "FP32", DT_DOUBLE: "FP64", DT_BFLOAT16: "BF16", DT_STRING: "BYTES",
}
# Little-endian wire dtypes of the binary tensor extension (BYTES and BF16 are handled apart).
WIRE_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
NUMPY_TO_V2: dict[np.dtype, str] = {dtype.newbyteorder("="): name for name, dtype in WIRE_DTYPES.items()}
_LENGTH = struct.Struct("<I")


def datatype_of(spec: TensorSpec) -> str:
    """The V2 datatype of a signature's tensor; complex and other types V2 cannot name are refused."""
    try:
        return DATATYPES[spec.tf_dtype]
    except KeyError:
        raise invalid_argument(f"Tensor {spec.key} has type {spec.dtype_name}, which V2 has no datatype for") from None


def shape_of(spec: TensorSpec) -> list[int]:
    """The V2 shape of a signature's tensor (-1 for a variable dimension; [-1] when the rank is unknown)."""
    return [-1] if spec.shape is None else [int(d) for d in spec.shape]


def tensor_metadata(specs: dict[str, TensorSpec]) -> list[dict]:
    return [{"name": key, "datatype": datatype_of(spec), "shape": shape_of(spec)} for key, spec in specs.items()]


@dataclass
class InferRequest:
    """A V2 infer request's header, once parsed: which tensors, which outputs, how they are wanted."""

    header: dict
    binary: memoryview
    outputs: list[str] = field(default_factory=list)
    binary_outputs: set[str] = field(default_factory=set)
    binary_default: bool = False

    @property
    def signature_name(self) -> str:
        name = _parameters(self.header, "request").get("signature_name", "")
        if not isinstance(name, str):
            raise invalid_argument("Parameter signature_name must be a string")
        return name


def _parameters(obj: dict, what: str) -> dict:
    parameters = obj.get("parameters", {})
    if not isinstance(parameters, dict):
        raise invalid_argument(f"The {what}'s parameters must be a JSON object")
    return parameters


def parse_infer(header: Any, binary: memoryview) -> InferRequest:
    """Check a request header's structure (the tensors themselves are decoded against the signature)."""
    if not isinstance(header, dict):
        raise invalid_argument("An infer request must be a JSON object")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise invalid_argument("An infer request needs a non-empty 'inputs' list")
    request = InferRequest(header, binary)
    request.binary_default = _parameters(header, "request").get("binary_data_output") is True
    outputs = header.get("outputs", [])
    if not isinstance(outputs, list):
        raise invalid_argument("'outputs' must be a list")
    for output in outputs:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise invalid_argument("Each requested output needs a 'name'")
        request.outputs.append(output["name"])
        binary_data = _parameters(output, f"output {output['name']}").get("binary_data")
        if binary_data is True or (binary_data is None and request.binary_default):
            request.binary_outputs.add(output["name"])
    return request


def decode_inputs(request: InferRequest, signature: SignatureSpec) -> dict[str, np.ndarray]:
    """The request's tensors as numpy, keyed by the signature's input aliases."""
    binary = request.binary
    offset = 0
    inputs: dict[str, np.ndarray] = {}
    for item in request.header["inputs"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid_argument("Each input needs a 'name'")
        name = item["name"]
        spec = signature.inputs.get(name)
        if spec is None:
            raise invalid_argument(f"Input {name!r} is not one of signature {signature.name}'s inputs: "
                                   f"{', '.join(signature.inputs)}")
        if name in inputs:
            raise invalid_argument(f"Input {name!r} is given twice")
        shape = _check_header(item, spec)
        size = _parameters(item, f"input {name}").get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0 or size > len(binary) - offset:
                raise invalid_argument(f"Input {name!r} claims binary_data_size {size!r}, but the body holds "
                                       f"{len(binary) - offset} more bytes")
            inputs[name] = _from_binary(binary[offset:offset + size], shape, spec, item["datatype"])
            offset += size
        else:
            inputs[name] = _from_json(item.get("data"), shape, spec)
    if offset != len(binary):
        raise invalid_argument(f"The body holds {len(binary) - offset} bytes of binary data after the last input")
    missing = [key for key in signature.inputs if key not in inputs]
    if missing:
        raise invalid_argument(f"Signature {signature.name} also needs input(s): {', '.join(missing)}")
    return inputs


def _check_header(item: dict, spec: TensorSpec) -> tuple[int, ...]:
    name, expected = item["name"], datatype_of(spec)
    if item.get("datatype") != expected:
        raise invalid_argument(f"Input {name!r} has datatype {item.get('datatype')!r}; the signature wants {expected}")
    shape = item.get("shape")
    if not isinstance(shape, list) or any(type(d) is not int or d < 0 for d in shape):
        raise invalid_argument(f"Input {name!r} needs a shape of non-negative integers, got {shape!r}")
    if spec.shape is not None and (len(shape) != len(spec.shape)
                                   or any(w not in (-1, d) for w, d in zip(spec.shape, shape, strict=True))):
        raise invalid_argument(f"Input {name!r} has shape {shape}; the signature wants {shape_of(spec)}")
    return tuple(shape)


def _from_binary(raw: memoryview, shape: tuple[int, ...], spec: TensorSpec, datatype: str) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_elements(raw, count, spec.key).reshape(shape)
    if datatype == "BF16":
        raise invalid_argument(f"Input {spec.key!r}: BF16 tensors are not supported")
    wire = WIRE_DTYPES[datatype]
    if count * wire.itemsize != len(raw):
        raise invalid_argument(f"Input {spec.key!r} of shape {list(shape)} needs {count * wire.itemsize} bytes "
                               f"of {datatype}, but binary_data_size is {len(raw)}")
    return np.frombuffer(raw, dtype=wire).reshape(shape).astype(spec.dtype, copy=False)


def _bytes_elements(raw: memoryview, count: int, name: str) -> np.ndarray:
    if count * _LENGTH.size > len(raw):  # each element is at least its 4-byte length
        raise invalid_argument(f"Input {name!r} claims {count} BYTES elements in {len(raw)} bytes")
    out = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if offset + _LENGTH.size > len(raw):
            raise invalid_argument(f"Input {name!r}: BYTES element {index} is cut short")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if length > len(raw) - offset:
            raise invalid_argument(f"Input {name!r}: BYTES element {index} claims {length} bytes, "
                                   f"{len(raw) - offset} remain")
        out[index] = bytes(raw[offset:offset + length])
        offset += length
    if offset != len(raw):
        raise invalid_argument(f"Input {name!r}: {len(raw) - offset} bytes follow its last BYTES element")
    return out


def _flatten(data: Any, name: str) -> list:
    if not isinstance(data, list):
        return [data]
    flat: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > 64:
                    raise invalid_argument(f"Input {name!r}: data nested too deeply")
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _from_json(data: Any, shape: tuple[int, ...], spec: TensorSpec) -> np.ndarray:
    name = spec.key
    if data is None:
        raise invalid_argument(f"Input {name!r} has neither 'data' nor binary_data_size")
    flat = _flatten(data, name)
    if len(flat) != math.prod(shape):
        raise invalid_argument(
            f"Input {name!r} of shape {list(shape)} needs {math.prod(shape)} values, got {len(flat)}")
    if spec.is_string:
        if not all(isinstance(v, str) for v in flat):
            raise invalid_argument(f"Input {name!r} is BYTES: its JSON data must be strings")
        out = np.empty(len(flat), dtype=object)
        out[:] = [v.encode() for v in flat]
        return out.reshape(shape)
    dtype = spec.dtype
    if dtype == np.bool_:
        allowed: tuple[type, ...] = (bool,)
    elif dtype.kind in "iu":
        allowed = (int,)
    else:
        allowed = (int, float)
    bad = next((v for v in flat if type(v) not in allowed), None)
    if bad is not None:
        raise invalid_argument(f"Input {name!r} is {datatype_of(spec)}: {bad!r} is not a valid value")
    try:
        return np.array(flat, dtype=dtype).reshape(shape)
    except (OverflowError, ValueError) as error:
        raise invalid_argument(f"Input {name!r}: {error}") from None


def encode_outputs(outputs: dict[str, np.ndarray], names: Sequence[str],
                   binary_outputs: set[str], binary_default: bool) -> tuple[list[dict], list[bytes]]:
    """Outputs as V2 JSON entries, with the raw chunks of those wanted in binary (in the same order)."""
    entries, chunks = [], []
    for name in names or sorted(outputs):
        array = np.asarray(outputs[name])
        binary = name in binary_outputs or (not names and binary_default)
        entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": _v2_type(name, array)}
        if binary:
            raw = _to_binary(array, entry["datatype"])
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif entry["datatype"] == "BYTES":
            try:
                entry["data"] = [bytes(v).decode() for v in array.reshape(-1)]
            except UnicodeDecodeError:
                raise invalid_argument(f"Output {name!r} holds bytes that are not UTF-8: "
                                       "ask for it with binary_data") from None
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    return entries, chunks


def _v2_type(name: str, array: np.ndarray) -> str:
    if array.dtype == object or array.dtype.kind in "SU":
        return "BYTES"
    try:
        return NUMPY_TO_V2[array.dtype.newbyteorder("=")]
    except KeyError:
        raise invalid_argument(
            f"Output {name!r} has dtype {array.dtype}, which V2 has no datatype for") from None


def _to_binary(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for value in array.reshape(-1):
            data = value if isinstance(value, bytes) else str(value).encode()
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=WIRE_DTYPES[datatype]).tobytes()
