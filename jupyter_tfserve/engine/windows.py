"""Rolling latency and throughput windows, per model and version, for dashboards.

Prometheus histograms answer "how was it since the start"; a dashboard asks "how is
it now". Each (model, version) keeps one bucket per wall-clock second for the last
``RETAINED_SECONDS``: a request count, an error count and up to
``SAMPLES_PER_SECOND`` latency samples (reservoir-sampled above that, so
percentiles stay unbiased at any rate while memory stays bounded).
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

RETAINED_SECONDS = 300
SAMPLES_PER_SECOND = 2000


@dataclass
class _Second:
    second: int
    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def add(self, latency_ms: float, ok: bool) -> None:
        self.requests += 1
        if not ok:
            self.errors += 1
        if len(self.latencies_ms) < SAMPLES_PER_SECOND:
            self.latencies_ms.append(latency_ms)
        else:
            slot = random.randrange(self.requests)
            if slot < SAMPLES_PER_SECOND:
                self.latencies_ms[slot] = latency_ms


def _percentiles(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    p50, p95, p99 = np.percentile(np.asarray(samples), [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99)}


class LatencyWindows:
    """Thread-safe: requests are recorded from the event loop and read from handlers."""

    def __init__(self, clock=time.time) -> None:
        self._clock = clock
        self._series: dict[tuple[str, str], deque[_Second]] = {}
        self._lock = threading.Lock()

    def record(self, model: str, version: int | str | None, latency_ms: float, ok: bool) -> None:
        """``version`` is a number, or e.g. ``"2 shadow"`` for a shadow's own series."""
        now = int(self._clock())
        key = (model, str(version) if version is not None else "none")
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = deque()
            if not series or series[-1].second != now:
                series.append(_Second(now))
                while series and series[0].second <= now - RETAINED_SECONDS:
                    series.popleft()
            series[-1].add(latency_ms, ok)

    def forget(self, model: str) -> None:
        with self._lock:
            for key in [key for key in self._series if key[0] == model]:
                del self._series[key]

    def summary(self, model: str, seconds: int = 60) -> dict:
        """Per version: a per-second series and totals over the last ``seconds`` (the current second included)."""
        seconds = max(1, min(int(seconds), RETAINED_SECONDS))
        now = int(self._clock())
        start = now - seconds + 1
        versions = {}
        with self._lock:
            picked = {key[1]: [s for s in series if s.second >= start]
                      for key, series in self._series.items() if key[0] == model}
            picked = {version: [(s.second, s.requests, s.errors, list(s.latencies_ms)) for s in buckets]
                      for version, buckets in picked.items()}
        for version, buckets in sorted(picked.items()):
            series = []
            all_samples: list[float] = []
            requests = errors = 0
            for second, count, failed, samples in buckets:
                requests += count
                errors += failed
                all_samples.extend(samples)
                series.append({"time": second, "requests": count, "errors": failed, **_percentiles(samples)})
            versions[version] = {
                "requests": requests,
                "errors": errors,
                "error_rate": errors / requests if requests else 0.0,
                "requests_per_second": requests / seconds,
                **_percentiles(all_samples),
                "series": series,
            }
        return {"model": model, "seconds": seconds, "now": now, "versions": versions}
