"""TF Serving's wire formats to and from numpy, strictly and without per-element Python loops.

This is the hot path of every request. JSON goes through orjson (the standard
library is only a fallback for the ``NaN``/``Infinity`` literals TF Serving
accepts), nested lists of numbers become arrays in one numpy call, and gRPC
tensors are read straight from their ``tensor_content`` bytes when the client
sent them that way. Python-level walks over the data happen only for strings
(which are Python objects anyway) and to explain a request that numpy refused.

The rules follow TF Serving's ``json_tensor.cc`` and TensorFlow's
``Tensor::FromProto``; where we are stricter (integer ranges, surplus values in
a TensorProto) the request would otherwise have been silently truncated.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import itertools
import json
import logging
import math
import os
import pickle
import signal
import struct
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

try:  # an accelerator for the common request (one dense float tensor); everything works without it
    import simdjson
except ImportError:  # pragma: no cover - pysimdjson is a dependency, but has no wheel on some platforms
    simdjson = None

from .errors import ServingError, invalid_argument, resource_exhausted
from .signature import (
    DEFAULT_SIGNATURE,
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
    DTYPE_NAMES,
    NUMPY_DTYPES,
    SignatureSpec,
    TensorSpec,
)

log = logging.getLogger(__name__)

_NUMPY_OPTION = orjson.OPT_SERIALIZE_NUMPY
_MAX_DEPTH = 64  # numpy's own limit on dimensions
_BYTES_SUFFIX = "_bytes"

# Which kinds of np.asarray(json_value) may be converted to a target kind without surprises.
_ACCEPTED_KINDS = {"f": "iuf", "c": "iuf", "i": "iu", "u": "iu", "b": "b"}


def _dtype_name(tf_dtype: int) -> str:
    return DTYPE_NAMES.get(tf_dtype, f"DataType({tf_dtype})")


def _aliases(keys: Any) -> str:
    return "{" + ", ".join(sorted(keys)) + "}"


# -- how much one request may decode to ------------------------------------------------------------

DEFAULT_MAX_DECODED_BYTES = 4 << 30
DEFAULT_DECODED_FLOOR_BYTES = 64 << 20
# The most a dense encoding needs per byte on the wire: an int64 of 0 is one byte of varint.
DECODED_BYTES_PER_WIRE_BYTE = 8


@dataclass(frozen=True)
class DecodeLimits:
    """How many bytes of tensors one request may decode to; checked before anything is allocated.

    A request states its own sizes: a TensorProto's shape (by TensorFlow's padding rule, one
    ``float_val`` with a shape of 2**29 is a 2 GiB array), a JSON list's length. Without a limit,
    whoever may call predict chooses how much memory the engine allocates. Any request may decode to
    ``floor_bytes`` (a zeros tensor sent as its shape alone is legitimate), a larger one to
    ``DECODED_BYTES_PER_WIRE_BYTE`` times its size on the wire, and none to more than ``max_bytes``.
    """

    max_bytes: int = DEFAULT_MAX_DECODED_BYTES
    floor_bytes: int = DEFAULT_DECODED_FLOOR_BYTES

    def limit_for(self, wire_bytes: int) -> int:
        """The decoded bytes allowed to a request of ``wire_bytes``."""
        return min(self.max_bytes, max(self.floor_bytes, DECODED_BYTES_PER_WIRE_BYTE * wire_bytes))


_DEFAULT_LIMITS = DecodeLimits()


class DecodeBudget:
    """One request's decoded bytes so far, against its :class:`DecodeLimits`.

    Decoders call :meth:`take` with an array's size *before* allocating it. The request's wire size
    may be given as a callable: a protobuf message's ``ByteSize`` costs a serialization, so it is
    asked only once a request decodes to more than the floor.
    """

    __slots__ = ("_limit", "_quotes", "_wire", "body", "limits", "used")

    def __init__(self, limits: DecodeLimits | None = None, wire_bytes: int | Callable[[], int] = 0,
                 body: bytes | None = None) -> None:
        self.limits = limits or _DEFAULT_LIMITS
        self._wire = wire_bytes
        self._limit: int | None = None
        self.used = 0
        # A REST body's text: its count of '"' proves, for most bodies, that no tensor holds a JSON
        # string (see decode_predict_request), which spares numeric inputs a look at every value's type.
        self.body = body
        self._quotes: int | None = None

    @property
    def quotes(self) -> int:
        if self._quotes is None:
            self._quotes = self.body.count(b'"') if self.body is not None else 1 << 62
        return self._quotes

    @property
    def wire_bytes(self) -> int:
        if callable(self._wire):
            self._wire = int(self._wire())
        return self._wire

    @property
    def limit(self) -> int:
        if self._limit is None:
            self._limit = self.limits.limit_for(self.wire_bytes)
        return self._limit

    def take(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` more; RESOURCE_EXHAUSTED (nothing allocated yet) when over the limit."""
        self.used += nbytes
        limits = self.limits
        if self.used <= limits.floor_bytes and self.used <= limits.max_bytes:
            return
        if self.used > self.limit:
            raise resource_exhausted(
                f"{what} would bring the request's tensors to {self.used} bytes, more than the {self.limit} bytes "
                f"this server decodes for a request of {self.wire_bytes} bytes (any request may decode to "
                f"{limits.floor_bytes} bytes, a larger one to {DECODED_BYTES_PER_WIRE_BYTE} times its size, none to "
                f"more than {limits.max_bytes}: --max_decoded_request_bytes)")


def _out_of_memory(what: str) -> ServingError:
    """MemoryError as the client's answer: never UNKNOWN, never counted as OK."""
    return resource_exhausted(f"{what}: the server ran out of memory decoding the request")


# -- JSON in ---------------------------------------------------------------------------------------


def parse_json_body(body: bytes) -> dict:
    """Parse a REST body, accepting the non-finite literals TF Serving clients send.

    orjson is tried first because it is several times faster; only a body it
    refuses (typically because of ``NaN``/``Infinity``) pays for the stdlib parser.
    """
    if not body or not body.strip():
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as fast_error:
        try:
            value = json.loads(body)
        except UnicodeDecodeError as error:
            raise invalid_argument(f"JSON Parse error: the body is not valid UTF-8 ({error.reason})") from None
        except ValueError as error:
            raise invalid_argument(f"JSON Parse error: {error}") from None
        except RecursionError:
            raise invalid_argument(f"JSON Parse error: {fast_error}") from None
    if not isinstance(value, dict):
        raise invalid_argument(f"JSON Parse error: the request body must be a JSON object, not {_describe(value)}")
    return value


# -- the fast path for one dense float tensor ------------------------------------------------------

# Below this size orjson's nested lists cost less than the fast path's fixed overhead.
FAST_PATH_MIN_BYTES = 1024
_FAST_TENSOR_KEYS = ("instances", "inputs")
_FAST_ALLOWED_KEYS = frozenset((*_FAST_TENSOR_KEYS, "signature_name"))
_FLOAT_TF_DTYPES = frozenset((DT_HALF, DT_FLOAT, DT_DOUBLE))
# A simdjson parser keeps the capacity of the largest document it has parsed (a 40 MB body leaves
# ~500 MB behind), so each thread's reused parser only sees bodies up to this size; a larger body
# gets a parser of its own, freed with it.
_REUSED_PARSER_MAX_BYTES = 4 << 20
_parsers = threading.local()


class DenseNumbers:
    """A JSON array holding only numbers, parsed to float64 in its dense shape, with the body it came from.

    It stands in for the nested lists orjson would give. A float input takes the
    values as they are (no Python float or list is ever made); any other input, or a
    value the float path cannot vouch for, re-parses the body the ordinary way, so
    every rule and error message of :func:`decode_predict_request` still applies.
    """

    __slots__ = ("body", "key", "values")

    def __init__(self, values: np.ndarray, key: str, body: bytes) -> None:
        self.values = values
        self.key = key
        self.body = body

    def materialize(self) -> Any:
        """The value as orjson parses it (nested lists)."""
        return parse_json_body(self.body)[self.key]

    def as_input(self, signature: SignatureSpec, budget: DecodeBudget | None = None) -> dict[str, np.ndarray] | None:
        """The array for a one-input float signature, exactly as the ordinary path would give it; else None."""
        if len(signature.inputs) != 1:
            return None
        (spec,) = signature.inputs.values()
        if spec.tf_dtype not in _FLOAT_TF_DTYPES:
            return None
        raw = self.values
        if np.abs(raw).max() > _exact_int_limit(spec.dtype) and (raw == np.trunc(raw)).all():
            return None  # maybe all JSON integers, which the ordinary path checks for exactness
        if budget is not None:
            budget.take(raw.size * spec.dtype.itemsize, f"Input {spec.key!r}")
        return {spec.key: _floats_to(raw, spec)}


def parse_predict_body(body: bytes) -> dict:
    """Like :func:`parse_json_body`, but a dense numeric tensor comes back as :class:`DenseNumbers`.

    A :predict body is usually one tensor of floats: 784 of them for an MNIST image,
    3072 for a CIFAR one. orjson makes a Python float and list for every value and
    numpy then walks them (about 0.5 ms for 3072); simdjson reads the numbers straight
    into a buffer and the array's density is checked on its bytes (0.15 ms for 3072 in all).
    Anything else (objects, strings, b64, NaN, ragged or empty arrays, invalid JSON)
    goes the ordinary way.
    """
    if simdjson is not None and len(body) >= FAST_PATH_MIN_BYTES and _may_be_dense(body):
        request = _parse_dense(body)
        if request is not None:
            return request
    return parse_json_body(body)


def _may_be_dense(body: bytes) -> bool:
    """False when the body's array holds a string or an object, told without parsing (memchr speed).

    The fast path's parse is wasted on such a body, and costs about a second for 40 MB of zeros
    ending in a string; keys and the signature name lie outside the array's brackets.
    """
    start, end = body.find(b"["), body.rfind(b"]")
    return body.find(b'"', start, end) < 0 and body.find(b"{", start, end) < 0


def _parse_dense(body: bytes) -> dict | None:
    if len(body) > _REUSED_PARSER_MAX_BYTES:
        parser = simdjson.Parser()
    else:
        parser = getattr(_parsers, "parser", None)
        if parser is None:
            parser = _parsers.parser = simdjson.Parser()
    try:
        document = parser.parse(body)
    except Exception:  # invalid JSON, or valid only for the stdlib parser: the ordinary path explains
        return None
    value = None
    try:
        if not isinstance(document, simdjson.Object):
            return None
        keys = list(document.keys())
        tensor_keys = [key for key in keys if key in _FAST_TENSOR_KEYS]
        if len(tensor_keys) != 1 or len(set(keys)) != len(keys) or not _FAST_ALLOWED_KEYS.issuperset(keys):
            return None
        request: dict[str, Any] = {}
        if "signature_name" in keys:
            name = document["signature_name"]
            # Its text must not hold a bracket, for the density check.
            if not isinstance(name, str) or "[" in name or "]" in name:
                return None
            request["signature_name"] = name
        key = tensor_keys[0]
        value = document[key]
        if not isinstance(value, simdjson.Array):
            return None
        try:
            flat = np.frombuffer(value.as_buffer(of_type="d"), dtype=np.float64)
        except (TypeError, ValueError):  # a non-number somewhere
            return None
        shape = _first_shape(value)
    finally:
        # The parser can only be reused once no proxy into its document is alive.
        del document, value
    if not flat.size or len(shape) > _MAX_DEPTH or math.prod(shape) != flat.size or not _is_dense(body, shape):
        return None
    request[key] = DenseNumbers(flat.reshape(shape), key, body)
    return request


def _first_shape(array: Any) -> tuple[int, ...]:
    """The shape implied by the first element at each depth (simdjson proxies: no values are made)."""
    shape = []
    while isinstance(array, simdjson.Array):
        shape.append(len(array))
        if not shape[-1]:
            break
        array = array[0]
    return tuple(shape)


def _is_dense(body: bytes, shape: tuple[int, ...]) -> bool:
    """Whether the body's only array has exactly ``shape``: its brackets and commas, and nothing else, must
    read as a dense array of that shape would (``[[,],[,]]`` for 2x2).

    Valid only when the array holds numbers and lists only and no other text of the body
    has a bracket (the caller checks both), so deleting number characters and whitespace
    leaves the array's structure alone.
    """
    start, end = body.find(b"["), body.rfind(b"]")
    if start < 0 or end < start:
        return False
    structure = body[start:end + 1].translate(None, _NUMBER_CHARACTERS)
    expected = _dense_structure_cached(shape) if math.prod(shape) <= _CACHED_STRUCTURE_ELEMENTS else (
        _dense_structure(shape))
    return structure == expected


_NUMBER_CHARACTERS = b"0123456789.eE+- \t\r\n"
# Structures are cached for the shapes clients repeat (a 28x28 image, a batch of 3072 floats), never for
# a large one: the cache key is the client's shape and each value about as large as its body, so caching
# every shape let a client pin 64 bodies' worth of memory. 64 entries of at most ~128 KiB: 8 MiB at most.
_CACHED_STRUCTURE_ELEMENTS = 1 << 16


def _dense_structure(shape: tuple[int, ...]) -> bytes:
    if len(shape) == 1:
        return b"[" + b"," * (shape[0] - 1) + b"]"
    inner = _dense_structure(shape[1:])
    return b"[" + b",".join([inner] * shape[0]) + b"]"


_dense_structure_cached = functools.lru_cache(maxsize=64)(_dense_structure)


def _is_b64(value: Any) -> bool:
    """TF Serving's test for a binary value: an object whose only key is "b64", holding a string."""
    return type(value) is dict and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_named(value: Any) -> bool:
    """A JSON object that maps names to values (as opposed to a {"b64": ...} value)."""
    return type(value) is dict and not _is_b64(value)


def _decode_b64(value: Any, what: str) -> bytes:
    if not _is_b64(value):
        raise invalid_argument(f'{what} has {_describe(value)}, which is not formatted correctly for base64 data '
                               '(expected {"b64": "<base64 string>"})')
    data = value["b64"]
    try:
        return base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument(f'{what} has a "b64" value that is not valid base64: {_clip(data)}') from None


def _clip(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _describe(item: Any) -> str:
    """A JSON value as a client would recognise it in an error message."""
    if item is None:
        return "null"
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        return f"the integer {item}"
    if isinstance(item, float):
        return f"the floating point number {_float_literal(item)}"
    if isinstance(item, str):
        return f"the string {_clip(item)}"
    if isinstance(item, dict):
        return "a {\"b64\": ...} object" if "b64" in item else "a JSON object"
    if isinstance(item, list):
        return "a list"
    return type(item).__name__


def _float_literal(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def _leading_shape(value: Any) -> tuple[int, ...]:
    """The shape a dense tensor would have, read along first elements (as TF Serving does)."""
    shape = []
    while isinstance(value, list) and len(shape) <= _MAX_DEPTH:
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _leaf_problem(item: Any, spec: TensorSpec) -> str | None:
    """Why one JSON leaf cannot become an element of ``spec``, or None when it can."""
    target = spec.dtype
    kind = target.kind
    got = _describe(item)
    if spec.is_string:
        if isinstance(item, str):
            return None
        if isinstance(item, dict) and "b64" in item:
            return None if _is_b64(item) else f"{got} that is not exactly {{\"b64\": \"<base64 string>\"}}"
        return f"{got} (expected a string or {{\"b64\": ...}})"
    if kind == "b":
        return None if isinstance(item, bool) else f"{got} (only true and false are booleans)"
    if isinstance(item, bool) or not isinstance(item, (int, float)):
        return got
    if kind in "iu":
        if isinstance(item, float):
            return got
        info = np.iinfo(target)
        if not info.min <= item <= info.max:
            return f"{got}, which is out of range [{info.min}, {info.max}]"
        return None
    if kind == "f":
        return _lossy_float(item, target)
    return None


def _lossy_float(item: float | int, target: np.dtype) -> str | None:
    """TF Serving's IsLosslessDecimal: finite numbers must fit the float type, integers exactly."""
    finfo = np.finfo(target)
    if isinstance(item, int):
        limit = _exact_int_limit(target)
        if abs(item) > limit:
            return f"the integer {item}, which {target.name} cannot hold without loss of precision (|x| <= {limit})"
        return None
    if math.isfinite(item) and abs(item) > float(finfo.max):
        return f"{_describe(item)}, which is out of range for {target.name}"
    return None


# The leaf types each kind of numeric input accepts (bool is not an int here, as in TF Serving).
_LEAF_TYPES: dict[str, frozenset[type]] = {
    "f": frozenset((int, float)), "c": frozenset((int, float)), "i": frozenset((int,)), "u": frozenset((int,)),
    "b": frozenset((bool,)),
}


def _find_problem(value: Any, spec: TensorSpec, what: str, *, ranges: bool = True) -> str | None:
    """Walk a JSON value to say exactly where and why it is no tensor of ``spec``; None when it is fine.

    Two passes: the first finds the first value (depth first) of the wrong shape or type, and screens
    each innermost list with one ``set(map(type, ...))`` instead of a Python step per value, so a
    40 MB list of zeros ending in a string is refused in well under a second; the second, only when
    the first found nothing and ``ranges`` is set, finds values out of the dtype's range.
    """
    found = _first_problem(value, spec, what, ranges=ranges)
    return None if found is None else found[0]


def _first_problem(value: Any, spec: TensorSpec, what: str, *, ranges: bool) -> tuple[str, int] | None:
    """The first problem's message and the index, in ``value``, of the element it lies in (-1: value itself)."""
    shape = _leading_shape(value)
    if len(shape) > _MAX_DEPTH:
        return f"{what} is nested deeper than {_MAX_DEPTH} levels", -1
    found = _structure_problem(value, shape, spec, what)
    if found is None and ranges:
        found = _value_problem(value, shape, spec, what)
    return found


def _not_dense(what: str, level: int, length: int, shape: tuple[int, ...]) -> str:
    return (f"{what} is not a dense tensor: a list at depth {level + 1} has {length} elements "
            f"where the first one implies shape {list(shape)}")


def _misplaced(what: str, item: Any, level: int, shape: tuple[int, ...]) -> str:
    return (f"{what} is not a dense tensor: {_describe(item)} found at depth {level + 1} where the first "
            f"element implies shape {list(shape)}")


def _structure_problem(value: Any, shape: tuple[int, ...], spec: TensorSpec, what: str) -> tuple[str, int] | None:
    """The first list of the wrong length, or leaf at the wrong depth or of the wrong JSON type."""
    accepted = None if spec.is_string else _LEAF_TYPES.get(spec.dtype.kind)
    rank = len(shape)
    stack: list[tuple[Any, int, int]] = [(value, 0, -1)]  # (item, depth, index of the top-level element)
    while stack:
        item, level, top = stack.pop()
        if isinstance(item, list):
            if level >= rank or len(item) != shape[level]:
                return _not_dense(what, level, len(item), shape), top
            if level == rank - 1 and accepted is not None:
                index = _first_unaccepted(item, accepted)
                if index >= 0:  # reported below, as a misplaced list or a value of the wrong type
                    stack.append((item[index], level + 1, index if level == 0 else top))
                continue
            _push_children(stack, item, level, top)
            continue
        if level != rank:
            return _misplaced(what, item, level, shape), top
        if accepted is not None:
            if type(item) not in accepted:
                return f"{what} expects {spec.dtype_name} values but got {_leaf_problem(item, spec)}", top
        else:
            problem = _leaf_problem(item, spec)
            if problem is not None:
                return f"{what} expects {spec.dtype_name} values but got {problem}", top
    return None


_SCREEN_STEP = 1 << 16


def _push_children(stack: list[tuple[Any, int, int]], item: list, level: int, top: int) -> None:
    """Queue a list's elements for the walk, first one on top; below level 0 each keeps its top-level index
    (the instance an error names)."""
    if level == 0:
        stack.extend((child, 1, index) for index, child in reversed(list(enumerate(item))))
    else:
        stack.extend((child, level + 1, top) for child in reversed(item))


def _first_unaccepted(items: list, accepted: frozenset[type]) -> int:
    """The index of the first element whose type is not ``accepted``, or -1; C-speed steps, no per-value Python."""
    for start in range(0, len(items), _SCREEN_STEP):
        chunk = items[start:start + _SCREEN_STEP] if len(items) > _SCREEN_STEP else items
        types = set(map(type, chunk))
        if not types <= accepted:
            kinds = list(map(type, chunk))
            return start + min(kinds.index(kind) for kind in types - accepted)
    return -1


def _value_problem(value: Any, shape: tuple[int, ...], spec: TensorSpec, what: str) -> tuple[str, int] | None:
    """Every leaf through :func:`_leaf_problem` (ranges, precision), one Python step per value except in
    innermost lists that :func:`_within_range` clears at once."""
    stack: list[tuple[Any, int, int]] = [(value, 0, -1)]
    while stack:
        item, level, top = stack.pop()
        if isinstance(item, list):
            if level >= len(shape) or len(item) != shape[level]:
                return _not_dense(what, level, len(item), shape), top
            if level == len(shape) - 1 and _within_range(item, spec):
                continue
            _push_children(stack, item, level, top)
            continue
        if level != len(shape):
            return _misplaced(what, item, level, shape), top
        problem = _leaf_problem(item, spec)
        if problem is not None:
            return f"{what} expects {spec.dtype_name} values but got {problem}", top
    return None


def _within_range(items: list, spec: TensorSpec) -> bool:
    """Whether every value of an innermost list, of accepted types already (the first pass saw to it), is
    certainly in range: min, max and abs run in C. False means look at each value."""
    if not items or spec.is_string:
        return not items
    kind = spec.dtype.kind
    try:
        if kind in "iu":
            info = np.iinfo(spec.dtype)
            return info.min <= min(items) and max(items) <= info.max
        if kind == "f":
            return max(map(abs, items)) <= _exact_int_limit(spec.dtype)
    except TypeError:  # a value of another type after all
        return False
    return True  # booleans and complex numbers have no range to check


def _explain(value: Any, spec: TensorSpec, rows: bool, *, ranges: bool = True) -> ServingError | None:
    """The error for a value numpy could not (or must not) convert, found by a walk; None if it is fine."""
    error = _explain_pass(value, spec, rows, ranges=False)
    if error is None and ranges:
        error = _explain_pass(value, spec, rows, ranges=True)
    return error


def _explain_pass(value: Any, spec: TensorSpec, rows: bool, *, ranges: bool) -> ServingError | None:
    name = f"Input {spec.key!r}"
    if not rows:
        problem = _find_problem(value, spec, name, ranges=ranges)
        return None if problem is None else invalid_argument(problem)
    # Rows: the walk over all of them finds the first instance at fault (instance 0 sets the shape, as
    # numpy would), then that instance alone is explained in its own terms.
    found = _first_problem(value, spec, name, ranges=ranges)
    if found is None:
        return None
    message, index = found
    if index < 0:
        return invalid_argument(message)
    problem = _find_problem(value[index], spec, f"{name} in instance {index}", ranges=ranges)
    if problem is not None:
        return invalid_argument(problem)
    shape, first = _leading_shape(value[index]), _leading_shape(value[0])
    if index and shape != first:
        return invalid_argument(f"{name} is ragged: instance {index} has shape {list(shape)} but instance 0 "
                                f"has shape {list(first)}; all instances must have the same shape")
    return invalid_argument(message)


def _slow_array(value: Any, spec: TensorSpec, rows: bool) -> np.ndarray:
    """Values numpy's type discovery refused: explain why, or convert leaves the walk has vouched for.

    The second case is rare but real: integers beyond int64 mixed with others
    (e.g. [0, 2**64 - 1] nested) give an object array although each fits the dtype.
    """
    error = _explain(value, spec, rows)
    if error is not None:
        raise error
    try:
        return np.array(value, dtype=spec.dtype)
    except (ValueError, TypeError, OverflowError):
        raise invalid_argument(f"Input {spec.key!r} cannot be converted to a {spec.dtype_name} tensor") from None


class _Decoding:
    """What decoding one :predict body carries from input to input."""

    __slots__ = ("budget", "no_strings")

    def __init__(self, budget: DecodeBudget, no_strings: bool) -> None:
        self.budget = budget
        # True when numpy may see the values as they are: the body's quotes prove no tensor holds a
        # JSON string, or the body is too small for it to matter (_too_small_to_matter).
        self.no_strings = no_strings


def _json_to_array(value: Any, spec: TensorSpec, rows: bool, decoding: _Decoding) -> np.ndarray:
    """One input's JSON value (or list of per-instance values) as an array of the signature's dtype."""
    if spec.is_string:
        return _strings_to_array(value, spec, rows, decoding)
    target = spec.dtype
    if not decoding.no_strings and _holds_text(value):
        # numpy's type discovery turns a list of numbers holding one string into a string array as wide
        # as the longest string for every element: 8000 zeros and one 40000-character string (a 56 KB
        # body) make 1.3 GB. Such a value is explained without numpy. (Bodies too small for that to
        # pass the floor skip the look: see _Decoding.)
        error = _explain(value, spec, rows, ranges=False)
        if error is not None:
            raise error
    try:
        raw = np.asarray(value)  # at most 8 bytes a value, and each took at least 2 bytes of the body
    except (ValueError, TypeError, OverflowError, RecursionError):
        return _slow_array(value, spec, rows)
    decoding.budget.take(raw.size * target.itemsize, f"Input {spec.key!r}")
    if raw.size == 0 and raw.dtype.kind == "f" and isinstance(value, list):
        return np.zeros(raw.shape, dtype=target)  # [] parses as float64 whatever the input's dtype
    kind = raw.dtype.kind
    if kind not in _ACCEPTED_KINDS.get(target.kind, ""):
        return _slow_array(value, spec, rows)
    if target.kind in "iu":
        _check_int_range(raw, spec)
    elif target.kind == "f":
        if kind in "iu":
            _check_exact_ints(raw, spec)
        else:
            return _floats_to(raw, spec)
    return raw.astype(target, copy=False)


def _holds_text(value: Any) -> bool:
    """Whether a JSON value holds a string anywhere, a depth at a time, the element types seen in C."""
    level = [value]
    while level:
        types = set(map(type, level))
        if str in types:
            return True
        if list not in types:
            return False
        lists = level if types == _ONLY_LISTS else filter(_IS_LIST, level)
        level = list(itertools.chain.from_iterable(lists))
    return False


_ONLY_LISTS = {list}
_IS_LIST = list.__instancecheck__


def _floats_to(raw: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Floats to the input's float dtype; a finite value that overflows it is an error, not an infinity."""
    with np.errstate(over="ignore"):
        array = raw.astype(spec.dtype, copy=False)
    if spec.dtype.itemsize < raw.dtype.itemsize and not np.isfinite(array).all():
        _check_float_range(raw, array, spec)
    return array


def _exact_int_limit(dtype: np.dtype) -> int:
    """The largest integer magnitude a float dtype holds exactly (2**24 - 1 for float32)."""
    return (1 << (np.finfo(dtype).nmant + 1)) - 1


def _check_int_range(raw: np.ndarray, spec: TensorSpec) -> None:
    if not raw.size:
        return
    info = np.iinfo(spec.dtype)
    low, high = int(raw.min()), int(raw.max())
    if low < info.min or high > info.max:
        bad = low if low < info.min else high
        raise invalid_argument(f"Input {spec.key!r} expects {spec.dtype_name} values but got the integer {bad}, "
                               f"which is out of range [{info.min}, {info.max}]")


def _check_exact_ints(raw: np.ndarray, spec: TensorSpec) -> None:
    if not raw.size:
        return
    limit = _exact_int_limit(spec.dtype)
    low, high = int(raw.min()), int(raw.max())
    if low < -limit or high > limit:
        bad = low if low < -limit else high
        raise invalid_argument(f"Input {spec.key!r} expects {spec.dtype_name} values but got the integer {bad}, "
                               f"which {spec.dtype.name} cannot hold without loss of precision (|x| <= {limit})")


def _check_float_range(raw: np.ndarray, array: np.ndarray, spec: TensorSpec) -> None:
    overflow = np.isinf(array) & np.isfinite(raw)
    if overflow.any():
        bad = float(raw[overflow].flat[0])
        raise invalid_argument(f"Input {spec.key!r} expects {spec.dtype_name} values but got "
                               f"{_describe(bad)}, which is out of range for {spec.dtype.name}")


def _strings_to_array(value: Any, spec: TensorSpec, rows: bool, decoding: _Decoding) -> np.ndarray:
    """JSON strings and {"b64": ...} objects (nested to any depth) as an object array of bytes."""
    what = f"Input {spec.key!r}"
    shape = _leading_shape(value)
    if len(shape) > _MAX_DEPTH:
        raise invalid_argument(f"{what} is nested deeper than {_MAX_DEPTH} levels")
    flat: list[bytes] = []
    try:
        _walk_strings(value, shape, spec, what, flat.append)
    except ServingError as error:
        better = _explain(value, spec, rows) if rows else None
        raise (better or error) from None
    decoding.budget.take(len(flat) * 8 + sum(map(len, flat)), what)
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)


def _walk_strings(value: Any, shape: tuple[int, ...], spec: TensorSpec, what: str, append: Any) -> None:
    rank = len(shape)
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, list):
            if level < rank and len(item) == shape[level]:
                if level == rank - 1:
                    for leaf in item:
                        if type(leaf) is str:
                            append(leaf.encode("utf-8", "surrogatepass"))
                        else:
                            append(_string_leaf(leaf, spec, what))
                else:
                    stack.extend((child, level + 1) for child in reversed(item))
                continue
        elif level == rank:
            append(item.encode("utf-8", "surrogatepass") if type(item) is str else _string_leaf(item, spec, what))
            continue
        raise invalid_argument(f"{what} is not a dense tensor: every list at the same depth must have the same "
                               f"length (the first elements imply shape {list(shape)})")


def _string_leaf(item: Any, spec: TensorSpec, what: str) -> bytes:
    if _is_b64(item):
        return _decode_b64(item, what)
    if isinstance(item, list):  # a list where a string was due: the value is ragged
        raise invalid_argument(f"{what} is not a dense tensor: every list at the same depth must have the same "
                               "length")
    raise invalid_argument(f"{what} expects {spec.dtype_name} values but got {_leaf_problem(item, spec)}")


_REQUEST_KEYS = frozenset(("instances", "inputs", "signature_name"))


# A key or name holding a quote may be written with \" or \u0022 (one quote character in the text, or none):
# its share of the body's quotes is unknown, so no proof is attempted (the sum stays negative whatever is added).
_UNPROVABLE = -(1 << 62)


def _quoted(text: str) -> int:
    """The '"' characters a JSON string's text holds: exactly its two quotes when it holds no quote itself."""
    return 2 if '"' not in text else _UNPROVABLE


def decode_predict_request(request: dict, signature: SignatureSpec,
                           budget: DecodeBudget | None = None) -> tuple[dict[str, np.ndarray], bool]:
    """A :predict body as arrays keyed by input alias, plus whether it used the row ("instances") format.

    The format decides the response's shape, so it is returned alongside.
    Shapes are not checked against the signature: TF Serving leaves that to
    TensorFlow (see :func:`shape_hints`). Arrays are counted against ``budget``,
    which should carry the body (its size and text) the request was parsed from.
    """
    if budget is None:
        budget = DecodeBudget()
    try:
        return _decode_predict_request(request, signature, budget)
    except MemoryError:
        raise _out_of_memory("The :predict request") from None


def _decode_predict_request(request: dict, signature: SignatureSpec,
                            budget: DecodeBudget) -> tuple[dict[str, np.ndarray], bool]:
    has_instances = "instances" in request
    has_inputs = "inputs" in request
    if has_instances and has_inputs:
        raise invalid_argument("The request body must contain only one of \"instances\" (row format) or "
                               "\"inputs\" (columnar format), not both")
    if not has_instances and not has_inputs:
        raise invalid_argument("Missing \"inputs\" or \"instances\" key in the request body")
    value = request["instances" if has_instances else "inputs"]
    if isinstance(value, DenseNumbers):
        dense = value.as_input(signature, budget)
        if dense is not None:
            return dense, has_instances
        value = value.materialize()
    # The body's '"' characters that its keys and signature name account for; any more may be strings
    # inside tensors (None: no proof needed, or none possible: the body's text is unknown, or it holds
    # other values that may hold strings).
    accounted: int | None = None
    if budget.body is not None and not _too_small_to_matter(budget) and _REQUEST_KEYS.issuperset(request):
        accounted = sum(map(_quoted, request))
        name = request.get("signature_name")
        if isinstance(name, str):
            accounted += _quoted(name)
    if has_instances:
        return _decode_rows(value, signature, request, accounted, budget), True
    return _decode_columns(value, signature, request, accounted, budget), False


def _too_small_to_matter(budget: DecodeBudget) -> bool:
    """Whether the body is too small for a string among numbers to make numpy's array exceed the floor:
    N values and a string of L characters make 4*N*L bytes, and N + L fit in the body, so at most the
    body's size squared."""
    wire = budget.wire_bytes
    return wire > 0 and wire * wire <= budget.limits.floor_bytes


def _decoding(request: dict, accounted: int | None, budget: DecodeBudget) -> _Decoding:
    no_strings = _too_small_to_matter(budget) or (accounted is not None and budget.quotes <= accounted)
    return _Decoding(budget, no_strings)


def _decode_rows(instances: Any, signature: SignatureSpec, request: dict, accounted: int | None,
                 budget: DecodeBudget) -> dict[str, np.ndarray]:
    specs = signature.inputs
    if not isinstance(instances, list):
        raise invalid_argument(f"\"instances\" must be a list, not {_describe(instances)}")
    if not instances:
        raise invalid_argument("\"instances\" is an empty list: send at least one instance")
    if not specs:
        raise invalid_argument(f"Signature {signature.name!r} takes no inputs: send \"inputs\": {{}} instead of "
                               "\"instances\"")
    if not _is_named(instances[0]):
        if len(specs) > 1:
            raise invalid_argument(f"\"instances\" is a plain list, but signature {signature.name!r} has several "
                                   f"inputs {_aliases(specs)}: each instance must be an object naming them")
        (spec,) = specs.values()  # a later instance that is an object is reported as a wrongly typed value
        return {spec.key: _json_to_array(instances, spec, True, _decoding(request, accounted, budget))}
    expected = specs.keys()
    columns: dict[str, list] = {key: [] for key in specs}
    for index, instance in enumerate(instances):
        if not _is_named(instance):
            raise invalid_argument(f"Instance {index} is {_describe(instance)} but instance 0 is an object naming "
                                   f"the inputs; every instance must be an object with keys {_aliases(specs)}")
        if instance.keys() != expected:
            for key in instance:
                if key not in specs:
                    raise invalid_argument(f"Instance {index} names input {key!r}, which signature "
                                           f"{signature.name!r} does not have; expected inputs {_aliases(specs)}")
            missing = sorted(key for key in specs if key not in instance)
            raise invalid_argument(f"Instance {index} is missing input {missing[0]!r}; every instance needs all of "
                                   f"{_aliases(specs)}")
        for key, column in columns.items():
            column.append(instance[key])
    if accounted is not None:
        accounted += len(instances) * sum(map(_quoted, specs))
    decoding = _decoding(request, accounted, budget)
    return {key: _json_to_array(column, specs[key], True, decoding) for key, column in columns.items()}


def _decode_columns(inputs: Any, signature: SignatureSpec, request: dict, accounted: int | None,
                    budget: DecodeBudget) -> dict[str, np.ndarray]:
    specs = signature.inputs
    if _is_named(inputs):
        for key in inputs:
            if key not in specs:
                raise invalid_argument(f"\"inputs\" names input {key!r}, which signature {signature.name!r} does "
                                       f"not have; expected inputs {_aliases(specs)}")
        for key in specs:
            if key not in inputs:
                raise invalid_argument(f"Missing named input {key!r} in the \"inputs\" object; expected inputs "
                                       f"{_aliases(specs)}")
        if accounted is not None:
            accounted += sum(map(_quoted, specs))
        decoding = _decoding(request, accounted, budget)
        return {key: _json_to_array(inputs[key], spec, False, decoding) for key, spec in specs.items()}
    if len(specs) != 1:
        raise invalid_argument(f"\"inputs\" is a plain value, but signature {signature.name!r} has "
                               f"{len(specs)} inputs {_aliases(specs)}: send an object naming each of them")
    (spec,) = specs.values()
    return {spec.key: _json_to_array(inputs, spec, False, _decoding(request, accounted, budget))}


def shape_hints(inputs: dict[str, np.ndarray], signature: SignatureSpec) -> list[str]:
    """Lines explaining inputs whose shape disagrees with the declared one, for TensorFlow's terse errors.

    Requests are never rejected on these grounds (TF Serving does not, and
    signatures often under-declare), so this only runs once TensorFlow failed.
    Dimension 0 is the batch and is ignored.
    """
    hints = []
    for key, array in inputs.items():
        spec = signature.inputs.get(key)
        if spec is None or spec.shape is None:
            continue
        declared = spec.shape
        shape = np.shape(array)
        mismatch = len(shape) != len(declared) or any(
            want != -1 and got != want for got, want in zip(shape[1:], declared[1:], strict=True)
        )
        if mismatch:
            hints.append(f"input {key!r} has shape {list(shape)} but the signature declares {list(declared)}")
    return hints


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
    data = orjson.dumps(obj, default=_default, option=_NUMPY_OPTION)
    if b"null" in data:
        data = orjson.dumps(_literal_non_finite(obj), default=_default, option=_NUMPY_OPTION)
    return data


def _literal_non_finite(obj: Any) -> Any:
    if isinstance(obj, float | np.floating):
        return obj if math.isfinite(obj) else orjson.Fragment(_float_literal(float(obj)))
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
        return value if np.isfinite(value) else orjson.Fragment(_float_literal(float(value)))
    array = np.ascontiguousarray(array)
    if np.isfinite(array).all():
        return array
    text = orjson.dumps(array, option=_NUMPY_OPTION)  # orjson writes each non-finite value as null
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
        return _string_value(array, alias.endswith(_BYTES_SUFFIX))
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
        return orjson.dumps({"outputs": body}, default=_default, option=_NUMPY_OPTION)
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
        return orjson.dumps({"predictions": next(iter(values.values()))}, default=_default, option=_NUMPY_OPTION)
    columns = {alias: _row_values(alias, arrays[alias], value, size) for alias, value in values.items()}
    rows = [{alias: column[i] for alias, column in columns.items()} for i in range(size)]
    return orjson.dumps({"predictions": rows}, default=_default, option=_NUMPY_OPTION)


# -- classify / regress ----------------------------------------------------------------------------

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _fill_feature(feature: Any, name: str, value: Any) -> None:
    """One JSON feature value (scalar or flat list) into a tf.train.Feature, typed by its first element."""
    values = value if isinstance(value, list) else [value]
    kind = None
    converted: list = []
    for item in values:
        if isinstance(item, bool):
            item_kind, item = "int64", int(item)  # TF Serving stores booleans as 0/1 int64
        elif isinstance(item, int):
            if not _INT64_MIN <= item <= _INT64_MAX:
                raise invalid_argument(f"Feature {name!r} has the integer {item}, which does not fit int64")
            item_kind = "int64"
        elif isinstance(item, float):
            if math.isfinite(item) and abs(item) > _FLOAT32_MAX:
                raise invalid_argument(f"Feature {name!r} has {_describe(item)}, which float32 cannot hold")
            item_kind = "float"
        elif isinstance(item, str):
            item_kind, item = "bytes", item.encode("utf-8", "surrogatepass")
        elif isinstance(item, dict):
            item_kind, item = "bytes", _decode_b64(item, f"Feature {name!r}")
        else:
            raise invalid_argument(f"Feature {name!r} has an element of unexpected JSON type: {_describe(item)} "
                                   "(expected numbers, strings or {\"b64\": ...}, or a flat list of them)")
        if kind is None:
            kind = item_kind
        elif item_kind != kind:
            raise invalid_argument(f"Feature {name!r} mixes value types: {_describe(value[len(converted)])} in a "
                                   f"feature whose first element makes it a {kind} list")
        converted.append(item)
    if kind == "int64":
        feature.int64_list.value.extend(converted)
    elif kind == "float":
        feature.float_list.value.extend(converted)
    elif kind == "bytes":
        feature.bytes_list.value.extend(converted)


def _fill_features(features: Any, obj: Any, what: str) -> None:
    if not isinstance(obj, dict):
        raise invalid_argument(f"{what} must be a JSON object mapping feature names to values, not {_describe(obj)}")
    for name, value in obj.items():
        feature = features[name]
        feature.Clear()
        _fill_feature(feature, name, value)


def examples_from_json(request: dict) -> list[bytes]:
    """A :classify/:regress body as serialized tf.Examples, each with the context's features merged in.

    Merging here (an example's own feature wins) lets the model see one flat
    batch of Examples, which is what its input pipeline parses.
    """
    from tensorflow.core.example import example_pb2

    if "examples" not in request:
        raise invalid_argument("Missing \"examples\" key in the request body (a list of objects mapping feature "
                               "names to values)")
    examples = request["examples"]
    if not isinstance(examples, list):
        raise invalid_argument(f"\"examples\" must be a list of objects, not {_describe(examples)}")
    if not examples:
        raise invalid_argument("\"examples\" is an empty list: send at least one example")
    base = example_pb2.Example()
    if "context" in request:
        _fill_features(base.features.feature, request["context"], "\"context\"")
    serialized = []
    for index, example in enumerate(examples):
        proto = example_pb2.Example()
        proto.CopyFrom(base)
        _fill_features(proto.features.feature, example, f"Example {index}")
        serialized.append(proto.SerializeToString())
    return serialized


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
        raise _out_of_memory("Tensor") from None


def _tensor_proto_to_numpy(proto: Any, budget: DecodeBudget, what: str) -> np.ndarray:
    tf_dtype = int(proto.dtype)
    dtype = NUMPY_DTYPES.get(tf_dtype)
    if dtype is None:
        raise invalid_argument(f"Tensor dtype {_dtype_name(tf_dtype)} is not supported")
    if proto.tensor_shape.unknown_rank:
        raise invalid_argument("A tensor in a request must have a known shape (tensor_shape.unknown_rank is set)")
    dims = proto.tensor_shape.dim
    if len(dims) > _MAX_DEPTH:
        raise invalid_argument(f"Tensor shape has {len(dims)} dimensions; at most {_MAX_DEPTH} are supported")
    shape = tuple(int(dim.size) for dim in dims)
    if any(size < 0 for size in shape):
        raise invalid_argument(f"Tensor shape {list(shape)} has a negative dimension")
    count = math.prod(shape)
    content = proto.tensor_content
    if content and tf_dtype != DT_STRING:
        if count == 0:
            return _empty(shape, dtype)
        if len(content) != count * dtype.itemsize:
            raise invalid_argument(f"tensor_content holds {len(content)} bytes but a {_dtype_name(tf_dtype)} tensor "
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
            raise invalid_argument(f"Tensor of {_dtype_name(tf_dtype)} has the value {bad} in int_val, which is out "
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
        raise invalid_argument(f"Tensor dtype {_dtype_name(tf_dtype)} is not supported")
    try:
        return np.ascontiguousarray(array, dtype=dtype.newbyteorder("<"))
    except (TypeError, ValueError, OverflowError):
        raise invalid_argument(f"Cannot convert an array of {array.dtype} to {_dtype_name(tf_dtype)}") from None


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
                                   f"set {_aliases(specs)}.")
    if budget is None:
        budget = DecodeBudget(wire_bytes=lambda: sum(proto.ByteSize() for proto in protos.values()))
    inputs = {}
    for key, spec in specs.items():
        if key not in protos:
            raise invalid_argument(f"Missing input {key!r}; signature {signature.name!r} expects inputs "
                                   f"{_aliases(specs)}")
        proto = protos[key]
        if int(proto.dtype) != spec.tf_dtype:
            raise invalid_argument(f"Input {key!r} expects {spec.dtype_name} but the request's tensor is "
                                   f"{_dtype_name(int(proto.dtype))}")
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
        return _out_of_memory(f"Input {key!r}")


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


# -- large REST bodies, decoded in worker processes ------------------------------------------------

# From this size on, a :predict body is parsed and decoded in a worker process. Parsing JSON is C code
# that holds the GIL from start to end (orjson: about 1.3 s for 40 MB here, simdjson 0.8 s), so a thread
# would not let the event loop run: /healthz, the management API and every other request would wait.
# Below it, the worst body costs the loop a few tens of milliseconds.
WORKER_MIN_BYTES = 256 * 1024
_WORKER_STEP = 1 << 14
_PIPE_STEP = 1 << 20
_FRAME = struct.Struct("<QQ")


def request_signature_name(request: Mapping[str, Any]) -> str:
    """The body's "signature_name" ("" when absent), which must be a string."""
    name = request.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument("'signature_name' attribute must be a string")
    return name


@dataclass
class DecodedBody:
    """What a worker made of a :predict body: the inputs for the signature it names, or why not.

    ``error`` is a decoding error, which the engine reports (and counts) as the answer; errors in the
    body as a whole (bad JSON, a signature name that is not a string) are raised by
    :meth:`DecodeWorkers.decode` instead, as the inline path raises them before calling the engine.
    ``signature`` is None when the servable has no signature of that name (the engine says so).
    """

    signature_name: str
    signature: SignatureSpec | None = None
    inputs: dict[str, Any] | None = None
    row_format: bool = False
    error: ServingError | None = None


class _PackedStrings:
    """An object array of bytes as one blob and its lengths: unpickling millions of bytes objects would hold
    the GIL for seconds in one call, so the engine rebuilds them a slice at a time (:func:`_unpack_inputs`)."""

    __slots__ = ("blob", "lengths", "shape")

    def __init__(self, array: np.ndarray) -> None:
        flat = array.reshape(-1).tolist()
        self.blob = b"".join(flat)
        self.lengths = np.fromiter(map(len, flat), dtype=np.int64, count=len(flat))
        self.shape = array.shape

    def __reduce__(self) -> tuple:
        return (_packed_strings, (pickle.PickleBuffer(self.blob), self.lengths, self.shape))


def _packed_strings(blob: Any, lengths: np.ndarray, shape: tuple[int, ...]) -> _PackedStrings:
    packed = _PackedStrings.__new__(_PackedStrings)
    packed.blob, packed.lengths, packed.shape = blob, lengths, shape
    return packed


def decode_body(body: bytes, signatures: Mapping[str, SignatureSpec], limits: DecodeLimits) -> DecodedBody:
    """Parse and decode a :predict body for the signature it names, as the inline path would (worker side)."""
    request = parse_predict_body(body)
    name = request_signature_name(request)
    signature = signatures.get(name or DEFAULT_SIGNATURE)
    decoded = DecodedBody(name, signature)
    if signature is None:
        return decoded
    try:
        decoded.inputs, decoded.row_format = decode_predict_request(request, signature,
                                                                    DecodeBudget(limits, len(body), body))
    except ServingError as error:
        decoded.error = error
    return decoded


def decode_worker_main() -> None:
    """A decoding worker's loop: a body and its servable's signatures in, a :class:`DecodedBody` out.

    Frames on stdin and stdout are (length of a pickle, number or length of raw buffers) and then
    the bytes; arrays travel as pickle protocol 5's out-of-band buffers, copied once. The worker
    volunteers first for the OOM killer, so that a body that outgrows memory ends the worker, which
    the engine replaces, and not the engine.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the engine's terminal is the engine's to handle
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text("1000")
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = source.read(_FRAME.size)
        if len(header) < _FRAME.size:
            return  # the engine is gone
        meta_size, body_size = _FRAME.unpack(header)
        signatures, limits = pickle.loads(source.read(meta_size))
        body = source.read(body_size)
        try:
            result: Any = decode_body(body, signatures, limits)
            if result.inputs is not None:
                result.inputs = {key: _PackedStrings(array) if array.dtype == object else np.ascontiguousarray(array)
                                 for key, array in result.inputs.items()}
        except ServingError as error:
            result = error
        except MemoryError:
            result = _out_of_memory("The :predict request")
        del body
        buffers: list[pickle.PickleBuffer] = []
        meta = pickle.dumps(result, protocol=5, buffer_callback=buffers.append)
        raws = [buffer.raw() for buffer in buffers]
        sink.write(_FRAME.pack(len(meta), len(raws)))
        sink.write(meta)
        for raw in raws:
            sink.write(struct.pack("<Q", raw.nbytes))
            sink.write(raw)
        sink.flush()


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def decode(self, body: bytes, signatures: Mapping[str, SignatureSpec], limits: DecodeLimits) -> Any:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        meta = pickle.dumps((dict(signatures), limits), protocol=5)
        stdin.write(_FRAME.pack(len(meta), len(body)))
        stdin.write(meta)
        view = memoryview(body)
        for start in range(0, len(view), _PIPE_STEP):  # the transport copies what it cannot write at once
            stdin.write(view[start:start + _PIPE_STEP])
            await stdin.drain()
        await stdin.drain()
        meta_size, count = _FRAME.unpack(await stdout.readexactly(_FRAME.size))
        meta = await stdout.readexactly(meta_size)
        buffers = []
        for _ in range(count):
            (size,) = struct.unpack("<Q", await stdout.readexactly(8))
            buffers.append(await stdout.readexactly(size))
        return pickle.loads(meta, buffers=buffers)

    def kill(self) -> None:
        """Kill the process, and collect it on the loop, so that its pipes close while the loop runs."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        collect = asyncio.get_running_loop().create_task(self.process.wait())
        _collecting.add(collect)
        collect.add_done_callback(_collecting.discard)


_collecting: set[asyncio.Task] = set()


class DecodeWorkers:
    """Worker processes that parse and decode large :predict bodies off the engine's event loop.

    Started on first use, at most ``max_workers`` at once (a body waits for a free one); a worker
    that dies (out of memory) or whose request is cancelled (timeout) is killed and replaced by a
    fresh one at the next large body. Workers get the engine's environment without ``drop_env``
    (the engine secret) and exit when the engine does (their stdin closes).
    """

    def __init__(self, limits: DecodeLimits | None = None, max_workers: int = 2,
                 drop_env: Sequence[str] = ()) -> None:
        self.limits = limits or DecodeLimits()
        self.max_workers = max(1, max_workers)
        self._drop_env = tuple(drop_env)
        self._idle: list[_Worker] = []
        self._slots: asyncio.Semaphore | None = None
        self.started = 0

    async def decode(self, body: bytes, signatures: Mapping[str, SignatureSpec]) -> DecodedBody:
        """The body decoded for the signature it names among ``signatures`` (ServingError for a bad body)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_workers)
        async with self._slots:
            worker = self._idle.pop() if self._idle else await self._start()
            try:
                result = await worker.decode(body, signatures, self.limits)
            except (asyncio.IncompleteReadError, ConnectionError):
                worker.kill()
                code = await worker.process.wait()
                log.warning("a decoding worker exited with %s on a body of %d bytes", code, len(body))
                raise resource_exhausted(f"The :predict request: the process decoding it stopped (exit status "
                                         f"{code}), most likely out of memory") from None
            except BaseException:
                worker.kill()
                raise
            self._idle.append(worker)
        if isinstance(result, ServingError):
            raise result
        if result.inputs is not None:
            result.inputs = await _unpack_inputs(result.inputs)
        return result

    async def _start(self) -> _Worker:
        env = {key: value for key, value in os.environ.items() if key not in self._drop_env}
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from jupyter_tfserve.engine.tensors import decode_worker_main; "
                                  "decode_worker_main()",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, limit=1 << 20,
        )
        self.started += 1
        log.info("started decoding worker %d (pid %d) for large request bodies", self.started, process.pid)
        return _Worker(process)

    async def aclose(self) -> None:
        """Stop the idle workers and wait for them (busy ones are killed as their requests end)."""
        while self._idle:
            worker = self._idle.pop()
            worker.kill()
            await worker.process.wait()


async def _unpack_inputs(inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """Arrays from a worker, strings rebuilt a slice at a time so that the event loop runs in between."""
    for key, value in inputs.items():
        if not isinstance(value, _PackedStrings):
            continue
        count = len(value.lengths)
        blob = value.blob if isinstance(value.blob, bytes) else bytes(value.blob)
        array = np.empty(count, dtype=object)
        start = 0
        for first in range(0, count, _WORKER_STEP):
            last = min(first + _WORKER_STEP, count)
            pieces = []
            for end in (np.cumsum(value.lengths[first:last]) + start).tolist():
                pieces.append(blob[start:end])
                start = end
            array[first:last] = pieces
            await asyncio.sleep(0)
        inputs[key] = array.reshape(value.shape)
    return inputs
