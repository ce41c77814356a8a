"""The request-log tail behind the dashboards' "logged requests": files written by the engine's own
``RequestLogger`` (writer thread, rotation), checked against TensorFlow's TFRecord reader."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import prediction_log_pb2

from jupyter_tfserve.engine.config import ModelServerConfig
from jupyter_tfserve.engine.request_log import RequestLogger
from jupyter_tfserve.kernel.log_tail import LogTail, find_record_start, parse_records, summarize_array


def _config(prefix, name: str = "m") -> ModelServerConfig:
    config = ModelServerConfig()
    text_format.Parse(f'model_config_list {{ config {{ name: "{name}" base_path: "/unused" logging_config {{ '
                      f'log_collector_config {{ type: "file" filename_prefix: "{prefix}" }} '
                      "sampling_config { sampling_rate: 1.0 } } } }", config)
    return config


def _log(logger: RequestLogger, first: int, count: int, rows: int = 16) -> None:
    for index in range(first, first + count):
        x = np.full((rows, 4), index, np.float32)
        logger.record_predict("m", 1, "serving_default", {"x": x}, (), {"y": x[:, :1] / 2 + 2})
    assert logger.flush()


def _first_value(record) -> float:
    return record.inputs[0].head[0]


def test_tail_reads_only_the_end_of_a_large_rotated_log_and_then_only_what_is_new(tmp_path):
    prefix = tmp_path / "logs" / "m"
    logger = RequestLogger(max_file_bytes=400_000, queue_records=10_000)  # none dropped
    logger.configure(_config(prefix))
    try:
        _log(logger, 0, 6000)  # ~2.4 MB over several rotated files
        files = sorted(map(str, prefix.parent.glob("m*")))
        assert len(files) >= 4
        total = sum((tmp_path / "logs" / f).stat().st_size for f in files)

        tail = LogTail(f"{prefix}*", model="m", records=10, tail_bytes=64 << 10)
        records = tail.poll()
        # exactly the last ten, oldest first, as TensorFlow's reader sees the newest file end
        assert [_first_value(r) for r in records] == list(range(5990, 6000))
        last = prediction_log_pb2.PredictionLog.FromString(
            list(tf.data.TFRecordDataset(files[-1]).as_numpy_iterator())[-1])
        assert tf.make_ndarray(last.predict_log.request.inputs["x"])[0, 0] == records[-1].inputs[0].head[0]
        assert tail.bytes_read < total / 10  # the end of the newest file, not the log
        assert not records[-1].exact_time  # found on the first read: its time is an upper bound

        before = tail.bytes_read
        assert [_first_value(r) for r in tail.poll()] == list(range(5990, 6000))
        assert tail.bytes_read == before  # nothing new: nothing read

        _log(logger, 6000, 3)
        records = tail.poll()
        assert [_first_value(r) for r in records] == list(range(5993, 6003))
        assert records[-1].exact_time
        assert 0 < tail.bytes_read - before < 3 * 600  # three records' bytes (and a rotated file's start)
    finally:
        logger.close()


def test_other_models_records_are_left_out_and_a_prefix_without_star_is_a_glob(tmp_path):
    prefix = tmp_path / "shared"
    logger = RequestLogger()
    config = _config(prefix, "m")
    other = config.model_config_list.config.add()
    other.CopyFrom(config.model_config_list.config[0])
    other.name = "other"
    logger.configure(config)
    try:
        _log(logger, 0, 3)
        x = np.zeros((1, 4), np.float32)
        logger.record_predict("other", 7, "serving_default", {"x": x}, (), {"y": x})
        assert logger.flush()
    finally:
        logger.close()
    assert [_first_value(r) for r in LogTail(str(prefix), model="m").poll()] == [0, 1, 2]
    assert [r.model for r in LogTail(str(prefix)).poll()] == ["m", "m", "m", "other"]


def test_record_start_is_found_from_the_middle_of_a_record_and_a_partial_record_waits(tmp_path):
    prefix = tmp_path / "m"
    logger = RequestLogger()
    logger.configure(_config(prefix))
    try:
        _log(logger, 0, 50, rows=3)
    finally:
        logger.close()
    (path,) = tmp_path.glob("m*")
    data = path.read_bytes()
    records, end = parse_records(data)
    assert len(records) == 50 and end == len(data)
    size = len(data) // 50
    start = find_record_start(data[size * 10 + 5:])  # five bytes into record 10: record 11 is the first whole one
    assert start == size - 5
    assert len(parse_records(data[size * 10 + 5:], start)[0]) == 39
    partial = data + data[:size - 3]  # a record being written
    assert parse_records(partial) == (records, len(data))
    assert find_record_start(partial[size * 45 + 1:]) == size - 1


def test_a_summary_never_holds_the_tensor():
    big = np.arange(1_000_000, dtype=np.float32).reshape(1000, 1000)
    summary = summarize_array("pixels", big)
    assert summary.text() == "pixels float32[1000,1000] [0, 1, 2, 3, …] min 0 max 1e+06"
    assert len(summary.head) == 4
    strings = summarize_array("text", np.array([b"hello", b"x" * 100], object))
    assert strings.dtype == "string" and strings.minimum is None and len(strings.head[1]) == 24
