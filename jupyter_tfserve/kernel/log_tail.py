"""The last few records of a request log, read cheaply and summarised for a live view.

A dashboard that shows "what was the model asked just now" refreshes every half second,
and a request log can be hundreds of megabytes over several rotated files. So the tail
never re-reads what it has read: it keeps, per file, the offset of the first byte it has
not parsed and reads only what was appended since. A file seen for the first time (or one
that grew by more than ``tail_bytes`` between two refreshes) is entered near its end: TFRecord
has no sync markers, so the reader looks backwards for an offset where a record's length
checksum, its data checksum and every following record's check out to the end of the file
(a false start would need a 32-bit checksum collision followed by a valid chain of records).

Records are summarised, never dumped: each tensor as its name, dtype, shape, its first
few values and its min/max, so a logged image or a 10 MB embedding is one line.

``PredictionLog`` carries no timestamp (TF Serving's proto has none), so a record's time
is the file's modification time when the record was first read: exact to the refresh
interval for records seen live, an upper bound ("written by") for those found on first
display.
"""

from __future__ import annotations

import glob
import logging
import os
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.request_log_tfrecord import MAX_RECORD_BYTES, masked_crc32c

log = logging.getLogger(__name__)

DEFAULT_RECORDS = 10
DEFAULT_TAIL_BYTES = 1 << 20  # how far back a first read (or a catch-up after a burst) looks at first
MAX_TAIL_BYTES = 32 << 20  # and at most: records this large are not worth a live view's refresh
HEAD_VALUES = 4
MAX_EXAMPLES_SHOWN = 3
_HEADER = 12  # uint64 length + uint32 masked crc of the length
_FOOTER = 4


@dataclass(frozen=True)
class TensorSummary:
    """One tensor in a line: ``pixels float32[1,64] [0, 0.5, 1, 2, …] min 0 max 16``."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    head: tuple[Any, ...]
    minimum: float | None = None
    maximum: float | None = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    def text(self) -> str:
        shape = ",".join(str(d) for d in self.shape)
        values = ", ".join(_value_text(v) for v in self.head)
        more = ", …" if self.size > len(self.head) else ""
        line = f"{self.name} {self.dtype}[{shape}] [{values}{more}]"
        if self.minimum is not None and self.size > len(self.head):
            line += f" min {self.minimum:.5g} max {self.maximum:.5g}"
        return line


@dataclass(frozen=True)
class LoggedRecord:
    """One logged request and its answer, summarised."""

    time: float
    exact_time: bool  # False: found on the first read, ``time`` is an upper bound
    kind: str  # "predict", "classify", "regress", "multi_inference", ...
    model: str
    version: int
    signature: str
    inputs: tuple[TensorSummary, ...] = ()
    outputs: tuple[TensorSummary, ...] = ()
    note: str = ""  # what a summary of inputs/outputs could not say (examples, an unreadable record)

    def row(self) -> list[str]:
        """The cells of the table row a view shows."""
        stamp = time.strftime("%H:%M:%S", time.localtime(self.time))
        return [stamp if self.exact_time else f"≤ {stamp}", self.kind, f"{self.model} v{self.version}",
                self.signature, "; ".join(t.text() for t in self.inputs) or self.note,
                "; ".join(t.text() for t in self.outputs)]


def summarize_array(name: str, array: np.ndarray, head: int = HEAD_VALUES) -> TensorSummary:
    """Name, dtype, shape, the first ``head`` values and (numbers) min/max; the array itself is not kept."""
    flat = array.reshape(-1)
    values = tuple(_plain(v) for v in flat[:head])
    minimum = maximum = None
    if flat.size and array.dtype.kind in "biuf":
        finite = flat if array.dtype.kind != "f" else flat[np.isfinite(flat)]
        if finite.size:
            minimum, maximum = float(finite.min()), float(finite.max())
    return TensorSummary(name, array.dtype.name if array.dtype.kind not in "OSU" else "string",
                         tuple(int(d) for d in array.shape), values, minimum, maximum)


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value[:24]
    return value.item() if hasattr(value, "item") else value


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.5g}"
    if isinstance(value, bytes):
        return repr(value)
    return str(value)


def _tensor_summaries(protos: Any) -> tuple[TensorSummary, ...]:
    from ..engine.codecs.tensor_proto import tensor_proto_to_numpy

    summaries = []
    for alias in sorted(protos):
        proto = protos[alias]
        try:
            summaries.append(summarize_array(alias, tensor_proto_to_numpy(proto)))
        except Exception as error:  # a tensor this reader cannot decode: say so, keep the row
            shape = tuple(d.size for d in proto.tensor_shape.dim)
            summaries.append(TensorSummary(alias, f"dtype {proto.dtype} ({error})", shape, ()))
    return tuple(summaries)


def summarize_record(raw: bytes, seen: float, exact_time: bool = True) -> LoggedRecord:
    """A serialized ``PredictionLog`` as a :class:`LoggedRecord`."""
    from tensorflow_serving.apis import prediction_log_pb2

    record = prediction_log_pb2.PredictionLog()
    record.ParseFromString(raw)
    spec = record.log_metadata.model_spec
    kind = (record.WhichOneof("log_type") or "unknown").removesuffix("_log")
    base = {"time": seen, "exact_time": exact_time, "kind": kind, "model": spec.name,
            "version": int(spec.version.value), "signature": spec.signature_name}
    if kind == "predict":
        return LoggedRecord(**base, inputs=_tensor_summaries(record.predict_log.request.inputs),
                            outputs=_tensor_summaries(record.predict_log.response.outputs))
    if kind in ("classify", "regress"):
        entry = getattr(record, f"{kind}_log")
        examples = entry.request.input.example_list.examples
        note = f"{len(examples)} examples: " + "; ".join(_example_text(e) for e in examples[:MAX_EXAMPLES_SHOWN])
        if len(examples) > MAX_EXAMPLES_SHOWN:
            note += "; …"
        if kind == "regress":
            values = np.array([r.value for r in entry.response.result.regressions], np.float32)
            outputs = (summarize_array("regressions", values),)
        else:
            top = [max(c.classes, key=lambda k: k.score) for c in entry.response.result.classifications if c.classes]
            outputs = (summarize_array("top class", np.array([c.label.encode() or b"?" for c in top], object)),
                       summarize_array("top score", np.array([c.score for c in top], np.float32)))
        return LoggedRecord(**base, outputs=outputs, note=note)
    return LoggedRecord(**base, note=f"{kind} record")


def _example_text(example: Any) -> str:
    parts = []
    for name in sorted(example.features.feature):
        feature = example.features.feature[name]
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        shown = ", ".join(_value_text(_plain(v)) for v in values[:HEAD_VALUES])
        parts.append(f"{name}=[{shown}{', …' if len(values) > HEAD_VALUES else ''}]")
    return " ".join(parts)


# -- reading the tail ---------------------------------------------------------------------------------


def _record_at(data: bytes | memoryview, position: int) -> int | None:
    """The length of the whole framed record starting at ``position``, or None where none starts there
    (or it runs past the end of ``data``)."""
    if position + _HEADER > len(data):
        return None
    length_bytes = bytes(data[position:position + 8])
    if masked_crc32c(length_bytes) != struct.unpack_from("<I", data, position + 8)[0]:
        return None
    (length,) = struct.unpack("<Q", length_bytes)
    end = position + _HEADER + length + _FOOTER
    if length > MAX_RECORD_BYTES or end > len(data):
        return None
    payload = bytes(data[position + _HEADER:position + _HEADER + length])
    if masked_crc32c(payload) != struct.unpack_from("<I", data, end - _FOOTER)[0]:
        return None
    return end - position


def parse_records(data: bytes | memoryview, start: int = 0) -> tuple[list[bytes], int]:
    """Complete records from ``start`` on, and the offset just after the last one (a partial record at the
    end, one being written, is left for the next read). Stops at the first bad frame."""
    records, position = [], start
    while True:
        size = _record_at(data, position)
        if size is None:
            return records, position
        records.append(bytes(data[position + _HEADER:position + size - _FOOTER]))
        position += size


def find_record_start(data: bytes, minimum: int = 0) -> int | None:
    """The first offset >= ``minimum`` from which records chain to the end of ``data`` (a trailing partial
    record allowed), or None.

    Candidates are found with numpy: a record's length is a little-endian uint64 whose high
    bytes are zero and which fits in what is left; only those are checksummed in Python.
    """
    size = len(data)
    if size < _HEADER + _FOOTER:
        return None
    buffer = np.frombuffer(data, np.uint8)
    count = size - _HEADER - _FOOTER + 1
    high = buffer[4:count + 4] | buffer[5:count + 5] | buffer[6:count + 6] | buffer[7:count + 7]
    candidates = np.flatnonzero(high == 0)
    candidates = candidates[candidates >= minimum]
    lengths = sum(buffer[candidates + k].astype(np.int64) << (8 * k) for k in range(4))
    candidates = candidates[lengths + candidates + _HEADER + _FOOTER <= size]
    for candidate in candidates:
        position = int(candidate)
        records, end = parse_records(data, position)
        if not records:
            continue
        if end == size or _partial_tail(data, end):
            return position
    return None


def _partial_tail(data: bytes, position: int) -> bool:
    """What is left after ``position`` is the beginning of a record still being written."""
    left = len(data) - position
    if left < _HEADER:
        return True
    length_bytes = data[position:position + 8]
    if masked_crc32c(length_bytes) != struct.unpack_from("<I", data, position + 8)[0]:
        return False
    (length,) = struct.unpack("<Q", length_bytes)
    return position + _HEADER + length + _FOOTER > len(data)


@dataclass
class _FileState:
    offset: int  # the first byte not yet parsed


@dataclass
class LogTail:
    """The last ``records`` records of the files ``paths()`` names, each refresh reading only what is new.

    ``source`` is a glob (``"PREFIX*"``, rotated files included), a file prefix (``"*"`` is
    added when no file has that exact name), a list of those, or a callable returning a list
    of paths (``None`` or ``[]``: nothing to read now). ``model``, when given, keeps only that
    model's records (one prefix may be shared).
    """

    source: Any
    model: str | None = None
    records: int = DEFAULT_RECORDS
    tail_bytes: int = DEFAULT_TAIL_BYTES
    max_tail_bytes: int = MAX_TAIL_BYTES
    bytes_read: int = 0  # everything read from disk so far (what the tests hold the tail to)
    _files: dict[str, _FileState] = field(default_factory=dict)
    _recent: deque = field(default_factory=deque)

    def __post_init__(self) -> None:
        self._recent = deque(maxlen=self.records)

    def paths(self) -> list[str]:
        """The log files now, oldest first (the writer's names sort by the time each file was opened)."""
        source = self.source() if callable(self.source) else self.source
        if not source:
            return []
        items = [source] if isinstance(source, str | os.PathLike) else list(source)
        paths: list[str] = []
        for item in items:
            text = os.fspath(item)
            if glob.has_magic(text):
                paths.extend(sorted(glob.glob(text)))
            elif os.path.isfile(text):
                paths.append(text)
            else:
                paths.extend(sorted(glob.glob(glob.escape(text) + "*")))
        return paths

    def poll(self) -> list[LoggedRecord]:
        """Read what was appended since the last poll; the last ``records`` records, oldest first."""
        paths = self.paths()
        sizes = {}
        for path in paths:
            try:
                stat = os.stat(path)
            except OSError:
                continue
            sizes[path] = (stat.st_size, stat.st_mtime)
        for gone in set(self._files) - set(sizes):
            del self._files[gone]
        changed = [p for p in paths if p in sizes and sizes[p][0] != getattr(self._files.get(p), "offset", -1)]
        chunks: list[list[LoggedRecord]] = []
        found = 0
        for path in reversed(changed):  # newest first, until enough records are in hand
            if found >= self.records:
                self._files[path] = _FileState(sizes[path][0])  # older than what is shown: never read
                continue
            chunk = self._read_new(path, *sizes[path])
            chunks.append(chunk)
            found += len(chunk)
        for chunk in reversed(chunks):
            self._recent.extend(chunk)
        return list(self._recent)

    def _read_new(self, path: str, size: int, mtime: float) -> list[LoggedRecord]:
        state = self._files.get(path)
        if state is not None and state.offset > size:  # truncated or replaced: start again
            state = None
        exact = state is not None
        try:
            with open(path, "rb") as handle:
                if state is not None and size - state.offset <= self.tail_bytes:
                    handle.seek(state.offset)
                    data = handle.read(size - state.offset)
                    self.bytes_read += len(data)
                    raw, end = parse_records(data)
                    if end < len(data) and not _partial_tail(data, end):
                        log.warning("request log %s: bad record at offset %d; skipping to its end",
                                    path, state.offset + end)
                        end = len(data)
                    state.offset += end
                else:
                    raw, offset = self._read_end(handle, size)
                    self._files[path] = state = _FileState(offset)
        except OSError as error:
            log.info("request log %s not readable: %s", path, error)
            return []
        summaries = []
        for data in raw:
            try:
                summary = summarize_record(data, mtime, exact)
            except Exception as error:  # a record that does not parse is shown as such, not raised
                summary = LoggedRecord(mtime, exact, "unreadable", "?", 0, "", note=str(error))
            if self.model is None or summary.model == self.model:
                summaries.append(summary)
        return summaries[-self.records:]

    def _read_end(self, handle: Any, size: int) -> tuple[list[bytes], int]:
        """The records in the last bytes of a file (a window that grows until it holds enough)."""
        window = self.tail_bytes
        while True:
            start = max(0, size - window)
            handle.seek(start)
            data = handle.read(size - start)
            self.bytes_read += len(data)
            position = 0 if start == 0 else find_record_start(data)
            if position is not None:
                raw, end = parse_records(data, position)
                if len(raw) >= self.records or start == 0 or window >= self.max_tail_bytes:
                    return raw[-self.records:], start + end
            elif start == 0 or window >= self.max_tail_bytes:
                log.warning("request log %s: no complete record in its last %d bytes", handle.name, len(data))
                return [], size
            window *= 4


def summaries_html_rows(records: Iterable[LoggedRecord]) -> list[list[str]]:
    """Newest first: what a table shows."""
    return [record.row() for record in reversed(list(records))]


LOG_HEADER = ("time", "api", "model", "signature", "inputs", "outputs")


def describe_source(source: Any) -> str:
    if callable(source):
        return "the model's request log"
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return ", ".join(os.fspath(s) for s in source)


PathsFunction = Callable[[], list[str] | str | None]
