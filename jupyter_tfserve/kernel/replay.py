"""Replay a request log against another version or label, and say where it answers differently.

A request log (``PredictionLog`` records in TFRecord files, what the engine's ``logging_config``
writes) holds each request and the answer it got. Sending the same requests to a candidate
version and comparing answers is the test a team wants before the candidate takes traffic:
yesterday's real inputs, not a hand-made sample. The requests go through the engine's REST
API like any client's, so the candidate is tested on the path it will serve.

TensorFlow and numpy are imported when a log is read, never with the client.
"""

from __future__ import annotations

import base64
import glob
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

DEFAULT_ATOL = 1e-6
DEFAULT_RTOL = 1e-5


@dataclass
class ReplayRow:
    """One logged request replayed: what it was, whether the answers agree, and by how much they differ."""

    index: int
    kind: str
    logged_version: int
    agrees: bool
    max_abs_diff: float | None = None
    error: str | None = None


@dataclass
class ReplayResult:
    """The replay of a log against one target: a summary line and a per-request table."""

    model: str
    target: str
    rows: list[ReplayRow] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.rows)

    @property
    def agreed(self) -> int:
        return sum(row.agrees for row in self.rows)

    @property
    def errors(self) -> int:
        return sum(row.error is not None for row in self.rows)

    @property
    def agreement(self) -> float:
        return self.agreed / self.requests if self.rows else 1.0

    @property
    def disagreements(self) -> list[ReplayRow]:
        return [row for row in self.rows if not row.agrees]

    def summary(self) -> str:
        worst = max((row.max_abs_diff for row in self.rows if row.max_abs_diff is not None), default=0.0)
        return (f"{self.model} {self.target}: {self.agreed}/{self.requests} logged requests answered the same "
                f"({self.agreement:.1%}); {self.requests - self.agreed - self.errors} differ, {self.errors} failed; "
                f"largest difference {worst:.3g}")

    def table(self) -> Any:
        """A pandas DataFrame when pandas is there, else a list of dicts (one per request)."""
        records = [row.__dict__.copy() for row in self.rows]
        try:
            import pandas as pd
        except ImportError:
            return records
        return pd.DataFrame.from_records(records, columns=list(ReplayRow.__dataclass_fields__))

    def __repr__(self) -> str:
        return f"<ReplayResult {self.summary()}>"


def log_paths(log_files: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[str]:
    """Files named, globs expanded (``prefix*`` picks up every rotated file), in order."""
    items = [log_files] if isinstance(log_files, str | os.PathLike) else list(log_files)
    paths: list[str] = []
    for item in items:
        text = os.fspath(item)
        matches = sorted(glob.glob(text)) if glob.has_magic(text) else [text]
        if not matches:
            raise FileNotFoundError(f"no request log files match {text}")
        paths.extend(matches)
    return paths


def read_log(log_files: Any, limit: int | None = None) -> Iterator[Any]:
    """The ``PredictionLog`` records of the files, read with TensorFlow's TFRecord reader."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    count = 0
    for path in log_paths(log_files):
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            if limit is not None and count >= limit:
                return
            record = prediction_log_pb2.PredictionLog()
            record.ParseFromString(raw)
            count += 1
            yield record


def logged_inputs(log_files: Any, model: str | None = None, limit: int | None = None) -> Any:
    """The logged predict requests' inputs, stacked along the batch dimension: a data set for a comparison.

    One input: its array (rows, as ``instances``); several: a dict of arrays (as ``inputs``).

    Records of other models (when ``model`` is given), classify/regress records and requests
    whose inputs do not stack with the first one's (another signature, another shape) are
    skipped; what is left is exactly what the model was asked, in the order it was asked.
    """
    import numpy as np
    import tensorflow as tf

    columns: dict[str, list[Any]] = {}
    for record in read_log(log_files):
        if record.WhichOneof("log_type") != "predict_log":
            continue
        if model is not None and record.log_metadata.model_spec.name != model:
            continue
        arrays = {alias: tf.make_ndarray(proto) for alias, proto in record.predict_log.request.inputs.items()}
        if columns and (set(arrays) != set(columns) or any(
                arrays[alias].shape[1:] != columns[alias][0].shape[1:] for alias in arrays)):
            continue
        for alias, array in arrays.items():
            columns.setdefault(alias, []).append(array if array.ndim else array[None])
        if limit is not None and sum(len(a) for a in next(iter(columns.values()))) >= limit:
            break
    if not columns:
        raise ValueError(f"no predict requests{f' of model {model}' if model else ''} in {log_files}")
    stacked = {alias: np.concatenate(arrays)[:limit] for alias, arrays in columns.items()}
    return next(iter(stacked.values())) if len(stacked) == 1 else stacked


def replay(client: Any, log_files: Any, model: str, *, version: int | None = None, label: str | None = None,
           limit: int | None = None, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> ReplayResult:
    """Send each logged request to ``model`` (``version`` or ``label``, else what it serves now)."""
    target = f"version {version}" if version is not None else f"label {label}" if label else "latest"
    result = ReplayResult(model, target)
    path = client._model_path(model, version, label)
    # Read before sending: if the model is still logging, the replayed requests are logged too
    # (to the same files), and the replay must not chase its own records.
    records = list(read_log(log_files, limit))
    for index, record in enumerate(records):
        kind = record.WhichOneof("log_type")
        row = ReplayRow(index, kind or "", record.log_metadata.model_spec.version.value, agrees=False)
        try:
            if kind == "predict_log":
                _replay_predict(client, path, record.predict_log, row, atol, rtol)
            elif kind in ("classify_log", "regress_log"):
                _replay_examples(client, path, kind, getattr(record, kind), row, atol, rtol)
            else:
                row.error = f"{kind} records are not replayed"
        except Exception as error:  # one request failing is a finding, not the end of the replay
            row.error = getattr(error, "message", None) or str(error)
        result.rows.append(row)
    return result


def _post(client: Any, path: str, body: dict) -> Any:
    return client._answer(client._request("POST", "serving", path, json=body))


def _replay_predict(client: Any, path: str, log: Any, row: ReplayRow, atol: float, rtol: float) -> None:
    import numpy as np
    import tensorflow as tf

    request = log.request
    body = {"inputs": {alias: _json_tensor(tf.make_ndarray(proto)) for alias, proto in request.inputs.items()}}
    if request.model_spec.signature_name:
        body["signature_name"] = request.model_spec.signature_name
    answer = _post(client, path + ":predict", body)["outputs"]
    logged = {alias: tf.make_ndarray(proto) for alias, proto in log.response.outputs.items()}
    if not isinstance(answer, dict):  # TF Serving's columnar answer names no output when there is one
        answer = {next(iter(logged)): answer}
    row.agrees, row.max_abs_diff = _compare([(logged[key], np.asarray(answer[key])) for key in logged
                                             if key in answer], atol, rtol)
    if set(logged) - set(answer):
        row.agrees, row.error = False, f"outputs missing from the answer: {sorted(set(logged) - set(answer))}"


def _replay_examples(client: Any, path: str, kind: str, log: Any, row: ReplayRow, atol: float, rtol: float) -> None:
    import numpy as np

    request = log.request
    body: dict[str, Any] = {"examples": [_json_example(example) for example in request.input.example_list.examples]}
    if request.model_spec.signature_name:
        body["signature_name"] = request.model_spec.signature_name
    api = ":classify" if kind == "classify_log" else ":regress"
    answer = _post(client, path + api, body)["results"]
    if kind == "regress_log":
        logged = np.array([r.value for r in log.response.result.regressions])
        pairs = [(logged, np.asarray(answer, dtype=float))]
    else:
        classes = log.response.result.classifications
        logged = np.array([[c.score for c in entry.classes] for entry in classes])
        labels = [[c.label for c in entry.classes] for entry in classes]
        answered = [[pair[0] for pair in entry] for entry in answer]
        pairs = [(logged, np.array([[pair[1] for pair in entry] for entry in answer], dtype=float))]
        if any(label for entry in labels for label in entry) and labels != answered:
            row.agrees, row.max_abs_diff = False, None
            row.error = "class labels differ"
            return
    row.agrees, row.max_abs_diff = _compare(pairs, atol, rtol)


def _compare(pairs: list, atol: float, rtol: float) -> tuple[bool, float | None]:
    import numpy as np

    agrees, worst = True, 0.0
    for logged, answered in pairs:
        if logged.shape != answered.shape:
            return False, None
        if logged.dtype.kind in "fciub" and answered.dtype.kind in "fciub":
            diff = np.abs(logged.astype(float) - answered.astype(float))
            worst = max(worst, float(diff.max()) if diff.size else 0.0)
            agrees &= bool(np.allclose(logged, answered, atol=atol, rtol=rtol))
        else:
            agrees &= [_text(v) for v in logged.reshape(-1)] == [_text(v) for v in answered.reshape(-1)]
    return agrees, worst


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _json_tensor(array: Any) -> Any:
    """An array in TF Serving's JSON: numbers as lists, bytes as text or ``{"b64": ...}``."""
    if array.dtype.kind not in "OSU":
        return array.tolist()
    return _json_strings(array.tolist())


def _json_strings(value: Any) -> Any:
    if isinstance(value, list):
        return [_json_strings(item) for item in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode("ascii")}
    return value


def _json_example(example: Any) -> dict:
    """A tf.Example as TF Serving's JSON example (feature name to its list of values)."""
    features = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "float_list":
            features[name] = list(feature.float_list.value)
        elif kind == "int64_list":
            features[name] = list(feature.int64_list.value)
        elif kind == "bytes_list":
            features[name] = _json_strings(list(feature.bytes_list.value))
    return features
