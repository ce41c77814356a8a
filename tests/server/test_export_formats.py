"""Every way users export a SavedModel, served and checked against ``tf.saved_model.load`` on REST and gRPC.

Includes the exports TF Serving itself fails on (a Keras 3 model inside a ``tf.Module``,
a subclassed model with a ``tf.function`` method, ``ExportArchive``): the engine runs
those through TensorFlow's object graph, decided at load time.
"""

from __future__ import annotations

import base64

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_service_pb2_grpc, regression_pb2

from tests.helpers.export_formats import BUILDERS, reference_outputs


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    built = {}
    for name, build in BUILDERS.items():
        export = build(root / name)
        built[name] = (export, *reference_outputs(export))
    return root, built


@pytest.fixture(scope="module")
def server(exports, tmp_path_factory):
    from tests.helpers.server import ServerProcess, write_models_config

    root, built = exports
    config = write_models_config(root / "models.config", {name: root / name for name in built})
    process = ServerProcess([f"--model_config_file={config}"], tmp_path_factory.mktemp("log") / "server.log")
    try:
        process.wait_for_port()
        for name in built:
            process.wait_for_versions(name, {1}, timeout=120)
        yield process
    finally:
        process.stop()


def _json_value(array: np.ndarray):
    if array.dtype == object:  # text as JSON strings, other bytes as TF Serving's {"b64": ...}
        return [_json_bytes(value) for value in array.reshape(-1)]
    return array.tolist()


def _json_bytes(value: bytes):
    try:
        return value.decode()
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode()}


def _assert_same(served: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert served.shape == expected.shape, f"{what}: shape {served.shape} != {expected.shape}"
    if expected.dtype.kind == "f":
        np.testing.assert_allclose(served, expected, atol=1e-5, rtol=1e-5, err_msg=what)
    else:
        np.testing.assert_array_equal(served, expected, err_msg=what)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_rest_answers_what_tensorflow_runs(server, exports, name):
    export, inputs, expected = exports[1][name]
    body = {"signature_name": export.signature, "inputs": {key: _json_value(v) for key, v in inputs.items()}}
    response = server.post(f"/v1/models/{name}:predict", body)
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    if len(expected) == 1 and not isinstance(outputs, dict):
        outputs = {next(iter(expected)): outputs}
    for key, value in expected.items():
        served = np.array(outputs[key])
        if value.dtype == object:
            served = np.array([text.encode() for text in served.reshape(-1)], dtype=object).reshape(value.shape)
        _assert_same(served.astype(value.dtype), value, f"{name} output {key} over REST")


@pytest.mark.parametrize("name", list(BUILDERS))
def test_grpc_answers_what_tensorflow_runs(server, exports, name):
    export, inputs, expected = exports[1][name]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = export.signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    with grpc.insecure_channel(server.grpc_target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert set(response.outputs) == set(expected)
    assert response.model_spec.version.value == 1
    for key, value in expected.items():
        served = tf.make_ndarray(response.outputs[key])
        assert served.dtype == value.dtype, f"{name} output {key}: dtype {served.dtype} != {value.dtype}"
        _assert_same(served, value, f"{name} output {key} over gRPC")


def test_vocabulary_copy_under_assets_is_used(exports):
    export = exports[1]["vocabulary"][0]
    assert not (export.path.parent / "vocabulary.txt").exists()
    assert (export.path / "assets" / "vocabulary.txt").is_file()
    assert exports[1]["vocabulary"][2]["ids"].tolist() == [2, -1, 0]


def test_string_outputs_named_bytes_come_back_as_b64_only_when_asked(server):
    response = server.post("/v1/models/vocabulary:predict", {"instances": ["banana"]})
    assert response.json() == {"predictions": [{"ids": 1, "echo": "BANANA"}]}
    raw = base64.b64encode(b"apple").decode()
    assert server.post("/v1/models/vocabulary:predict", {"instances": [{"b64": raw}]}).json() \
        == {"predictions": [{"ids": 0, "echo": "APPLE"}]}


def test_wrong_shape_on_the_object_graph_path_is_a_clear_invalid_argument(server):
    response = server.post("/v1/models/keras_in_module:predict", {"instances": [[1.0, 2.0]]})
    assert response.status_code == 400, response.text
    assert "error" in response.json()


def test_classify_and_regress_on_a_tf2_export(server):
    """TF2 exports mark every signature "predict"; TF Serving (no method-name check by default) serves them."""
    base = "/v1/models/tf2_examples"
    classify = server.post(f"{base}:classify", {"signature_name": "classify", "examples": [{"x": 2.0}, {"x": 4.0}]})
    assert classify.status_code == 200, classify.text
    assert classify.json() == {"results": [[["half_plus_two", 3.0], ["one_minus", -1.0]],
                                           [["half_plus_two", 4.0], ["one_minus", -3.0]]]}
    assert server.post(f"{base}:regress", {"signature_name": "regress", "examples": [{"x": 2.0}]}).json() \
        == {"results": [6.0]}
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "tf2_examples"
    request.model_spec.signature_name = "classify"
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        classes = stub.Classify(request, timeout=30).result.classifications[0].classes
        assert [(c.label, c.score) for c in classes] == [("half_plus_two", 3.0), ("one_minus", -1.0)]
        regress = regression_pb2.RegressionRequest()
        regress.model_spec.name = "tf2_examples"
        regress.model_spec.signature_name = "regress"
        regress.input.example_list.examples.add().features.feature["x"].float_list.value.append(5.0)
        assert stub.Regress(regress, timeout=30).result.regressions[0].value == 15.0
        # Predict-shaped signatures are refused with TF Serving's reason.
        request.model_spec.signature_name = "regress"
        with pytest.raises(grpc.RpcError) as error:
            stub.Classify(request, timeout=30)
        assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
