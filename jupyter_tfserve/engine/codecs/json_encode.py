"""numpy to TF Serving's JSON answers (row and columnar), with its literals for non-finite floats."""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import orjson

try:  # an accelerator for the common request (one dense float tensor); everything works without it
    import simdjson
except ImportError:  # pragma: no cover - pysimdjson is a dependency, but has no wheel on some platforms
    simdjson = None

from ..errors import invalid_argument
from .values import BYTES_SUFFIX, NUMPY_OPTION, float_literal

# -- JSON out --------------------------------------------------------------------------------------


def _default(obj: Any) -> Any:
    """What orjson cannot write natively: 0-d, strided or exotic arrays and numpy scalars."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def encode_json(obj: Any) -> bytes:
    """Any other response body (status, metadata, classify/regress results, errors) as JSON.

    orjson writes non-finite floats as null; TF Serving writes the literals, so
    only when a null shows up is the document re-encoded exactly.
    """
    data = orjson.dumps(obj, default=_default, option=NUMPY_OPTION)
    if b"null" in data:
        data = orjson.dumps(_literal_non_finite(obj), default=_default, option=NUMPY_OPTION)
    return data


def _literal_non_finite(obj: Any) -> Any:
    if isinstance(obj, float | np.floating):
        return obj if math.isfinite(obj) else orjson.Fragment(float_literal(float(obj)))
    if isinstance(obj, dict):
        return {key: _literal_non_finite(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [_literal_non_finite(value) for value in obj]
    if isinstance(obj, np.ndarray) and obj.dtype.kind == "f":
        return _float_value(obj)
    return obj


def _float_value(array: np.ndarray) -> Any:
    """A float array as orjson input, with NaN/Infinity written literally (the slow path runs only then)."""
    if array.ndim == 0:
        value = array[()]
        return value if np.isfinite(value) else orjson.Fragment(float_literal(float(value)))
    array = np.ascontiguousarray(array)
    if np.isfinite(array).all():
        return array
    text = orjson.dumps(array, option=NUMPY_OPTION)  # orjson writes each non-finite value as null
    bad = array[~np.isfinite(array)]
    literals = np.where(np.isnan(bad), b"NaN", np.where(bad > 0, b"Infinity", b"-Infinity")).tolist()
    parts = text.split(b"null")
    pieces = [parts[0]]
    for literal, part in zip(literals, parts[1:], strict=True):
        pieces.append(literal)
        pieces.append(part)
    return orjson.Fragment(b"".join(pieces))


def _string_value(array: np.ndarray, as_b64: bool) -> Any:
    """Strings as UTF-8 text, or {"b64": ...} for ``*_bytes`` outputs and bytes that are not UTF-8."""
    flat = array.reshape(-1).tolist()
    out = []
    for value in flat:
        if isinstance(value, str):
            out.append({"b64": base64.b64encode(value.encode("utf-8")).decode("ascii")} if as_b64 else value)
            continue
        if not isinstance(value, bytes):
            value = str(value).encode("utf-8")
        if not as_b64:
            try:
                out.append(value.decode("utf-8"))
                continue
            except UnicodeDecodeError:
                pass
        out.append({"b64": base64.b64encode(value).decode("ascii")})
    if array.ndim == 0:
        return out[0]
    shaped = np.empty(len(out), dtype=object)
    shaped[:] = out
    return shaped.reshape(array.shape).tolist()


def _output_value(alias: str, array: np.ndarray) -> Any:
    """One output in a form orjson writes exactly like TF Serving would."""
    kind = array.dtype.kind
    if kind in "OSU":
        return _string_value(array, alias.endswith(BYTES_SUFFIX))
    if kind == "f":
        return _float_value(array)
    if kind in "biu":
        if array.ndim == 0:
            return array[()]
        return np.ascontiguousarray(array)
    if kind == "c":
        raise invalid_argument(f"Output {alias!r} has dtype {array.dtype.name}, which JSON cannot represent; "
                               "use the gRPC API for complex outputs")
    try:  # e.g. bfloat16 from ml_dtypes
        return _float_value(array.astype(np.float32))
    except (TypeError, ValueError):
        raise invalid_argument(f"Output {alias!r} has dtype {array.dtype}, which JSON cannot represent") from None


def _row_values(alias: str, array: np.ndarray, value: Any, size: int) -> list:
    """Per-instance pieces of one output for the row format with several outputs."""
    if isinstance(value, list):  # strings, already converted
        return value
    if isinstance(value, np.ndarray):
        return [value[i] for i in range(size)]
    return [_output_value(alias, np.asarray(array[i])) for i in range(size)]  # floats with NaN/Infinity


def encode_predict_response(outputs: dict[str, np.ndarray], row_format: bool) -> bytes:
    """A :predict response in the format the request used ("predictions" for rows, "outputs" for columns)."""
    if not outputs:
        raise invalid_argument("Cannot convert an empty set of output tensors to JSON")
    arrays = {alias: np.asarray(array) for alias, array in outputs.items()}
    if not row_format:
        values = {alias: _output_value(alias, array) for alias, array in arrays.items()}
        body = next(iter(values.values())) if len(values) == 1 else values
        return orjson.dumps({"outputs": body}, default=_default, option=NUMPY_OPTION)
    size = -1
    for alias, array in arrays.items():
        if array.ndim == 0:
            raise invalid_argument(f"Output {alias!r} is a scalar (it has no batch dimension), which the row format "
                                   "cannot return; send the request in the columnar format (\"inputs\")")
        if size >= 0 and array.shape[0] != size:
            raise invalid_argument(f"Output {alias!r} has inconsistent batch size: {array.shape[0]} expecting: "
                                   f"{size}; the row format needs every output to share dimension 0, use the "
                                   "columnar format (\"inputs\")")
        size = array.shape[0]
    values = {alias: _output_value(alias, array) for alias, array in arrays.items()}
    if len(values) == 1:
        return orjson.dumps({"predictions": next(iter(values.values()))}, default=_default, option=NUMPY_OPTION)
    columns = {alias: _row_values(alias, arrays[alias], value, size) for alias, value in values.items()}
    rows = [{alias: column[i] for alias, column in columns.items()} for i in range(size)]
    return orjson.dumps({"predictions": rows}, default=_default, option=NUMPY_OPTION)


