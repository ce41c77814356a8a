"""Request logs: sampled ``PredictionLog`` records of what each model was asked and answered.

TF Serving has ``ModelConfig.logging_config`` but ships no log collector, so setting it
fails there ("No request-logger-creator provided"). Here the ``file`` collector is built
in: records go to TFRecord files under ``filename_prefix`` (the warmup-file format, so a
log can be replayed, or become a version's warmup requests, unchanged).

The request path only samples and appends references to arrays it already decoded to a
deque (no lock, no wake-up); one writer thread drains it every few milliseconds, builds the
protos, frames and writes them. Waking the writer per record cost more than building the
record (GIL hand-offs), hence polling. The queue is bounded: when it is full the record is
dropped and counted, and the request never waits. Settings follow the
model config: a reload that changes a model's ``logging_config`` retires its old file
(flushed, closed) and starts the new one.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from ..private_files import make_private_dirs
from .config import ConfigError, ModelServerConfig
from .request_log_tfrecord import frame

log = logging.getLogger(__name__)

COLLECTOR_TYPES = ("", "file")
DEFAULT_MAX_FILE_BYTES = 64 << 20
DEFAULT_QUEUE_RECORDS = 4096
WRITER_POLL_SECONDS = 0.02
FILE_SUFFIX = ".tfrecord"


@dataclass(frozen=True)
class LogSettings:
    """One model's ``logging_config``, checked."""

    filename_prefix: str
    sampling_rate: float

    @classmethod
    def from_model_config(cls, model) -> LogSettings | None:
        """None when the model logs nothing (no config, or a sampling rate of 0)."""
        if not model.HasField("logging_config"):
            return None
        config = model.logging_config
        rate = config.sampling_config.sampling_rate
        collector = config.log_collector_config
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"model {model.name!r}: logging_config sampling_rate must be in [0, 1], got {rate}")
        if rate == 0.0:
            return None
        if collector.type not in COLLECTOR_TYPES:
            raise ConfigError(f"model {model.name!r}: no log collector of type {collector.type!r}; "
                              "this engine provides type 'file'")
        if not collector.filename_prefix:
            raise ConfigError(f"model {model.name!r}: logging_config needs log_collector_config.filename_prefix")
        return cls(collector.filename_prefix, rate)


@dataclass(eq=False)
class _Sink:
    """A model's current log file; touched only by the writer thread (counters excepted)."""

    model: str
    settings: LogSettings
    max_file_bytes: int
    files: list[str] = field(default_factory=list)
    written: int = 0
    _handle: object = None
    _bytes: int = 0

    def write(self, data: bytes) -> None:
        if self._handle is None or self._bytes >= self.max_file_bytes:
            self._open_next()
        self._handle.write(data)
        self._bytes += len(data)
        self.written += 1

    def _open_next(self) -> None:
        self.close()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        path = f"{self.settings.filename_prefix}-{stamp}-{os.getpid()}-{len(self.files):05d}{FILE_SUFFIX}"
        make_private_dirs(Path(path).parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._handle = os.fdopen(fd, "ab")
        self._bytes = 0
        self.files.append(path)
        log.info("model %s: request log file %s", self.model, path)

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


_STOP = object()


class RequestLogger:
    """Every model's request log: sampling on the request path, writing in one thread."""

    def __init__(self, registry: CollectorRegistry | None = None, *, queue_records: int = DEFAULT_QUEUE_RECORDS,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
        self.max_file_bytes = max_file_bytes
        self._queue_records = queue_records
        self._pending: collections.deque = collections.deque()
        self._wake = threading.Event()  # control items (retire, flush, stop) do not wait for the poll
        self._sinks: dict[str, _Sink] = {}
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self._records = Counter("tfserve_request_log_records", "Request log records, by what became of them.",
                                ("model_name", "outcome"), registry=registry)

    # -- settings --------------------------------------------------------------------------------

    def configure(self, config: ModelServerConfig) -> None:
        """Apply every model's ``logging_config``; all are checked before any changes (a bad one raises)."""
        wanted = {}
        for model in config.model_config_list.config:
            settings = LogSettings.from_model_config(model)
            if settings is not None:
                wanted[model.name] = settings
        for name, sink in list(self._sinks.items()):
            if wanted.get(name) != sink.settings:
                del self._sinks[name]
                self._retire(sink)
        for name, settings in wanted.items():
            if name not in self._sinks:
                self._sinks[name] = _Sink(name, settings, self.max_file_bytes)
                log.info("model %s: logging %g of requests to %s*", name, settings.sampling_rate,
                         settings.filename_prefix)
        if self._sinks and self._thread is None:
            self._thread = threading.Thread(target=self._write_loop, name="tfserve-request-log", daemon=True)
            self._thread.start()

    def _retire(self, sink: _Sink) -> None:
        """The old file gets every record queued before now, then is closed (the queue keeps order)."""
        log.info("model %s: request logging to %s* stopped", sink.model, sink.settings.filename_prefix)
        if self._thread is not None:
            self._control(("retire", sink))

    def _control(self, item: object) -> None:
        self._pending.append(item)  # never refused: control items are few, and the writer needs them
        self._wake.set()

    def describe(self, name: str) -> dict | None:
        """What the panel and ``%tfserve log`` show: the rate, where it goes, how much was kept."""
        sink = self._sinks.get(name)
        if sink is None:
            return None
        return {"sampling_rate": sink.settings.sampling_rate, "filename_prefix": sink.settings.filename_prefix,
                "records_written": sink.written, "records_dropped": self.dropped(name), "files": list(sink.files)}

    def dropped(self, name: str) -> int:
        return int(self._records.labels(name, "dropped")._value.get())

    # -- the request path ------------------------------------------------------------------------

    def record_predict(self, name: str, version: int, signature: str, inputs: Mapping[str, np.ndarray],
                       output_filter: Sequence[str], outputs: Mapping[str, np.ndarray]) -> None:
        """Sample one answered Predict; the arrays are referenced, not copied (nothing writes to them after)."""
        sink = self._sinks.get(name)
        if sink is not None and random.random() < sink.settings.sampling_rate:
            self._offer(sink, ("predict", sink, version, signature, inputs, tuple(output_filter), outputs))

    def record_examples(self, api: str, name: str, version: int, signature: str, examples: list[bytes],
                        results: list) -> None:
        """Sample one answered Classify or Regress (``api``), examples as the serialized bytes served."""
        sink = self._sinks.get(name)
        if sink is not None and random.random() < sink.settings.sampling_rate:
            self._offer(sink, (api, sink, version, signature, examples, results))

    def _offer(self, sink: _Sink, item: tuple) -> None:
        if len(self._pending) < self._queue_records:
            self._pending.append(item)  # deque.append is atomic: no lock on the request path
        else:
            self._records.labels(sink.model, "dropped").inc()

    # -- the writer thread -----------------------------------------------------------------------

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the writer between records (to copy a consistent set of files); requests keep going."""
        with self._write_lock:
            yield

    def _write_loop(self) -> None:
        from .request_log_records import build_record

        open_sinks: set[_Sink] = set()
        pending = self._pending
        while True:
            if not pending:
                self._wake.wait(WRITER_POLL_SECONDS)
                self._wake.clear()
                continue
            written: collections.Counter = collections.Counter()  # counted once a drain: labels() takes a lock
            with self._write_lock:
                while pending:
                    item = pending.popleft()
                    if item is _STOP:
                        self._count(written)
                        for sink in open_sinks:
                            sink.close()
                        return
                    kind, sink = item[0], item[1]
                    if kind == "retire":
                        sink.close()
                        open_sinks.discard(sink)
                    elif kind == "barrier":
                        self._count(written)
                        for open_sink in open_sinks:
                            open_sink.flush()
                        item[2].set()
                    else:
                        try:
                            sink.write(frame(build_record(item)))
                            open_sinks.add(sink)
                            written[sink.model] += 1
                        except Exception:  # one bad record or a full disk must not end logging for everyone
                            log.exception("model %s: request log record not written", sink.model)
                            self._records.labels(sink.model, "failed").inc()
                self._count(written)
                for open_sink in open_sinks:
                    open_sink.flush()

    def _count(self, written: collections.Counter) -> None:
        for model, count in written.items():
            self._records.labels(model, "written").inc(count)
        written.clear()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record queued before now is on disk; False if that took too long."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._control(("barrier", None, done))
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, close every file (shutdown)."""
        for name in list(self._sinks):
            self._retire(self._sinks.pop(name))
        if self._thread is not None:
            self._control(_STOP)
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("request log writer did not finish in %.0f s; some records may be lost", timeout)
            self._thread = None
