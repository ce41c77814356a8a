"""TF Serving's JSON predict requests (row and columnar, b64) to numpy, by the rules of its json_tensor.cc."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

try:  # an accelerator for the common request (one dense float tensor); everything works without it
    import simdjson
except ImportError:  # pragma: no cover - pysimdjson is a dependency, but has no wheel on some platforms
    simdjson = None

from ..errors import ServingError, invalid_argument
from ..signature import (
    SignatureSpec,
    TensorSpec,
)
from .json_body import DenseNumbers
from .limits import DecodeBudget, out_of_memory
from .values import (
    ACCEPTED_KINDS,
    MAX_DEPTH,
    aliases,
    check_exact_ints,
    check_int_range,
    decode_b64,
    describe,
    exact_int_limit,
    floats_to,
    is_b64,
    is_named,
)


def _leading_shape(value: Any) -> tuple[int, ...]:
    """The shape a dense tensor would have, read along first elements (as TF Serving does)."""
    shape = []
    while isinstance(value, list) and len(shape) <= MAX_DEPTH:
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _leaf_problem(item: Any, spec: TensorSpec) -> str | None:
    """Why one JSON leaf cannot become an element of ``spec``, or None when it can."""
    target = spec.dtype
    kind = target.kind
    got = describe(item)
    if spec.is_string:
        if isinstance(item, str):
            return None
        if isinstance(item, dict) and "b64" in item:
            return None if is_b64(item) else f"{got} that is not exactly {{\"b64\": \"<base64 string>\"}}"
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
        limit = exact_int_limit(target)
        if abs(item) > limit:
            return f"the integer {item}, which {target.name} cannot hold without loss of precision (|x| <= {limit})"
        return None
    if math.isfinite(item) and abs(item) > float(finfo.max):
        return f"{describe(item)}, which is out of range for {target.name}"
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
    if len(shape) > MAX_DEPTH:
        return f"{what} is nested deeper than {MAX_DEPTH} levels", -1
    found = _structure_problem(value, shape, spec, what)
    if found is None and ranges:
        found = _value_problem(value, shape, spec, what)
    return found


def _not_dense(what: str, level: int, length: int, shape: tuple[int, ...]) -> str:
    return (f"{what} is not a dense tensor: a list at depth {level + 1} has {length} elements "
            f"where the first one implies shape {list(shape)}")


def _misplaced(what: str, item: Any, level: int, shape: tuple[int, ...]) -> str:
    return (f"{what} is not a dense tensor: {describe(item)} found at depth {level + 1} where the first "
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
            return max(map(abs, items)) <= exact_int_limit(spec.dtype)
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
    if kind not in ACCEPTED_KINDS.get(target.kind, ""):
        return _slow_array(value, spec, rows)
    if target.kind in "iu":
        check_int_range(raw, spec)
    elif target.kind == "f":
        if kind in "iu":
            check_exact_ints(raw, spec)
        else:
            return floats_to(raw, spec)
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



def _strings_to_array(value: Any, spec: TensorSpec, rows: bool, decoding: _Decoding) -> np.ndarray:
    """JSON strings and {"b64": ...} objects (nested to any depth) as an object array of bytes."""
    what = f"Input {spec.key!r}"
    shape = _leading_shape(value)
    if len(shape) > MAX_DEPTH:
        raise invalid_argument(f"{what} is nested deeper than {MAX_DEPTH} levels")
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
    if is_b64(item):
        return decode_b64(item, what)
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
        raise out_of_memory("The :predict request") from None


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
        raise invalid_argument(f"\"instances\" must be a list, not {describe(instances)}")
    if not instances:
        raise invalid_argument("\"instances\" is an empty list: send at least one instance")
    if not specs:
        raise invalid_argument(f"Signature {signature.name!r} takes no inputs: send \"inputs\": {{}} instead of "
                               "\"instances\"")
    if not is_named(instances[0]):
        if len(specs) > 1:
            raise invalid_argument(f"\"instances\" is a plain list, but signature {signature.name!r} has several "
                                   f"inputs {aliases(specs)}: each instance must be an object naming them")
        (spec,) = specs.values()  # a later instance that is an object is reported as a wrongly typed value
        return {spec.key: _json_to_array(instances, spec, True, _decoding(request, accounted, budget))}
    expected = specs.keys()
    columns: dict[str, list] = {key: [] for key in specs}
    for index, instance in enumerate(instances):
        if not is_named(instance):
            raise invalid_argument(f"Instance {index} is {describe(instance)} but instance 0 is an object naming "
                                   f"the inputs; every instance must be an object with keys {aliases(specs)}")
        if instance.keys() != expected:
            for key in instance:
                if key not in specs:
                    raise invalid_argument(f"Instance {index} names input {key!r}, which signature "
                                           f"{signature.name!r} does not have; expected inputs {aliases(specs)}")
            missing = sorted(key for key in specs if key not in instance)
            raise invalid_argument(f"Instance {index} is missing input {missing[0]!r}; every instance needs all of "
                                   f"{aliases(specs)}")
        for key, column in columns.items():
            column.append(instance[key])
    if accounted is not None:
        accounted += len(instances) * sum(map(_quoted, specs))
    decoding = _decoding(request, accounted, budget)
    return {key: _json_to_array(column, specs[key], True, decoding) for key, column in columns.items()}


def _decode_columns(inputs: Any, signature: SignatureSpec, request: dict, accounted: int | None,
                    budget: DecodeBudget) -> dict[str, np.ndarray]:
    specs = signature.inputs
    if is_named(inputs):
        for key in inputs:
            if key not in specs:
                raise invalid_argument(f"\"inputs\" names input {key!r}, which signature {signature.name!r} does "
                                       f"not have; expected inputs {aliases(specs)}")
        for key in specs:
            if key not in inputs:
                raise invalid_argument(f"Missing named input {key!r} in the \"inputs\" object; expected inputs "
                                       f"{aliases(specs)}")
        if accounted is not None:
            accounted += sum(map(_quoted, specs))
        decoding = _decoding(request, accounted, budget)
        return {key: _json_to_array(inputs[key], spec, False, decoding) for key, spec in specs.items()}
    if len(specs) != 1:
        raise invalid_argument(f"\"inputs\" is a plain value, but signature {signature.name!r} has "
                               f"{len(specs)} inputs {aliases(specs)}: send an object naming each of them")
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


