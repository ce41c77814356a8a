"""A/B traffic splits and shadow traffic for a model's unversioned requests.

A split divides the requests that name no version and no label across *arms*
(a version number or a label) by weight. A request that carries a routing key
(e.g. a user id in a header) always lands on the same arm while the split is
unchanged: the key is hashed to a point in [0, 1) and the arms own consecutive
slices of that interval. Requests with no key are spread at random.

Shadow traffic sends a copy of each routed request to a second version after the
primary has answered. The shadow's outputs are compared with the primary's and
recorded (agreement rate, output differences) but never returned, and a slow or
failing shadow never delays or fails the primary's answer.

Requests that name a version or a label are never rerouted: TF Serving's own
endpoints keep their exact behaviour.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..wire import ROUTE_KEY_HEADER, VERSION_HEADER  # noqa: F401 (re-exported for the engine's modules)
from .errors import invalid_argument

log = logging.getLogger(__name__)

DIFFERENCE_BIN_EDGES = tuple([0.0] + [10.0**exponent for exponent in range(-7, 3)] + [math.inf])
_HISTOGRAM_BINS = np.array((*DIFFERENCE_BIN_EDGES[:-1], 1e301))  # np.histogram wants finite edges


@dataclass(frozen=True)
class Arm:
    """One side of a split: a version number or a label, and its weight."""

    version: int | None
    label: str | None
    weight: float

    @property
    def name(self) -> str:
        return str(self.version) if self.version is not None else self.label  # type: ignore[return-value]


@dataclass(frozen=True)
class Split:
    arms: tuple[Arm, ...]

    def pick(self, key: str | None) -> Arm:
        point = _hash_point(key) if key else random.random()
        total = sum(arm.weight for arm in self.arms)
        edge = 0.0
        for arm in self.arms:
            edge += arm.weight / total
            if point < edge:
                return arm
        return self.arms[-1]

    def to_json(self) -> dict[str, float]:
        return {arm.name: arm.weight for arm in self.arms}


def parse_arm(name: str | int) -> tuple[int | None, str | None]:
    """``"2"`` or ``2`` is version 2; anything else that is a valid label is that label."""
    text = str(name).strip()
    if text.isascii() and text.isdigit():
        return int(text), None
    if not text or not text.isascii() or not text.replace("_", "").replace("-", "").isalnum() or text[0].isdigit():
        raise invalid_argument(f"split arm {name!r} is neither a version number nor a label")
    return None, text


def parse_split(weights: Mapping[str, object]) -> Split:
    """``{"1": 90, "2": 10}`` or ``{"stable": 0.9, "canary": 0.1}``: weights need not sum to anything."""
    if not isinstance(weights, Mapping) or len(weights) < 1:
        raise invalid_argument("split must map versions or labels to weights, e.g. {\"1\": 90, \"2\": 10}")
    arms = []
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
            raise invalid_argument(f"weight of split arm {name!r} must be a number >= 0, got {weight!r}")
        version, label = parse_arm(name)
        arms.append(Arm(version, label, float(weight)))
    if sum(arm.weight for arm in arms) <= 0:
        raise invalid_argument("split weights must not all be zero")
    return Split(tuple(arms))


def _hash_point(key: str) -> float:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass
class ShadowStats:
    """How a shadow version's answers compare with the primary's, instance by instance."""

    compared: int = 0
    agreed: int = 0
    errors: int = 0
    skipped: int = 0
    max_abs_difference: float = 0.0
    sum_abs_difference: float = 0.0
    histogram: list[int] = field(default_factory=lambda: [0] * (len(DIFFERENCE_BIN_EDGES) - 1))
    last_error: str = ""

    def to_json(self) -> dict:
        return {
            "compared": self.compared,
            "agreed": self.agreed,
            "agreement_rate": self.agreed / self.compared if self.compared else None,
            "errors": self.errors,
            "skipped": self.skipped,
            "max_abs_difference": self.max_abs_difference,
            "mean_abs_difference": self.sum_abs_difference / self.compared if self.compared else None,
            "difference_histogram": {
                "edges": [edge if math.isfinite(edge) else None for edge in DIFFERENCE_BIN_EDGES],
                "counts": list(self.histogram),
            },
            "last_error": self.last_error,
        }


@dataclass
class Shadow:
    version: int | None
    label: str | None
    tolerance: float = 1e-3
    stats: ShadowStats = field(default_factory=ShadowStats)

    @property
    def name(self) -> str:
        return str(self.version) if self.version is not None else self.label  # type: ignore[return-value]


def compare_outputs(
    primary: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray], tolerance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per instance: (agrees, largest absolute difference over all outputs).

    An instance agrees when, for every output, a score vector (float, last dimension > 1)
    has the same argmax, and anything else differs by at most ``tolerance`` (relative to
    the primary's magnitude, with ``tolerance`` as the absolute floor). Non-numeric outputs
    agree when equal.
    """
    batch = None
    agrees = None
    largest = None
    for key, first in primary.items():
        second = shadow.get(key)
        if second is None or second.shape != first.shape:
            size = first.shape[0] if first.ndim else 1
            return np.zeros(size, bool), np.full(size, np.inf)
        a = first.reshape(first.shape[0], -1) if first.ndim else first.reshape(1, -1)
        b = second.reshape(a.shape)
        if batch is None:
            batch = a.shape[0]
            agrees = np.ones(batch, bool)
            largest = np.zeros(batch)
        if a.dtype.kind in "fiub" and b.dtype.kind in "fiub":
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            difference = np.abs(a64 - b64)
            row_max = difference.max(axis=1) if difference.shape[1] else np.zeros(batch)
            largest = np.maximum(largest, np.nan_to_num(row_max, nan=np.inf))
            if first.ndim >= 2 and first.shape[-1] > 1 and first.dtype.kind == "f":
                scores_a = a64.reshape(first.shape)
                scores_b = b64.reshape(first.shape)
                same = (np.argmax(scores_a, axis=-1) == np.argmax(scores_b, axis=-1)).reshape(batch, -1).all(axis=1)
            else:
                same = (difference <= tolerance * np.maximum(1.0, np.abs(a64))).all(axis=1)
        else:
            same = (a == b).all(axis=1)
        agrees &= same
    if batch is None:
        return np.ones(0, bool), np.zeros(0)
    return agrees, largest


class Router:
    """Per model: an optional split and an optional shadow, and what each arm received."""

    def __init__(self) -> None:
        self._splits: dict[str, Split] = {}
        self._shadows: dict[str, Shadow] = {}
        self._arm_counts: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    def set_split(self, name: str, split: Split | None) -> None:
        with self._lock:
            if split is None:
                self._splits.pop(name, None)
            else:
                self._splits[name] = split
            self._arm_counts[name] = {}

    def split(self, name: str) -> Split | None:
        return self._splits.get(name)

    def set_shadow(self, name: str, shadow: Shadow | None) -> None:
        with self._lock:
            if shadow is None:
                self._shadows.pop(name, None)
            else:
                self._shadows[name] = shadow

    def shadow(self, name: str) -> Shadow | None:
        return self._shadows.get(name)

    def forget(self, name: str) -> None:
        self.set_split(name, None)
        self.set_shadow(name, None)
        self._arm_counts.pop(name, None)

    def route(self, name: str, key: str | None) -> Arm | None:
        """The arm an unversioned request for ``name`` goes to, or None when no split is set."""
        split = self._splits.get(name)
        if split is None:
            return None
        arm = split.pick(key)
        counts = self._arm_counts.setdefault(name, {})
        counts[arm.name] = counts.get(arm.name, 0) + 1
        return arm

    def count_fallback(self, name: str, arm: Arm, reason: str) -> None:
        """An arm that cannot answer (its version was unloaded): the request goes to the latest version."""
        counts = self._arm_counts.setdefault(name, {})
        key = f"{arm.name} unavailable, served by latest"
        if key not in counts:
            log.warning("model %s: split arm %s cannot answer (%s); serving the latest version", name, arm.name,
                        reason)
        counts[key] = counts.get(key, 0) + 1

    def record_shadow(self, shadow: Shadow, agrees: np.ndarray, differences: np.ndarray) -> None:
        stats = shadow.stats
        with self._lock:
            stats.compared += int(agrees.size)
            stats.agreed += int(agrees.sum())
            finite = differences[np.isfinite(differences)]
            if differences.size:
                stats.max_abs_difference = max(stats.max_abs_difference, float(differences.max()))
            stats.sum_abs_difference += float(finite.sum())
            counts, _ = np.histogram(np.minimum(differences, 1e300), bins=_HISTOGRAM_BINS)
            for index, count in enumerate(counts):
                stats.histogram[index] += int(count)

    def describe(self, name: str) -> dict:
        split = self._splits.get(name)
        shadow = self._shadows.get(name)
        return {
            "split": split.to_json() if split else None,
            "arm_requests": dict(self._arm_counts.get(name, {})),
            "shadow": {"target": shadow.name, "tolerance": shadow.tolerance, **shadow.stats.to_json()}
            if shadow else None,
        }
