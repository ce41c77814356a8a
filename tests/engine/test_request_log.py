"""The request logger on a real engine: records read back with TensorFlow's TFRecord reader."""

from __future__ import annotations

import asyncio
import glob
import math

import numpy as np
import pytest
from google.protobuf import text_format

from jupyter_tfserve.engine.config import ConfigError, ModelServerConfig
from jupyter_tfserve.engine.engine import Engine, Target
from jupyter_tfserve.engine.request_log import RequestLogger
from jupyter_tfserve.engine.request_log_tfrecord import CorruptRecord, frame, read_records
from tests.helpers.models import write_tf1_half_plus


def read_logs(prefix) -> list:
    """Every record under ``prefix``, read by tf.data (the reader TF Serving's users have)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    records = []
    for path in sorted(glob.glob(f"{prefix}*")):
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            record = prediction_log_pb2.PredictionLog()
            record.ParseFromString(raw)
            records.append(record)
    return records


def config_text(base_path, prefix, rate: float) -> ModelServerConfig:
    config = ModelServerConfig()
    text_format.Parse(f"""model_config_list {{ config {{
        name: "half" base_path: "{base_path}" model_platform: "tensorflow"
        logging_config {{ log_collector_config {{ type: "file" filename_prefix: "{prefix}" }}
                          sampling_config {{ sampling_rate: {rate} }} }} }} }}""", config)
    return config


@pytest.fixture(scope="module")
def half_plus(tmp_path_factory):
    base = tmp_path_factory.mktemp("half")
    write_tf1_half_plus(base, 1)
    return base


def binomial_bound(n: int, p: float) -> tuple[float, float]:
    """n·p ± 5 standard deviations: a false failure about once in 3.5 million runs."""
    sd = math.sqrt(n * p * (1 - p))
    return n * p - 5 * sd, n * p + 5 * sd


async def _serve(engine: Engine, config: ModelServerConfig, requests: int) -> None:
    await engine.start(config)
    await engine.manager.wait_until_settled(60)
    for i in range(requests):
        x = np.array([[float(i)]], dtype=np.float32)
        await engine.predict(Target("half"), lambda signature, x=x: {"x": x})


def test_every_request_logged_at_rate_one_and_intact(tmp_path, half_plus):
    prefix = tmp_path / "logs" / "half"

    async def main() -> None:
        engine = Engine()
        await _serve(engine, config_text(half_plus, prefix, 1.0), 20)
        examples = [_example(3.0)]
        await engine.regress(Target("half", signature_name="regress_x_to_y"), examples)
        await engine.classify(Target("half", signature_name="classify_x_to_y"), examples)
        await engine.stop()  # the shutdown flush

    asyncio.run(main())
    import tensorflow as tf

    records = read_logs(prefix)
    assert len(records) == 22
    predicts = [r for r in records if r.WhichOneof("log_type") == "predict_log"]
    assert len(predicts) == 20
    for i, record in enumerate(predicts):
        assert record.log_metadata.model_spec.name == "half"
        assert record.log_metadata.model_spec.version.value == 1
        assert record.log_metadata.model_spec.signature_name == "serving_default"
        assert record.log_metadata.sampling_config.sampling_rate == 1.0
        assert tf.make_ndarray(record.predict_log.request.inputs["x"]).tolist() == [[float(i)]]
        assert tf.make_ndarray(record.predict_log.response.outputs["y"]).tolist() == [[0.5 * i + 2.0]]
    regress = records[20].regress_log
    assert regress.request.model_spec.signature_name == "regress_x_to_y"
    assert regress.request.input.example_list.examples[0].features.feature["x"].float_list.value == [3.0]
    assert regress.response.result.regressions[0].value == pytest.approx(3.5)
    assert records[21].WhichOneof("log_type") == "classify_log"


def _example(x: float) -> bytes:
    import tensorflow as tf

    feature = tf.train.Feature(float_list=tf.train.FloatList(value=[x]))
    return tf.train.Example(features=tf.train.Features(feature={"x": feature})).SerializeToString()


def test_sampling_rate_is_honoured_and_reload_changes_it(tmp_path, half_plus):
    n = 600
    first, second = tmp_path / "a" / "half", tmp_path / "b" / "half"

    async def main() -> None:
        engine = Engine()
        await _serve(engine, config_text(half_plus, first, 0.2), n)
        await engine.reload_config(config_text(half_plus, second, 1.0))  # old file closed, new one opened
        for _ in range(10):
            await engine.predict(Target("half"), lambda signature: {"x": np.ones((1, 1), np.float32)})
        await engine.reload_config(config_text(half_plus, second, 0.0))  # rate 0: logging off
        await engine.predict(Target("half"), lambda signature: {"x": np.ones((1, 1), np.float32)})
        await engine.stop()

    asyncio.run(main())
    low, high = binomial_bound(n, 0.2)
    assert low <= len(read_logs(first)) <= high
    assert len(read_logs(second)) == 10


def test_files_rotate_by_size_and_nothing_is_lost(tmp_path):
    logger = RequestLogger(max_file_bytes=4096)
    prefix = tmp_path / "rot" / "m"
    logger.configure(config_text("/unused", prefix, 1.0))
    x = np.zeros((1, 64), np.float32)  # ~ 600 bytes a record
    for i in range(40):
        logger.record_predict("half", 1, "serving_default", {"x": x + i}, (), {"y": x})
    assert logger.flush()
    files = logger.describe("half")["files"]
    logger.close()
    assert len(files) >= 5
    assert sum(1 for path in files for _ in read_records(path)) == 40
    assert len(read_logs(prefix)) == 40


def test_full_queue_drops_and_counts_without_waiting(tmp_path):
    logger = RequestLogger(queue_records=4)
    logger.configure(config_text("/unused", tmp_path / "q" / "m", 1.0))
    x = np.zeros((1, 1), np.float32)
    with logger.paused():  # the writer is held: the queue fills
        for _ in range(50):
            logger.record_predict("half", 1, "serving_default", {"x": x}, (), {"y": x})
    assert logger.flush()
    described = logger.describe("half")
    logger.close()
    # The writer may have taken one record before it blocked: 4 or 5 kept, the rest dropped and counted.
    assert described["records_written"] in (4, 5)
    assert described["records_dropped"] == 50 - described["records_written"]


def test_bad_logging_config_is_refused_before_anything_changes(tmp_path, half_plus):
    logger = RequestLogger()
    bad = config_text(half_plus, tmp_path / "x", 1.0)
    bad.model_config_list.config[0].logging_config.log_collector_config.type = "bigquery"
    with pytest.raises(ConfigError, match="no log collector of type 'bigquery'"):
        logger.configure(bad)
    rate = config_text(half_plus, tmp_path / "x", 1.0)
    rate.model_config_list.config[0].logging_config.sampling_config.sampling_rate = 1.5
    with pytest.raises(ConfigError, match="sampling_rate"):
        logger.configure(rate)
    assert logger.describe("half") is None


def test_tfrecord_reader_checks_crcs(tmp_path):
    path = tmp_path / "r.tfrecord"
    data = bytearray(frame(b"hello") + frame(b"world"))
    path.write_bytes(bytes(data))
    assert list(read_records(path)) == [b"hello", b"world"]
    data[14] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptRecord, match="bad data checksum"):
        list(read_records(path))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_, np.float16])
def test_fast_predict_records_equal_the_protobuf_built_ones(dtype):
    from tensorflow_serving.apis import prediction_log_pb2

    from jupyter_tfserve.engine import request_log_records
    from jupyter_tfserve.engine.request_log import LogSettings, _Sink

    sink = _Sink("m", LogSettings("/unused", 0.5), 1 << 20)
    x = (np.arange(300).reshape(3, 100) % 7).astype(dtype)  # 300+ bytes: multi-byte length varints
    item = ("predict", sink, 7, "sig", {"x": x, "mask": x[:, :2]}, ("y",), {"y": x[::-1].T})
    fast = prediction_log_pb2.PredictionLog.FromString(request_log_records.build_record(item))
    assert fast == request_log_records._build_with_protobuf(item)
    import tensorflow as tf

    assert np.array_equal(tf.make_ndarray(fast.predict_log.response.outputs["y"]), x[::-1].T)
