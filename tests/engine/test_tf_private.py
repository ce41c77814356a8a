"""Pins every private TensorFlow API behind ``engine/tf_private``: an upgrade that breaks one fails here."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from jupyter_tfserve.engine.tf_private import make_session_callable, tflite_model_schema


def test_session_callable_exists_and_skips_pythons_static_shape_check():
    assert hasattr(tf.compat.v1.Session, "_make_callable_from_options")
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, shape=[None, 1], name="x")
        tf.identity(x * 2.0, name="y")
    with tf.compat.v1.Session(graph=graph) as session:
        run = make_session_callable(session, ["x:0"], ["y:0"])
        (y,) = run(np.array([[1.0], [2.0]], np.float32))
        np.testing.assert_array_equal(y, [[2.0], [4.0]])
        # A scalar where the placeholder says [None, 1]: the public make_callable refuses it in
        # Python; the C++ callable (as TF Serving's session) runs what the kernels accept.
        (scalar,) = run(np.float32(3.0))
        assert float(scalar) == 6.0


def test_tflite_schema_reads_a_converted_models_metadata_list():
    function = tf.function(lambda x: x + 1.0, input_signature=[tf.TensorSpec([1], tf.float32)])
    content = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()]).convert()
    model = tflite_model_schema().Model.GetRootAsModel(content, 0)
    assert model.SubgraphsLength() == 1
    names = [model.Metadata(i).Name() for i in range(model.MetadataLength())]
    assert all(isinstance(name, bytes) for name in names)
