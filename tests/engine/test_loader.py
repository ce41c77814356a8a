"""How the loader picks the path a SavedModel runs on, and how it refuses one nothing can run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from jupyter_tfserve.engine.errors import Code, ServingError
from jupyter_tfserve.engine.loader import LoaderOptions, load_servable
from tests.helpers.export_formats import keras_in_tf_module, tf1_graph, tf2_module_several_signatures


def _load(path: Path):
    return load_servable("m", 1, path, LoaderOptions())


def test_tf1_and_plain_tf2_exports_take_the_session_path(tmp_path):
    assert _load(tf1_graph(tmp_path / "tf1").path).kind == "session"
    assert _load(tf2_module_several_signatures(tmp_path / "tf2").path).kind == "session"


def test_keras_inside_a_module_takes_the_object_graph_and_says_why(tmp_path):
    export = keras_in_tf_module(tmp_path / "k")
    servable = _load(export.path)
    assert servable.kind == "object-graph"
    assert "would not restore" in servable.detail and "kernel" in servable.detail
    signature = servable.signature("serving_default")
    expected = tf.saved_model.load(str(export.path)).signatures["serving_default"](x=export.inputs["x"])["y"]
    got = servable.run(signature, export.inputs, ["y"])["y"]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-6)
    with pytest.raises(ServingError) as error:
        servable.run(signature, {"x": np.ones((2, 3), np.float32)}, ["y"])
    assert error.value.code is Code.INVALID_ARGUMENT


def test_a_tf1_graph_whose_signature_reads_an_unsaved_variable_fails_the_load_with_the_reason(tmp_path):
    v1 = tf.compat.v1
    export = tmp_path / "1"
    with tf.Graph().as_default(), v1.Session() as session:
        kept = v1.Variable(1.0, name="kept", use_resource=True)
        forgotten = v1.Variable(2.0, name="forgotten", use_resource=True)
        x = v1.placeholder(tf.float32, [None], name="x")
        y = tf.identity(x * kept * forgotten, name="y")
        session.run(v1.global_variables_initializer())
        builder = v1.saved_model.Builder(str(export))
        info = v1.saved_model.utils.build_tensor_info
        builder.add_meta_graph_and_variables(
            session, ["serve"], saver=v1.train.Saver([kept]),
            signature_def_map={"serving_default": v1.saved_model.signature_def_utils.build_signature_def(
                {"x": info(x)}, {"y": info(y)}, "tensorflow/serving/predict")})
        builder.save()
    with pytest.raises(ServingError) as error:
        _load(export)
    assert error.value.code is Code.FAILED_PRECONDITION
    assert "forgotten" in error.value.message and "kept" not in error.value.message.split("reads")[-1]


def test_a_tflite_only_version_without_prefer_tflite_says_which_flag_serves_it(tmp_path):
    function = tf.function(lambda x: x * 2.0, input_signature=[tf.TensorSpec([None, 1], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()])
    version = tmp_path / "1"
    version.mkdir()
    (version / "model.tflite").write_bytes(converter.convert())
    with pytest.raises(ServingError) as error:
        _load(version)
    assert error.value.code is Code.FAILED_PRECONDITION and "--prefer_tflite_model=true" in error.value.message
    servable = load_servable("m", 1, version, LoaderOptions(prefer_tflite_model=True))
    assert servable.kind == "tflite"
