"""What the JSON codecs share: describing a client's value in an error, b64 objects, numeric checks.

The conversions refuse to lose precision: an integer a float dtype cannot hold, or a
finite float that overflows the input's dtype, is an error rather than a silent change.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import numpy as np
import orjson

try:  # an accelerator for the common request (one dense float tensor); everything works without it
    import simdjson
except ImportError:  # pragma: no cover - pysimdjson is a dependency, but has no wheel on some platforms
    simdjson = None

from ..errors import invalid_argument
from ..signature import (
    DTYPE_NAMES,
    TensorSpec,
)

NUMPY_OPTION = orjson.OPT_SERIALIZE_NUMPY
MAX_DEPTH = 64  # numpy's own limit on dimensions
BYTES_SUFFIX = "_bytes"

# Which kinds of np.asarray(json_value) may be converted to a target kind without surprises.
ACCEPTED_KINDS = {"f": "iuf", "c": "iuf", "i": "iu", "u": "iu", "b": "b"}


def tf_dtype_name(tf_dtype: int) -> str:
    return DTYPE_NAMES.get(tf_dtype, f"DataType({tf_dtype})")


def aliases(keys: Any) -> str:
    return "{" + ", ".join(sorted(keys)) + "}"


def is_b64(value: Any) -> bool:
    """TF Serving's test for a binary value: an object whose only key is "b64", holding a string."""
    return type(value) is dict and len(value) == 1 and isinstance(value.get("b64"), str)


def is_named(value: Any) -> bool:
    """A JSON object that maps names to values (as opposed to a {"b64": ...} value)."""
    return type(value) is dict and not is_b64(value)


def decode_b64(value: Any, what: str) -> bytes:
    if not is_b64(value):
        raise invalid_argument(f'{what} has {describe(value)}, which is not formatted correctly for base64 data '
                               '(expected {"b64": "<base64 string>"})')
    data = value["b64"]
    try:
        return base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument(f'{what} has a "b64" value that is not valid base64: {clip(data)}') from None


def clip(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def describe(item: Any) -> str:
    """A JSON value as a client would recognise it in an error message."""
    if item is None:
        return "null"
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        return f"the integer {item}"
    if isinstance(item, float):
        return f"the floating point number {float_literal(item)}"
    if isinstance(item, str):
        return f"the string {clip(item)}"
    if isinstance(item, dict):
        return "a {\"b64\": ...} object" if "b64" in item else "a JSON object"
    if isinstance(item, list):
        return "a list"
    return type(item).__name__


def float_literal(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def floats_to(raw: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Floats to the input's float dtype; a finite value that overflows it is an error, not an infinity."""
    with np.errstate(over="ignore"):
        array = raw.astype(spec.dtype, copy=False)
    if spec.dtype.itemsize < raw.dtype.itemsize and not np.isfinite(array).all():
        check_float_range(raw, array, spec)
    return array


def exact_int_limit(dtype: np.dtype) -> int:
    """The largest integer magnitude a float dtype holds exactly (2**24 - 1 for float32)."""
    return (1 << (np.finfo(dtype).nmant + 1)) - 1


def check_int_range(raw: np.ndarray, spec: TensorSpec) -> None:
    if not raw.size:
        return
    info = np.iinfo(spec.dtype)
    low, high = int(raw.min()), int(raw.max())
    if low < info.min or high > info.max:
        bad = low if low < info.min else high
        raise invalid_argument(f"Input {spec.key!r} expects {spec.dtype_name} values but got the integer {bad}, "
                               f"which is out of range [{info.min}, {info.max}]")


def check_exact_ints(raw: np.ndarray, spec: TensorSpec) -> None:
    if not raw.size:
        return
    limit = exact_int_limit(spec.dtype)
    low, high = int(raw.min()), int(raw.max())
    if low < -limit or high > limit:
        bad = low if low < -limit else high
        raise invalid_argument(f"Input {spec.key!r} expects {spec.dtype_name} values but got the integer {bad}, "
                               f"which {spec.dtype.name} cannot hold without loss of precision (|x| <= {limit})")


def check_float_range(raw: np.ndarray, array: np.ndarray, spec: TensorSpec) -> None:
    overflow = np.isinf(array) & np.isfinite(raw)
    if overflow.any():
        bad = float(raw[overflow].flat[0])
        raise invalid_argument(f"Input {spec.key!r} expects {spec.dtype_name} values but got "
                               f"{describe(bad)}, which is out of range for {spec.dtype.name}")

