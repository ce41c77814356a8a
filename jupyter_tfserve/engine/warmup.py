"""Warmup: replay ``assets.extra/tf_serving_warmup_requests`` before a version turns AVAILABLE."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from .errors import ServingError, failed_precondition
from .servable import Servable

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000


def warmup_file(path: Path) -> Path | None:
    candidate = path / WARMUP_FILE
    return candidate if candidate.is_file() else None


def read_warmup_records(path: Path) -> list:
    """The PredictionLog records of a warmup file (at most 1000, as TF Serving allows)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    records = []
    for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        if len(records) >= MAX_WARMUP_RECORDS:
            raise failed_precondition(
                f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) in {path}"
            )
        record = prediction_log_pb2.PredictionLog()
        record.ParseFromString(raw)
        records.append(record)
    return records


def run_warmup(servable: Servable, records: list, replay: Callable[[Servable, object], None]) -> float:
    """Replay warmup records through ``replay``; returns seconds taken. Any failure fails the load."""
    start = time.perf_counter()
    for index, record in enumerate(records):
        try:
            replay(servable, record)
        except ServingError as error:
            raise failed_precondition(
                f"Warmup request {index} of {servable.name} version {servable.version} failed: {error.message}"
            ) from None
    return time.perf_counter() - start
