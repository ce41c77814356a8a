"""TF Serving's JSON classify/regress bodies to serialized tf.Example protos."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

try:  # an accelerator for the common request (one dense float tensor); everything works without it
    import simdjson
except ImportError:  # pragma: no cover - pysimdjson is a dependency, but has no wheel on some platforms
    simdjson = None

from ..errors import invalid_argument
from .values import decode_b64, describe

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
                raise invalid_argument(f"Feature {name!r} has {describe(item)}, which float32 cannot hold")
            item_kind = "float"
        elif isinstance(item, str):
            item_kind, item = "bytes", item.encode("utf-8", "surrogatepass")
        elif isinstance(item, dict):
            item_kind, item = "bytes", decode_b64(item, f"Feature {name!r}")
        else:
            raise invalid_argument(f"Feature {name!r} has an element of unexpected JSON type: {describe(item)} "
                                   "(expected numbers, strings or {\"b64\": ...}, or a flat list of them)")
        if kind is None:
            kind = item_kind
        elif item_kind != kind:
            raise invalid_argument(f"Feature {name!r} mixes value types: {describe(value[len(converted)])} in a "
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
        raise invalid_argument(f"{what} must be a JSON object mapping feature names to values, not {describe(obj)}")
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
        raise invalid_argument(f"\"examples\" must be a list of objects, not {describe(examples)}")
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


