"""Prometheus metrics under TF Serving's own names.

Dashboards written for TF Serving query ``:tensorflow:serving:request_count``
(a counter with no ``_total`` suffix) and friends, so counters are exported
through a small collector that writes those exact sample names; histograms use
``prometheus_client.Histogram``, whose ``_bucket``/``_sum``/``_count`` samples
already match. Each engine has its own registry, so several engines can live in
one process (tests, a kernel-side private engine).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = ":tensorflow:serving:"

# TF Serving exports no *_created samples; dashboards built for it do not expect them.
disable_created_metrics()
CONTENT_TYPE = CONTENT_TYPE_LATEST

# TF Serving's request latency buckets: 10 µs growing by 1.8x, 33 of them (up to ~2.5e9 µs).
LATENCY_BUCKETS_US = tuple(10 * 1.8**i for i in range(33))
BATCH_SIZE_BUCKETS = tuple(2**i for i in range(15))


class _ExactCounters:
    """Counters exported under exactly the given name, without the ``_total`` suffix."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[tuple, float]] = defaultdict(dict)
        self._meta: dict[str, tuple[str, tuple[str, ...]]] = {}

    def declare(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self._meta[name] = (documentation, tuple(labels))

    def inc(self, name: str, labels: tuple, amount: float = 1.0) -> None:
        with self._lock:
            values = self._values[name]
            values[labels] = values.get(labels, 0.0) + amount

    def render(self) -> bytes:
        """Prometheus text format, written here because prometheus_client appends ``_total``."""
        with self._lock:
            snapshot = {name: dict(values) for name, values in self._values.items()}
        lines = []
        for name, (documentation, label_names) in self._meta.items():
            lines.append(f"# HELP {name} {documentation}")
            lines.append(f"# TYPE {name} counter")
            for labels, value in sorted(snapshot.get(name, {}).items()):
                pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in zip(label_names, labels, strict=True))
                lines.append(f"{name}{{{pairs}}} {value!r}")
        return ("\n".join(lines) + "\n").encode("utf-8")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class EngineMetrics:
    """The metrics one engine exports; every method is cheap and thread-safe."""

    REQUEST_COUNT = PREFIX + "request_count"

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[Histogram, tuple[str, ...]], Histogram] = {}
        self._counters = _ExactCounters()
        self._counters.declare(self.REQUEST_COUNT, "The total number of requests.", ("model_name", "status"))
        self.rest_direct_calls = Counter(
            "tfserve_rest_direct_calls", "REST model calls the httptools layer answered without a tornado "
            "RequestHandler (--rest_direct_calls)", registry=self.registry,
        )
        self.rest_front_process_calls = Counter(
            "tfserve_rest_front_process_calls", "REST model calls a front-door process parsed and decoded "
            "(--rest_front_processes)", registry=self.registry,
        )
        self.rest_front_process_handoffs = Counter(
            "tfserve_rest_front_process_handoffs", "REST connections a front-door process handed to the engine "
            "for a request it does not answer (a share token, a GET, a large body)", registry=self.registry,
        )
        self.request_latency = Histogram(
            PREFIX + "request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ("model_name", "API", "entrypoint"),
            buckets=LATENCY_BUCKETS_US,
            registry=self.registry,
        )
        self.runtime_latency = Histogram(
            PREFIX + "runtime_latency",
            "Distribution of wall time (in microseconds) for Tensorflow runtime.",
            ("model_name", "API", "runtime"),
            buckets=LATENCY_BUCKETS_US,
            registry=self.registry,
        )
        self.model_warmup_latency = Histogram(
            PREFIX + "model_warmup_latency",
            "Distribution of wall time (in microseconds) for warming up the model.",
            ("model_path", "status"),
            buckets=LATENCY_BUCKETS_US,
            registry=self.registry,
        )
        self.load_latency = Histogram(
            PREFIX + "load_latency",
            "Distribution of wall time (in microseconds) for loading a model version, warmup included.",
            ("model_name", "status"),
            buckets=LATENCY_BUCKETS_US,
            registry=self.registry,
        )
        batching = PREFIX + "batching_session:"
        labels = ("model_name", "signature_name")
        self.queuing_latency = Histogram(
            batching + "queuing_latency",
            "Distribution of wall time (in microseconds) spent in the batching queue.",
            labels,
            buckets=LATENCY_BUCKETS_US,
            registry=self.registry,
        )
        self.input_batch_size = Histogram(
            batching + "input_batch_size", "Distribution of input batch size.", labels,
            buckets=BATCH_SIZE_BUCKETS, registry=self.registry,
        )
        self.processed_batch_size = Histogram(
            batching + "processed_batch_size", "Distribution of processed batch size (after padding).", labels,
            buckets=BATCH_SIZE_BUCKETS, registry=self.registry,
        )
        self.padding_size = Histogram(
            batching + "padding_size", "Distribution of padding size in a batch.", labels,
            buckets=BATCH_SIZE_BUCKETS, registry=self.registry,
        )

    def record_request(self, model_name: str, api: str, entrypoint: str, status: str, latency_us: float) -> None:
        self._counters.inc(self.REQUEST_COUNT, (model_name, status))
        self._child(self.request_latency, (model_name, api, entrypoint)).observe(latency_us)

    def record_runtime(self, model_name: str, api: str, latency_us: float) -> None:
        self._child(self.runtime_latency, (model_name, api, "TF1")).observe(latency_us)

    def _child(self, histogram: Histogram, labels: tuple[str, ...]) -> Histogram:
        """A histogram's child for these labels, looked up once: ``labels()`` validates and locks on every call."""
        key = (histogram, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = histogram.labels(*labels)
        return child

    def batch_observer(self, model_name: str, signature_name: str) -> BatchMetrics:
        return BatchMetrics(self, model_name, signature_name)

    def exposition(self) -> bytes:
        return self._counters.render() + generate_latest(self.registry)


class BatchMetrics:
    """Implements the batching scheduler's observer protocol for one queue."""

    def __init__(self, metrics: EngineMetrics, model_name: str, signature_name: str) -> None:
        self._queuing = metrics.queuing_latency.labels(model_name, signature_name)
        self._input = metrics.input_batch_size.labels(model_name, signature_name)
        self._processed = metrics.processed_batch_size.labels(model_name, signature_name)
        self._padding = metrics.padding_size.labels(model_name, signature_name)

    def on_batch(
        self,
        *,
        queue_latencies_us: Sequence[float],
        input_batch_size: int,
        processed_batch_size: int,
        padding_size: int,
    ) -> None:
        for latency in queue_latencies_us:
            self._queuing.observe(latency)
        self._input.observe(input_batch_size)
        self._processed.observe(processed_batch_size)
        self._padding.observe(padding_size)
