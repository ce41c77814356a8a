"""TF Serving's REST bodies as JSON, and the fast path for one dense float tensor.

Parsing accepts the non-finite literals TF Serving's clients send (``NaN``, ``Infinity``).
"""

from __future__ import annotations

import functools
import json
import math
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

try:  # an accelerator for the common request (one dense float tensor); everything works without it
    import simdjson
except ImportError:  # pragma: no cover - pysimdjson is a dependency, but has no wheel on some platforms
    simdjson = None

from ..errors import invalid_argument
from ..signature import (
    DT_DOUBLE,
    DT_FLOAT,
    DT_HALF,
    SignatureSpec,
)
from .limits import DecodeBudget
from .values import MAX_DEPTH, describe, exact_int_limit, floats_to

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
        raise invalid_argument(f"JSON Parse error: the request body must be a JSON object, not {describe(value)}")
    return value


def request_signature_name(request: Mapping[str, Any]) -> str:
    """The body's "signature_name" ("" when absent), which must be a string."""
    name = request.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument("'signature_name' attribute must be a string")
    return name


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
        if np.abs(raw).max() > exact_int_limit(spec.dtype) and (raw == np.trunc(raw)).all():
            return None  # maybe all JSON integers, which the ordinary path checks for exactness
        if budget is not None:
            budget.take(raw.size * spec.dtype.itemsize, f"Input {spec.key!r}")
        return {spec.key: floats_to(raw, spec)}


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
    if not flat.size or len(shape) > MAX_DEPTH or math.prod(shape) != flat.size or not _is_dense(body, shape):
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


