"""A version's warmup file written from a request log: real traffic, not a made-up sample.

TF Serving replays ``assets.extra/tf_serving_warmup_requests`` (at most 1000
``PredictionLog`` records) before a version turns AVAILABLE, so its first real
requests do not pay for lazy initialisation. A request log already holds records of
that type; this keeps their requests (answers dropped: warmup never reads them).
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tensorflow_serving.apis import prediction_log_pb2

from .request_log_tfrecord import frame, read_records
from .warmup import MAX_WARMUP_RECORDS, WARMUP_FILE

WARMUP_KINDS = ("predict_log", "classify_log", "regress_log", "multi_inference_log")


def expand_log_paths(patterns: Iterable[str]) -> list[str]:
    paths: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches or not all(os.path.isfile(path) for path in matches):
            raise FileNotFoundError(f"no request log file at {pattern}")
        paths.extend(matches)
    return paths


def write_warmup_from_logs(log_files: Iterable[str], version_dir: str | os.PathLike[str], *,
                           model: str | None = None, max_records: int = MAX_WARMUP_RECORDS) -> int:
    """Write up to ``max_records`` logged requests (of ``model`` only, if given) as the version's warmup file.

    Returns how many were written. The file is written beside its place and renamed in, so an
    engine loading the version never reads half of it.
    """
    if not 0 < max_records <= MAX_WARMUP_RECORDS:
        raise ValueError(f"a warmup file holds 1 to {MAX_WARMUP_RECORDS} records, not {max_records}")
    version_dir = Path(version_dir)
    if not (version_dir / "saved_model.pb").is_file() and not (version_dir / "saved_model.pbtxt").is_file():
        raise FileNotFoundError(f"{version_dir} is not a SavedModel version directory (no saved_model.pb)")
    chunks = []
    for path in expand_log_paths(log_files):
        for raw in read_records(path):
            record = prediction_log_pb2.PredictionLog()
            record.ParseFromString(raw)
            kind = record.WhichOneof("log_type")
            if kind not in WARMUP_KINDS or (model and record.log_metadata.model_spec.name != model):
                continue
            getattr(record, kind).ClearField("response")
            chunks.append(frame(record.SerializeToString()))
            if len(chunks) >= max_records:
                break
        if len(chunks) >= max_records:
            break
    target = version_dir / WARMUP_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".warmup.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(b"".join(chunks))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(chunks)
