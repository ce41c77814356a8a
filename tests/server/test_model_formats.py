"""Every kind of SavedModel users have, built by our own helpers (no ../shared needed)."""

from __future__ import annotations

import base64
import json

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from jupyter_tfserve.engine.codecs import json_body
from tests.helpers.models import keras_reference_predict


@pytest.fixture(scope="module")
def server(model_zoo, tmp_path_factory):
    from tests.helpers.server import ServerProcess, write_models_config

    directory = tmp_path_factory.mktemp("formats")
    config = write_models_config(directory / "models.config", {
        name: model_zoo[name] for name in ("tf1_half_plus_two", "tf2_half_plus_two", "keras", "counter")})
    process = ServerProcess([f"--model_config_file={config}"], directory / "server.log")
    try:
        process.wait_for_port()
        for name in ("tf1_half_plus_two", "tf2_half_plus_two", "keras", "counter"):
            process.wait_for_versions(name, {1})
        yield process
    finally:
        process.stop()


def test_tf1_export_predict_classify_regress(server):
    base = "/v1/models/tf1_half_plus_two"
    assert server.post(f"{base}:predict", {"instances": [2.0, 3.0, 4.0]}).json() == {"predictions": [3.0, 3.5, 4.0]}
    assert server.post(f"{base}:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}).json() \
        == {"results": [[["", 3.0]]]}
    assert server.post(f"{base}:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}).json() \
        == {"results": [3.0]}


def test_tf2_multiple_inputs_and_outputs_row_and_columnar(server):
    base = "/v1/models/tf2_half_plus_two:predict"
    row = server.post(base, {"signature_name": "multi", "instances": [
        {"a": [1.0, 2.0], "b": 10}, {"a": [3.0, 4.0], "b": 20}]})
    assert row.status_code == 200, row.text
    assert row.json() == {"predictions": [{"sum": 13.0, "scaled": [2.0, 4.0]}, {"sum": 27.0, "scaled": [6.0, 8.0]}]}
    columnar = server.post(base, {"signature_name": "multi", "inputs": {"a": [[1.0, 2.0]], "b": [5]}})
    assert columnar.json() == {"outputs": {"sum": [8.0], "scaled": [[2.0, 4.0]]}}


def test_string_inputs_and_b64_outputs(server):
    raw = b"\xffbinary"
    response = server.post("/v1/models/tf2_half_plus_two:predict", {
        "signature_name": "strings", "instances": ["hello", {"b64": base64.b64encode(raw).decode()}]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["length"] for p in predictions] == [5, len(raw)]
    assert base64.b64decode(predictions[0]["upper_bytes"]["b64"]) == b"HELLO"
    assert base64.b64decode(predictions[1]["upper_bytes"]["b64"]) == raw.upper()


def test_keras_export_over_rest_and_grpc(server):
    x = np.array([[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0]], np.float32)
    expected = keras_reference_predict(x)
    metadata = server.get("/v1/models/keras/metadata").json()["metadata"]["signature_def"]["signature_def"]
    (input_alias,) = metadata["serving_default"]["inputs"]
    (output_alias,) = metadata["serving_default"]["outputs"]
    response = server.post("/v1/models/keras:predict", {"instances": x.tolist()})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["predictions"], expected, rtol=1e-5, atol=1e-6)
    with grpc.insecure_channel(server.grpc_target) as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "keras"
        request.inputs[input_alias].CopyFrom(tf.make_tensor_proto(x))
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    np.testing.assert_allclose(tf.make_ndarray(reply.outputs[output_alias]), expected, rtol=1e-5, atol=1e-6)


def test_tf1_reference_variable_counter(server):
    def call(signature: str, inputs: dict | None = None) -> float:
        response = server.post("/v1/models/counter:predict", {"signature_name": signature, "inputs": inputs or {}})
        assert response.status_code == 200, response.text
        return response.json()["outputs"]

    call("reset_counter")
    assert [call("incr_counter"), call("incr_counter"), call("incr_counter_by", {"delta": 3.0})] == [1.0, 2.0, 5.0]
    assert call("get_counter") == 5.0


def test_large_dense_and_ragged_bodies_over_rest(server):
    """Bodies big enough for the simdjson fast path answer as small ones do, and a ragged one is refused."""
    x = np.random.default_rng(1).normal(size=(200, 4)).astype(np.float32)
    body = json.dumps({"instances": x.tolist()})
    assert len(body) > json_body.FAST_PATH_MIN_BYTES
    response = server.post("/v1/models/keras:predict", body)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["predictions"], keras_reference_predict(x), rtol=1e-5, atol=1e-6)
    columnar = server.post("/v1/models/keras:predict", json.dumps({"inputs": x.tolist()}))
    np.testing.assert_allclose(columnar.json()["outputs"], keras_reference_predict(x), rtol=1e-5, atol=1e-6)
    ragged = x.tolist()
    ragged[1] = ragged[1][:3]
    ragged[2] = ragged[2] + [0.5]  # same count of numbers as a dense 200x4
    response = server.post("/v1/models/keras:predict", json.dumps({"instances": ragged}))
    assert response.status_code == 400
    assert "ragged: instance 1 has shape [3]" in response.json()["error"], response.json()
