"""``--prefer_tflite_model``: a version folder's ``model.tflite`` served over REST and gRPC.

The model is a small Keras model converted here with ``tf.lite.TFLiteConverter``, exported
beside it as a SavedModel too, as TF Serving's flag expects ("serve model.tflite when
present, else the SavedModel", saved_model_bundle_factory.cc). Answers are checked against
Keras itself, and the metadata against what TF Serving's TfLiteSession reports for such a
model: a generated ``serving_default`` keyed by tensor name, not the SavedModel's signature.
"""

from __future__ import annotations

import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from tests.helpers.server import ServerProcess, write_monitoring_config

MODEL = "tfl"
BATCHING = """
max_batch_size { value: 64 }
batch_timeout_micros { value: 200000 }
max_enqueued_batches { value: 100 }
num_batch_threads { value: 2 }
"""


@pytest.fixture(scope="module")
def keras_tflite(tmp_path_factory):
    """(Keras model, base path whose version 1 has a SavedModel and model.tflite, TFLite input and output names)."""
    keras = tf.keras
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)])
    content = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    directory = tmp_path_factory.mktemp("tflite")
    base = directory / MODEL
    model.export(str(base / "1"), verbose=False)
    (base / "1" / "model.tflite").write_bytes(content)
    only = directory / "only" / MODEL / "1"
    only.mkdir(parents=True)
    (only / "model.tflite").write_bytes(content)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_content=content)
    (input_name,) = [d["name"] for d in interpreter.get_input_details()]
    (output_name,) = [d["name"] for d in interpreter.get_output_details()]
    return model, base, input_name, output_name


def _start(base: Path, log: Path, *extra: str, wait: bool = True) -> ServerProcess:
    server = ServerProcess(["--prefer_tflite_model=true", f"--model_base_path={base}", f"--model_name={MODEL}",
                            *extra], log)
    try:
        server.wait_for_port()
        if wait:
            server.wait_for_versions(MODEL, {1})
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def server(keras_tflite, tmp_path_factory):
    _model, base, _input, _output = keras_tflite
    process = _start(base, tmp_path_factory.mktemp("tflite-server") / "server.log")
    yield process
    process.stop()


def test_rest_predict_rows_match_keras(server, keras_tflite):
    model, _base, input_name, _output = keras_tflite
    x = np.random.default_rng(6).normal(size=(3, 4)).astype(np.float32)
    response = server.post(f"/v1/models/{MODEL}:predict", {"instances": x.tolist()})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["predictions"], model(x).numpy(), rtol=0, atol=1e-5)
    one = server.post(f"/v1/models/{MODEL}:predict", {"inputs": {input_name.split(":")[0]: x[:1].tolist()}})
    assert one.status_code == 200, one.text
    np.testing.assert_allclose(one.json()["outputs"], model(x[:1]).numpy(), rtol=0, atol=1e-5)


def test_rest_metadata_is_the_generated_serving_default(server, keras_tflite):
    _model, _base, input_name, output_name = keras_tflite
    response = server.get(f"/v1/models/{MODEL}/versions/1/metadata")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_spec"]["name"] == MODEL and body["model_spec"]["version"] == "1"
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert list(signatures) == ["serving_default"]
    signature = signatures["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"] == {input_name.split(":")[0]: {
        "dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "1", "name": ""}, {"size": "4", "name": ""}],
                                              "unknown_rank": False}, "name": input_name}}
    assert signature["outputs"] == {output_name.split(":")[0]: {
        "dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "1", "name": ""}, {"size": "2", "name": ""}],
                                              "unknown_rank": False}, "name": output_name}}


def test_grpc_predict_and_metadata(server, keras_tflite):
    model, _base, input_name, output_name = keras_tflite
    x = np.random.default_rng(7).normal(size=(5, 4)).astype(np.float32)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.inputs[input_name.split(":")[0]].CopyFrom(tf.make_tensor_proto(x))
        reply = stub.Predict(request, timeout=30)
        metadata_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        metadata_request.model_spec.name = MODEL
        metadata = stub.GetModelMetadata(metadata_request, timeout=30)
    assert reply.model_spec.version.value == 1 and reply.model_spec.signature_name == "serving_default"
    np.testing.assert_allclose(tf.make_ndarray(reply.outputs[output_name.split(":")[0]]), model(x).numpy(),
                               rtol=0, atol=1e-5)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signature_map)
    assert signature_map.signature_def["serving_default"].inputs[input_name.split(":")[0]].name == input_name


def test_concurrent_requests_through_batching(keras_tflite, tmp_path):
    """Requests of different row counts merged into batches: the interpreter is resized to each merged batch."""
    model, base, _input, _output = keras_tflite
    parameters = tmp_path / "batching.txt"
    parameters.write_text(BATCHING)
    monitoring = write_monitoring_config(tmp_path / "monitoring.txt")
    server = _start(base, tmp_path / "server.log", "--enable_batching=true",
                    f"--batching_parameters_file={parameters}", f"--monitoring_config_file={monitoring}")
    try:
        rng = np.random.default_rng(8)
        rows = [rng.normal(size=(int(n), 4)).astype(np.float32) for n in rng.integers(1, 6, size=12)]

        def call(x: np.ndarray):
            return server.post(f"/v1/models/{MODEL}:predict", {"instances": x.tolist()})

        with ThreadPoolExecutor(len(rows)) as pool:
            responses = list(pool.map(call, rows))
        for x, response in zip(rows, responses, strict=True):
            assert response.status_code == 200, response.text
            np.testing.assert_allclose(response.json()["predictions"], model(x).numpy(), rtol=0, atol=1e-5)
        metrics = server.get("/monitoring/prometheus/metrics").text
        batches = re.search(r'batching_session:input_batch_size_count\{[^}]*model_name="tfl"[^}]*\} (\S+)',
                            metrics)
        assert batches is not None, metrics
        assert 1 <= float(batches.group(1)) < len(rows)  # requests were merged, not run one by one
        # And a request alone after the batches still answers (the interpreter resized back down).
        alone = call(rows[0][:1])
        np.testing.assert_allclose(alone.json()["predictions"], model(rows[0][:1]).numpy(), rtol=0, atol=1e-5)
    finally:
        server.stop()


def test_version_folder_with_only_model_tflite(keras_tflite, tmp_path):
    model, base, _input, _output = keras_tflite
    server = _start(base.parent / "only" / MODEL, tmp_path / "server.log", wait=False)
    try:
        server.wait_until(lambda: server.states(MODEL).get(1) in ("AVAILABLE", "END"), 60, "version 1 to settle")
        assert server.states(MODEL)[1] == "AVAILABLE", server.get(f"/v1/models/{MODEL}").text
        response = server.post(f"/v1/models/{MODEL}:predict", {"instances": [[1.0, 2.0, 3.0, 4.0]]})
        np.testing.assert_allclose(response.json()["predictions"], model(np.array([[1.0, 2.0, 3.0, 4.0]])).numpy(),
                                   rtol=0, atol=1e-5)
    finally:
        server.stop()
