"""``BatchingParameters`` as a value: parsed from TF Serving's text proto, JSON or ``key=value``, and checked.

Kept apart from the scheduler so that what only reads or writes batching settings (the
management API, the Jupyter extension's settings) loads neither numpy nor the scheduler.
"""

from __future__ import annotations

import dataclasses
import itertools
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import invalid_argument

_BOOL_FIELDS = ("pad_variable_length_inputs", "enable_large_batch_splitting")
_WRAPPED_INT_FIELDS = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads",
                       "max_execution_batch_size")


@dataclass(frozen=True)
class BatchingOptions:
    """TF Serving's ``BatchingParameters`` as plain values, with its defaults.

    ``thread_pool_name`` is accepted in files but has no counterpart: batches run in the
    executor the scheduler is given.
    """

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int | None = None

    def __post_init__(self) -> None:
        # A list is the natural thing to pass; keep the options hashable and immutable anyway.
        if isinstance(self.allowed_batch_sizes, list):
            object.__setattr__(self, "allowed_batch_sizes", tuple(self.allowed_batch_sizes))

    @property
    def execution_batch_size(self) -> int:
        """The largest batch actually run: ``max_execution_batch_size`` only matters when splitting."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size is not None:
            return self.max_execution_batch_size
        return self.max_batch_size

    @classmethod
    def from_proto(cls, params: Any) -> BatchingOptions:
        """From a ``protos.BatchingParameters``; unset wrapper fields keep our defaults, as in TF Serving."""
        values: dict[str, Any] = {}
        for name in _WRAPPED_INT_FIELDS:
            if params.HasField(name):
                values[name] = int(getattr(params, name).value)
        if params.HasField("enable_large_batch_splitting"):
            values["enable_large_batch_splitting"] = bool(params.enable_large_batch_splitting.value)
        values["allowed_batch_sizes"] = tuple(int(size) for size in params.allowed_batch_sizes)
        values["pad_variable_length_inputs"] = bool(params.pad_variable_length_inputs)
        return cls(**values)

    def to_proto(self) -> Any:
        """A ``protos.BatchingParameters`` with every value set explicitly (so it reads back identically)."""
        from .protos import BatchingParameters

        params = BatchingParameters()
        params.max_batch_size.value = self.max_batch_size
        params.batch_timeout_micros.value = self.batch_timeout_micros
        params.max_enqueued_batches.value = self.max_enqueued_batches
        params.num_batch_threads.value = self.num_batch_threads
        params.allowed_batch_sizes.extend(self.allowed_batch_sizes)
        params.pad_variable_length_inputs = self.pad_variable_length_inputs
        params.enable_large_batch_splitting.value = self.enable_large_batch_splitting
        if self.max_execution_batch_size is not None:
            params.max_execution_batch_size.value = self.max_execution_batch_size
        return params

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], base: BatchingOptions | None = None) -> BatchingOptions:
        """From a JSON object or ``key=value`` strings, over ``base`` (default: the defaults); validated.

        Strings are converted (``"true"``, ``"16,32"``), so a magic's ``key=value`` pairs
        can be passed as they are; unknown keys and bad values are INVALID_ARGUMENT.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        changes: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                raise invalid_argument(f"unknown batching parameter {key!r}; known: {', '.join(sorted(known))}")
            changes[key] = _convert(key, value)
        options = dataclasses.replace(base or cls(), **changes)
        options.validate()
        return options

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (lists, not tuples), the inverse of :meth:`from_dict`."""
        values = dataclasses.asdict(self)
        values["allowed_batch_sizes"] = list(self.allowed_batch_sizes)
        return values

    def validate(self) -> None:
        """TF Serving's checks on a queue's options, raised as INVALID_ARGUMENT before anything runs."""
        for name in _WRAPPED_INT_FIELDS:
            value = getattr(self, name)
            if value is None and name == "max_execution_batch_size":
                continue
            if not _is_int(value):
                raise invalid_argument(f"batching parameter {name} must be an integer, got {value!r}")
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise invalid_argument(f"batching parameter {name} must be positive, got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise invalid_argument(
                f"batching parameter batch_timeout_micros must not be negative, got {self.batch_timeout_micros}")
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise invalid_argument(f"batching parameter {name} must be true or false, got {getattr(self, name)!r}")
        if self.max_execution_batch_size is not None and self.max_execution_batch_size < 1:
            raise invalid_argument(
                f"batching parameter max_execution_batch_size must be positive, got {self.max_execution_batch_size}")
        if self.enable_large_batch_splitting and self.execution_batch_size > self.max_batch_size:
            raise invalid_argument(
                f"with enable_large_batch_splitting, max_batch_size ({self.max_batch_size}) must be at least "
                f"max_execution_batch_size ({self.execution_batch_size})")
        sizes = self.allowed_batch_sizes
        if not isinstance(sizes, tuple) or not all(_is_int(size) for size in sizes):
            raise invalid_argument(f"allowed_batch_sizes must be a tuple of integers, got {sizes!r}")
        if sizes:
            if sizes[0] < 1 or any(b <= a for a, b in itertools.pairwise(sizes)):
                raise invalid_argument(f"allowed_batch_sizes must be positive and strictly increasing, got "
                                       f"{list(sizes)}")
            if sizes[-1] != self.execution_batch_size:
                which = "max_execution_batch_size" if self.enable_large_batch_splitting else "max_batch_size"
                raise invalid_argument(f"the last entry of allowed_batch_sizes ({sizes[-1]}) must equal "
                                       f"{which} ({self.execution_batch_size})")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _to_int(key: str, value: Any) -> int:
    if _is_int(value):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise invalid_argument(f"batching parameter {key} has an invalid value {value!r} (an integer is needed)")


def _convert(key: str, value: Any) -> Any:
    """Turn one JSON / ``key=value`` value into the field's type, or refuse it."""
    if key in _BOOL_FIELDS:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.strip().lower() in ("true", "1", "yes")
        raise invalid_argument(f"batching parameter {key} has an invalid value {value!r} (true or false is needed)")
    if key == "allowed_batch_sizes":
        if isinstance(value, str):
            value = [part for part in value.strip().strip("[]()").replace(";", ",").split(",") if part.strip()]
        elif _is_int(value):
            value = [value]
        if not isinstance(value, Sequence):
            raise invalid_argument(f"batching parameter {key} has an invalid value {value!r} (a list is needed)")
        return tuple(_to_int(key, item) for item in value)
    if key == "max_execution_batch_size" and (value is None or (isinstance(value, str) and
                                                                value.strip().lower() in ("", "none", "null"))):
        return None
    return _to_int(key, value)


