"""gRPC ``TensorProto`` to and from numpy, as TensorFlow's ``Tensor::FromProto`` reads it.

Answers fill the typed fields, as TF Serving does; requests are read straight from
``tensor_content`` where the client sent them so, and every shape claim is bounded
before anything is allocated.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

try:  # an accelerator for the common request (one dense float tensor); everything works without it
    import simdjson
except ImportError:  # pragma: no cover - pysimdjson is a dependency, but has no wheel on some platforms
    simdjson = None

from ..errors import ServingError, invalid_argument
from ..signature import (
    DT_BFLOAT16,
    DT_BOOL,
    DT_COMPLEX64,
    DT_COMPLEX128,
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
    NUMPY_DTYPES,
    SignatureSpec,
)
from .limits import DecodeBudget, out_of_memory
from .values import MAX_DEPTH, aliases, tf_dtype_name

# -- gRPC TensorProto ------------------------------------------------------------------------------

_TYPED_FIELDS = {
    1: "float_val", 2: "double_val", 3: "int_val", 4: "int_val", 5: "int_val", 6: "int_val", 7: "string_val",
    8: "scomplex_val", 9: "int64_val", 10: "bool_val", 18: "dcomplex_val", 19: "half_val", 22: "uint32_val",
    23: "uint64_val",
}
_NUMPY_TO_TF = {dtype: tf_dtype for tf_dtype, dtype in NUMPY_DTYPES.items() if tf_dtype != DT_STRING}


def tensor_proto_to_numpy(proto: Any, budget: DecodeBudget | None = None) -> np.ndarray:
    """A TensorProto as an array, without tf.make_ndarray's import and per-call cost.

    ``tensor_content`` is wrapped zero-copy (the array is read-only). Typed
    fields follow TensorFlow's rule: no values means zeros, fewer values than
    the shape holds are padded with the last one (so one value fills the shape);
    more values than the shape holds are an error rather than silently dropped.
    The shape is the client's claim: the array it implies is counted against
    ``budget`` (by default the proto's own size's) before it is allocated.
    """
    if budget is None:
        budget = DecodeBudget(wire_bytes=proto.ByteSize)
    try:
        return _tensor_proto_to_numpy(proto, budget, "Tensor")
    except MemoryError:
        raise out_of_memory("Tensor") from None


def _tensor_proto_to_numpy(proto: Any, budget: DecodeBudget, what: str) -> np.ndarray:
    tf_dtype = int(proto.dtype)
    dtype = NUMPY_DTYPES.get(tf_dtype)
    if dtype is None:
        raise invalid_argument(f"Tensor dtype {tf_dtype_name(tf_dtype)} is not supported")
    if proto.tensor_shape.unknown_rank:
        raise invalid_argument("A tensor in a request must have a known shape (tensor_shape.unknown_rank is set)")
    dims = proto.tensor_shape.dim
    if len(dims) > MAX_DEPTH:
        raise invalid_argument(f"Tensor shape has {len(dims)} dimensions; at most {MAX_DEPTH} are supported")
    shape = tuple(int(dim.size) for dim in dims)
    if any(size < 0 for size in shape):
        raise invalid_argument(f"Tensor shape {list(shape)} has a negative dimension")
    count = math.prod(shape)
    content = proto.tensor_content
    if content and tf_dtype != DT_STRING:
        if count == 0:
            return _empty(shape, dtype)
        if len(content) != count * dtype.itemsize:
            raise invalid_argument(f"tensor_content holds {len(content)} bytes but a {tf_dtype_name(tf_dtype)} tensor "
                                   f"of shape {list(shape)} needs {count * dtype.itemsize}")
        budget.take(len(content), what)
        return np.frombuffer(content, dtype=dtype.newbyteorder("<")).reshape(shape)
    field = _TYPED_FIELDS[tf_dtype]
    values = getattr(proto, field)
    n = len(values)
    if tf_dtype in (DT_COMPLEX64, DT_COMPLEX128):  # (real, imaginary) pairs
        if n % 2:
            raise invalid_argument(f"Tensor has an odd number of values in {field}, which holds (real, imag) pairs")
        n //= 2
    if n > count:
        raise invalid_argument(f"Tensor has {n} values in {field} but its shape {list(shape)} holds {count}")
    if count == 0:
        return _empty(shape, dtype)
    # The whole array the shape claims, before it exists: one value with a shape of 2**29 is 2 GiB.
    budget.take(count * dtype.itemsize, what)
    if n == 0:
        return np.full(shape, b"", dtype=object) if tf_dtype == DT_STRING else np.zeros(shape, dtype=dtype)
    values = _typed_values(values, tf_dtype, dtype, field, budget, what)
    if n == count:
        return values.reshape(shape)
    array = np.empty(count, dtype=dtype)
    array[:n] = values
    array[n:] = values[-1]
    return array.reshape(shape)


def _empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A tensor with no elements; numpy refuses some such shapes (0 x 2**62 x 2**62) as too big."""
    try:
        return np.zeros(shape, dtype=dtype)
    except ValueError:
        raise invalid_argument(f"Tensor shape {list(shape)} is too large") from None


# The type each typed field's values have on the wire (half_val holds the 16 bits of each value in an int32).
_FIELD_TYPES = {
    "float_val": np.float32, "double_val": np.float64, "scomplex_val": np.float32, "dcomplex_val": np.float64,
    "int_val": np.int32, "int64_val": np.int64, "bool_val": np.bool_, "half_val": np.int32,
    "uint32_val": np.uint32, "uint64_val": np.uint64,
}
_FIXED_WIDTH_FIELDS = frozenset(("float_val", "double_val", "scomplex_val", "dcomplex_val"))
# From this many values on, a float or double field is read from its packed wire bytes: np.fromiter takes
# one Python number per value (~80 ns: 4M floats in 315 ms, all of it on the event loop), the wire bytes
# 3 ns a value (12 ms). Varint fields have no such shortcut (decoding varints with numpy costs more than
# fromiter); they, and strings, are copied a slice at a time, so that a thread doing it lets the event
# loop run between slices.
_WIRE_READ_MIN_VALUES = 512
_FIELD_STEP = 1 << 16


def _typed_values(values: Any, tf_dtype: int, dtype: np.dtype, field: str, budget: DecodeBudget,
                  what: str) -> np.ndarray:
    if tf_dtype == DT_STRING:
        array = np.empty(len(values), dtype=object)
        payload = 0
        for start in range(0, len(values), _FIELD_STEP):
            chunk = values[start:start + _FIELD_STEP]
            payload += sum(map(len, chunk))
            array[start:start + len(chunk)] = chunk
        budget.take(payload, what)  # already in memory once (the message); counted for the limit's sake
        return array
    raw = _field_array(values, field)
    if tf_dtype == DT_HALF:
        return raw.astype(np.uint16).view(np.float16)
    if tf_dtype in (DT_COMPLEX64, DT_COMPLEX128):
        return np.ascontiguousarray(raw).view(dtype)
    if dtype.kind in "iu" and field == "int_val" and dtype.itemsize < 4:
        info = np.iinfo(dtype)
        if raw.size and (raw.min() < info.min or raw.max() > info.max):
            bad = int(raw.min()) if raw.min() < info.min else int(raw.max())
            raise invalid_argument(f"Tensor of {tf_dtype_name(tf_dtype)} has the value {bad} in int_val, which is out "
                                   f"of range [{info.min}, {info.max}]")
    return raw.astype(dtype, copy=False)


def _field_array(values: Any, field: str) -> np.ndarray:
    """A repeated numeric field of a TensorProto as an array of its wire type."""
    kind = np.dtype(_FIELD_TYPES[field])
    count = len(values)
    if field in _FIXED_WIDTH_FIELDS and count >= _WIRE_READ_MIN_VALUES:
        payload = _packed_payload(values, field)
        if payload is not None:
            return np.frombuffer(payload, dtype=kind.newbyteorder("<")).astype(kind, copy=False)
    if count <= _FIELD_STEP:
        return np.fromiter(values, dtype=kind, count=count)
    array = np.empty(count, dtype=kind)
    for start in range(0, count, _FIELD_STEP):
        chunk = values[start:start + _FIELD_STEP]
        array[start:start + len(chunk)] = np.fromiter(chunk, dtype=kind, count=len(chunk))
    return array


def _packed_payload(values: Any, field: str) -> memoryview | None:
    """The packed wire bytes of a repeated field, copied into a message of its own and serialized."""
    from tensorflow.core.framework import tensor_pb2

    holder = tensor_pb2.TensorProto()
    getattr(holder, field).MergeFrom(values)
    data = holder.SerializeToString()
    key, position = _read_varint(data, 0)
    if key & 7 != 2:
        return None
    length, position = _read_varint(data, position)
    if position + length != len(data):  # more than one record: not the packed form assumed here
        return None
    return memoryview(data)[position:]


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def _tf_dtype_of(array: np.ndarray) -> int:
    dtype = array.dtype
    if dtype.kind in "OSU":
        return DT_STRING
    native = dtype if dtype.isnative else dtype.newbyteorder("=")
    tf_dtype = _NUMPY_TO_TF.get(native, _DT_UINT16 if native == np.uint16 else None)
    if tf_dtype is not None:
        return tf_dtype
    if dtype.name == "bfloat16":
        return DT_BFLOAT16
    raise invalid_argument(f"Tensor dtype {dtype} has no TensorFlow equivalent")


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return str(value).encode("utf-8")


# DT_UINT16 is absent from NUMPY_DTYPES (no request input may be uint16), but a model may output it.
_DT_UINT16 = 17

# Tensor::AsProtoField's field for each dtype (TensorFlow's tensor.cc, ProtoHelper<T>): the narrow
# integers widen into int_val, half and bfloat16 put their raw 16 bits in half_val, complex numbers
# are (real, imaginary) pairs.
_AS_PROTO_FIELD = {
    DT_FLOAT: "float_val", DT_DOUBLE: "double_val", DT_INT32: "int_val", DT_UINT8: "int_val", DT_INT16: "int_val",
    DT_INT8: "int_val", _DT_UINT16: "int_val", DT_INT64: "int64_val", DT_BOOL: "bool_val",
    DT_COMPLEX64: "scomplex_val", DT_COMPLEX128: "dcomplex_val", DT_HALF: "half_val", DT_BFLOAT16: "half_val",
    DT_UINT32: "uint32_val", DT_UINT64: "uint64_val",
}
# Fields whose packed wire form is the array's own little-endian bytes: fixed-width floats, and bools
# (a varint of 0 or 1 is that one byte). These are written as wire bytes in one call instead of one
# Python number per value (1M floats: ~1 ms instead of ~80 ms).
_RAW_WIRE = {DT_FLOAT: "<f4", DT_DOUBLE: "<f8", DT_COMPLEX64: "<c8", DT_COMPLEX128: "<c16", DT_BOOL: "u1"}


@functools.cache
def _packed_tag(field: str) -> bytes:
    """The key of a length-delimited (packed) ``field`` of TensorProto on the wire."""
    from tensorflow.core.framework import tensor_pb2

    return _varint(tensor_pb2.TensorProto.DESCRIPTOR.fields_by_name[field].number << 3 | 2)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _numeric_values(array: np.ndarray, tf_dtype: int) -> np.ndarray:
    """``array`` as a C-contiguous array of ``tf_dtype``'s numpy type, converted if it is another type."""
    if tf_dtype == DT_BFLOAT16:
        if array.dtype.name != "bfloat16":
            raise invalid_argument(f"Cannot convert an array of {array.dtype} to DT_BFLOAT16")
        return np.ascontiguousarray(array)
    dtype = np.dtype(np.uint16) if tf_dtype == _DT_UINT16 else NUMPY_DTYPES.get(tf_dtype)
    if dtype is None:
        raise invalid_argument(f"Tensor dtype {tf_dtype_name(tf_dtype)} is not supported")
    try:
        return np.ascontiguousarray(array, dtype=dtype.newbyteorder("<"))
    except (TypeError, ValueError, OverflowError):
        raise invalid_argument(f"Cannot convert an array of {array.dtype} to {tf_dtype_name(tf_dtype)}") from None


def _fill_typed_field(proto: Any, tf_dtype: int, values: np.ndarray) -> None:
    """Put ``values`` in the repeated field TF Serving's ``Tensor::AsProtoField`` would use."""
    if values.size == 0:
        return  # AsProtoField writes no values for an empty tensor
    field = _AS_PROTO_FIELD[tf_dtype]
    wire = _RAW_WIRE.get(tf_dtype)
    if wire is not None:
        if tf_dtype == DT_BOOL:
            values = values != 0  # one byte of exactly 0 or 1 per value, whatever the buffer held
        raw = np.ascontiguousarray(values, dtype=wire)
        # One copy of the values (join reads the array's buffer): an intermediate bytes object would
        # double the large allocations, which costs more than the copy itself.
        proto.MergeFromString(b"".join((_packed_tag(field), _varint(raw.nbytes), raw)))
        return
    if tf_dtype == DT_HALF:
        values = values.view("<u2")  # little-endian like the float16 values themselves
    elif tf_dtype == DT_BFLOAT16:
        values = values.view(np.uint16)  # ml_dtypes' bfloat16 is in native order
    getattr(proto, field).extend(values.reshape(-1).tolist())


def numpy_to_tensor_proto(array: np.ndarray, tf_dtype: int | None = None, *, tensor_content: bool = True,
                          out: Any = None) -> Any:
    """An array as a TensorProto, with numbers in ``tensor_content`` or in TF Serving's typed fields.

    ``tensor_content=True`` (the default, for requests) is one memcpy and is what TensorFlow's own
    clients send. ``tensor_content=False`` writes what TF Serving's Predict answers by default
    (``Tensor::AsProtoField``): ``float_val``, ``int_val``, ``half_val``, ... , which clients read
    straight from the field (``response.outputs["y"].float_val``) and which ``tf.make_ndarray``
    reads too. Strings always go in ``string_val``. ``out`` fills an existing message (a response's
    ``outputs[alias]``) in place of a new one: copying a filled TensorProto into a response costs
    more than filling it.
    """
    from tensorflow.core.framework import tensor_pb2

    array = np.asarray(array)
    if tf_dtype is None:
        tf_dtype = _tf_dtype_of(array)
    proto = tensor_pb2.TensorProto() if out is None else out
    proto.Clear()
    proto.dtype = tf_dtype
    proto.tensor_shape.SetInParent()  # present even for a scalar, as TensorFlow's AsProto* write it
    dims = proto.tensor_shape.dim
    for size in array.shape:
        dims.add(size=size)
    if tf_dtype == DT_STRING:
        flat = array.reshape(-1).tolist()
        try:
            proto.string_val.extend(flat)
        except TypeError:
            proto.string_val.extend([_to_bytes(value) for value in flat])
        return proto
    values = _numeric_values(array, tf_dtype)
    if tensor_content:
        proto.tensor_content = values.tobytes()
    else:
        _fill_typed_field(proto, tf_dtype, values)
    return proto


def decode_tensor_protos(protos: Mapping[str, Any], signature: SignatureSpec, budget: DecodeBudget | None = None,
                         converted: Mapping[str, np.ndarray | ServingError] | None = None) -> dict[str, np.ndarray]:
    """A gRPC PredictRequest's inputs as arrays keyed by alias, checked against the signature.

    The dtype must match exactly (TF Serving rejects a mismatch rather than
    casting), so a client's mistake is reported by name instead of by TensorFlow.
    ``converted`` holds what :func:`convert_tensor_protos` made of the same
    protos beforehand (on another thread), used instead of converting again.
    """
    specs = signature.inputs
    for key in protos:
        if key not in specs:
            raise invalid_argument(f"input tensor alias not found in signature: {key}. Inputs expected to be in the "
                                   f"set {aliases(specs)}.")
    if budget is None:
        budget = DecodeBudget(wire_bytes=lambda: sum(proto.ByteSize() for proto in protos.values()))
    inputs = {}
    for key, spec in specs.items():
        if key not in protos:
            raise invalid_argument(f"Missing input {key!r}; signature {signature.name!r} expects inputs "
                                   f"{aliases(specs)}")
        proto = protos[key]
        if int(proto.dtype) != spec.tf_dtype:
            raise invalid_argument(f"Input {key!r} expects {spec.dtype_name} but the request's tensor is "
                                   f"{tf_dtype_name(int(proto.dtype))}")
        value = converted.get(key) if converted is not None else None
        if value is None:
            value = _convert_input(key, proto, budget)
        if isinstance(value, ServingError):
            raise value
        inputs[key] = value
    return inputs


def _convert_input(key: str, proto: Any, budget: DecodeBudget) -> np.ndarray | ServingError:
    try:
        return _tensor_proto_to_numpy(proto, budget, f"Input {key!r}")
    except ServingError as error:
        if error.message.startswith(f"Input {key!r}"):
            return error
        return ServingError(error.code, f"Input {key!r}: {error.message}")
    except MemoryError:
        return out_of_memory(f"Input {key!r}")


def convert_tensor_protos(protos: Mapping[str, Any], budget: DecodeBudget) -> dict[str, np.ndarray | ServingError]:
    """Every TensorProto of a request as an array, or the error its conversion met, whatever the signature.

    Conversion needs no signature, so a large request's runs on a worker thread, in steps that let the
    event loop run (strings are copied a slice at a time), before the engine resolves the signature
    and :func:`decode_tensor_protos` checks names and dtypes on the loop.
    """
    return {key: _convert_input(key, proto, budget) for key, proto in protos.items()}


# Bytes per value in each typed field, at least as many as the wire holds (a string: its tag and length).
_HINT_BYTES = {"float_val": 4, "double_val": 8, "scomplex_val": 4, "dcomplex_val": 8, "int_val": 1, "int64_val": 1,
               "bool_val": 1, "half_val": 1, "uint32_val": 1, "uint64_val": 1, "string_val": 2}


def tensor_protos_size_hint(protos: Mapping[str, Any]) -> int:
    """About how many bytes the request's tensors take on the wire (no serialization: field lengths only)."""
    total = 0
    for proto in protos.values():
        total += len(proto.tensor_content)
        field = _TYPED_FIELDS.get(int(proto.dtype))
        if field is not None:
            total += len(getattr(proto, field)) * _HINT_BYTES[field]
    return total


