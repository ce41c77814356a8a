"""Cumulative inference statistics per model version, in the shape of KServe V2's statistics extension.

The Prometheus histograms are per model (TF Serving's labels), and the latency windows keep
only the last minutes; V2's ``/stats`` asks, per version and since the start, how many
requests succeeded and failed, how long they took in all, and how many items they carried.
Recording is a dictionary lookup and a few additions under one lock, once per request.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass
class _Counts:
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    inference_count: int = 0  # items (batch rows) answered, as Triton counts inferences
    last_inference_ms: int = 0


class InferenceStatistics:
    """Counts and total durations per (model, version), since the engine started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], _Counts] = {}

    def record(self, model: str, version: int, ok: bool, duration_ns: int, items: int) -> None:
        with self._lock:
            counts = self._counts.get((model, version))
            if counts is None:
                counts = self._counts[(model, version)] = _Counts()
            if ok:
                counts.success_count += 1
                counts.success_ns += duration_ns
                counts.inference_count += items
            else:
                counts.fail_count += 1
                counts.fail_ns += duration_ns
            counts.last_inference_ms = int(time.time() * 1000)

    def forget(self, model: str) -> None:
        with self._lock:
            for key in [key for key in self._counts if key[0] == model]:
                del self._counts[key]

    def model_stats(self, versions: dict[str, list[int]]) -> list[dict]:
        """V2 ``model_stats`` entries for these models' versions (zeros for a version never asked)."""
        with self._lock:
            entries = []
            for model, numbers in versions.items():
                for version in numbers:
                    counts = self._counts.get((model, version), _Counts())
                    success = {"count": counts.success_count, "ns": counts.success_ns}
                    entries.append({
                        "name": model,
                        "version": str(version),
                        "last_inference": counts.last_inference_ms,
                        "inference_count": counts.inference_count,
                        "execution_count": counts.success_count,
                        "inference_stats": {
                            "success": success,
                            "fail": {"count": counts.fail_count, "ns": counts.fail_ns},
                            # One figure for the whole request: this engine does not time queue and
                            # compute apart per version (the batching histograms have them per model).
                            "queue": {"count": 0, "ns": 0},
                            "compute_input": {"count": 0, "ns": 0},
                            "compute_infer": dict(success),
                            "compute_output": {"count": 0, "ns": 0},
                        },
                        "batch_stats": [],
                    })
            return entries
