"""TFLite models served as TF Serving's TfLiteSession serves them (tflite_session.cc, tflite_session_test.cc).

TF Serving's own two half_plus_two TFLite models (from ../shared) pin the SignatureDefs it
reports; models built here with ``tf.lite.TFLiteConverter`` pin the numbers against the
TFLite interpreter run directly and against the TensorFlow function they came from.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2

from jupyter_tfserve.engine.errors import Code, ServingError
from jupyter_tfserve.engine.loader import LoaderOptions, load_servable
from jupyter_tfserve.engine.tflite_servable import SIGNATURE_DEFS_METADATA, TfLiteServable

TFLITE_OPTIONS = LoaderOptions(prefer_tflite_model=True)


def _signature_def(text: str) -> meta_graph_pb2.SignatureDef:
    return text_format.Parse(text, meta_graph_pb2.SignatureDef())


# tflite_session_test.cc, BasicTest and ModelFromLegacyConverterWithSigdef: what TF Serving reports.
HALF_PLUS_TWO_SIGNATURE = """
inputs { key: "x" value { name: "%s" dtype: DT_FLOAT tensor_shape { dim { size: 1 } dim { size: 1 } } } }
outputs { key: "y" value { name: "y" dtype: DT_FLOAT tensor_shape { dim { size: 1 } dim { size: 1 } } } }
method_name: "tensorflow/serving/predict"
"""


def _servable(content: bytes, tmp_path: Path, name: str = "m", **kwargs) -> TfLiteServable:
    return TfLiteServable(name, 1, tmp_path, content, **kwargs)


def _interpreter(content: bytes) -> tf.lite.Interpreter:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tf.lite.Interpreter(model_content=content)


def _run_interpreter(content: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference: a fresh interpreter fed by tensor name, every output by tensor name."""
    interpreter = _interpreter(content)
    details = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    for name, value in feeds.items():
        interpreter.resize_tensor_input(details[name], list(value.shape))
    interpreter.allocate_tensors()
    for name, value in feeds.items():
        interpreter.set_tensor(details[name], value)
    interpreter.invoke()
    return {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}


def with_signature_defs(content: bytes, signatures: dict[str, meta_graph_pb2.SignatureDef]) -> bytes:
    """The model with a ``signature_defs_metadata`` entry, as tflite::SetSignatureDefMap writes it.

    That is a flexbuffer map of serialized SignatureDefs, typed as strings; the Python
    flexbuffers builder only writes UTF-8 text as strings, hence its private _WriteBlob.
    """
    from flatbuffers import flexbuffers
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    builder = flexbuffers.Builder()
    with builder.Map():
        for key, signature in sorted(signatures.items()):
            builder.Key(key)
            builder._WriteBlob(signature.SerializeToString(), append_zero=True, type_=flexbuffers.Type.STRING)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(bytes(builder.Finish()), np.uint8)
    model.buffers.append(buffer)
    metadata = schema.MetadataT()
    metadata.name = SIGNATURE_DEFS_METADATA
    metadata.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), metadata]
    return flatbuffer_utils.convert_object_to_bytearray(model)


# -- models built here -------------------------------------------------------------------------------

class Dense(tf.Module):
    """Two outputs from one matmul; converted with its trackable, as the TF2 converter names tensors."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.w = tf.Variable(rng.normal(size=(3, 2)).astype(np.float32))
        self.b = tf.Variable(rng.normal(size=(2,)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def __call__(self, x):
        logits = tf.matmul(x, self.w) + self.b
        return {"logits": logits, "scores": tf.nn.softmax(logits)}


@tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
def two_outputs(x):
    return {"double": x * 2.0, "total": tf.reduce_sum(x, axis=1)}


@tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="words"),
                              tf.TensorSpec([None], tf.int32, name="pick")])
def strings(words, pick):
    return {"column": tf.reshape(words, [-1, 1]), "picked": tf.gather(words, pick)}


def _convert(function, trackable=None) -> bytes:
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], trackable)
    return converter.convert()


@pytest.fixture(scope="module")
def dense():
    module = Dense()
    return module, _convert(module.__call__, module)


@pytest.fixture(scope="module")
def two_outputs_model() -> bytes:
    return _convert(two_outputs)


@pytest.fixture(scope="module")
def keras_model():
    keras = tf.keras
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    return model, tf.lite.TFLiteConverter.from_keras_model(model).convert()


@pytest.fixture(scope="module")
def strings_model() -> bytes:
    return _convert(strings)


def _only(mapping: dict) -> str:
    (key,) = mapping
    return key


# -- TF Serving's own TFLite test models ---------------------------------------------------------------

@pytest.mark.parametrize(("model", "input_tensor"), [
    ("saved_model_half_plus_two_tflite", "x"),
    # The metadata names "tflite_input:0" and "y:0"; the model's tensors lost the suffix, and TF Serving
    # reports the names it found (FixTfLiteTensorName).
    ("saved_model_half_plus_two_tflite_with_sigdef", "tflite_input"),
])
def test_tf_serving_half_plus_two_models(shared_testdata, model, input_tensor):
    servable = load_servable(model, 123, shared_testdata / model / "00000123", TFLITE_OPTIONS)
    try:
        assert isinstance(servable, TfLiteServable)
        signature_map = servable.signature_def_map().signature_def
        assert list(signature_map) == ["serving_default"]
        assert signature_map["serving_default"] == _signature_def(HALF_PLUS_TWO_SIGNATURE % input_tensor)
        signature = servable.signature("serving_default")
        assert servable.run(signature, {"x": np.array([2.0], np.float32)}, ["y"])["y"].tolist() == [3.0]
        # Any batch, any rank the ops take: the input is resized to the request's shape.
        three = servable.run(signature, {"x": np.array([1.0, 2.0, 3.0], np.float32)}, ["y"])["y"]
        assert three.tolist() == [2.5, 3.0, 3.5]
        column = servable.run(signature, {"x": np.array([[1.0], [5.0]], np.float32)}, ["y"])["y"]
        assert column.shape == (2, 1) and column.ravel().tolist() == [2.5, 4.5]
    finally:
        servable.close()


def test_parse_example_model_needs_a_custom_op_python_tflite_lacks(shared_testdata):
    """TF Serving registers ParseExampleV2 into its op resolver; TensorFlow's Python interpreter has no such op,
    so the version fails to load, saying why (should a TensorFlow release add it, the model must just serve)."""
    path = shared_testdata / "parse_example_tflite" / "00000123"
    try:
        servable = load_servable("parse_example", 123, path, TFLITE_OPTIONS)
    except ServingError as error:
        assert error.code is Code.FAILED_PRECONDITION
        assert "ParseExampleV2" in error.message
        return
    try:  # the metadata's SignatureDef, as TF Serving reports it
        signature = servable.signature_def_map().signature_def["serving_default"]
        assert signature.inputs["input"].name == "input" and signature.inputs["input"].dtype == 7
        example = tf.train.Example(features=tf.train.Features(feature={
            "x": tf.train.Feature(float_list=tf.train.FloatList(value=[5.0]))}))
        inputs = {"input": np.array([example.SerializeToString()], dtype=object)}
        servable.run(servable.signature("serving_default"), inputs, list(signature.outputs))
    finally:
        servable.close()


# -- SignatureDefs of converted models -----------------------------------------------------------------

def test_generated_signature_keys_tensors_by_name_and_later_output_hides_earlier(dense, tmp_path):
    """The TF2 converter names two outputs StatefulPartitionedCall:0 and :1; TF Serving keys both
    "StatefulPartitionedCall", so only :1 is reachable. The converter's own SignatureDef is not read."""
    module, content = dense
    assert _interpreter(content).get_signature_list() == {"serving_default": {"inputs": ["x"],
                                                                              "outputs": ["logits", "scores"]}}
    servable = _servable(content, tmp_path)
    signature_def = servable.signature_def_map().signature_def["serving_default"]
    assert signature_def == _signature_def("""
        inputs { key: "serving_default_x" value {
          name: "serving_default_x:0" dtype: DT_FLOAT tensor_shape { dim { size: 1 } dim { size: 3 } } } }
        outputs { key: "StatefulPartitionedCall" value {
          name: "StatefulPartitionedCall:1" dtype: DT_FLOAT tensor_shape { dim { size: 1 } dim { size: 2 } } } }
        method_name: "tensorflow/serving/predict"
    """)
    x = np.random.default_rng(2).normal(size=(5, 3)).astype(np.float32)
    got = servable.run(servable.signature("serving_default"), {"serving_default_x": x},
                       ["StatefulPartitionedCall"])["StatefulPartitionedCall"]
    reference = _run_interpreter(content, {"serving_default_x:0": x})
    np.testing.assert_array_equal(got, reference["StatefulPartitionedCall:1"])
    expected = module(tf.constant(x))
    assert any(np.allclose(got, expected[key].numpy(), rtol=0, atol=1e-5) for key in ("logits", "scores"))
    servable.close()


def test_multiple_outputs_rows_against_the_tf_function(two_outputs_model, tmp_path):
    servable = _servable(two_outputs_model, tmp_path)
    signature = servable.signature("serving_default")
    assert list(signature.inputs) == ["x"] and sorted(signature.outputs) == ["Identity", "Identity_1"]
    rng = np.random.default_rng(3)
    for rows in (1, 4, 2, 7):
        x = rng.normal(size=(rows, 4)).astype(np.float32)
        got = servable.run(signature, {"x": x}, ["Identity", "Identity_1"])
        reference = _run_interpreter(two_outputs_model, {"x": x})
        expected = {key: value.numpy() for key, value in two_outputs(tf.constant(x)).items()}
        by_shape = {value.ndim: value for value in got.values()}
        np.testing.assert_allclose(by_shape[2], expected["double"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(by_shape[1], expected["total"], rtol=0, atol=1e-5)
        for key in got:
            np.testing.assert_array_equal(got[key], reference[key])
    servable.close()


def test_keras_model_rows_against_keras(keras_model, tmp_path):
    model, content = keras_model
    servable = _servable(content, tmp_path)
    signature = servable.signature("serving_default")
    alias, output = _only(signature.inputs), _only(signature.outputs)
    assert signature.inputs[alias].tensor_name.startswith("serving_default_keras_tensor")
    assert signature.inputs[alias].shape == (1, 4)  # the dims the model declares, as TF Serving reports them
    x = np.random.default_rng(4).normal(size=(6, 4)).astype(np.float32)
    got = servable.run(signature, {alias: x}, [output])[output]
    np.testing.assert_allclose(got, model(x, training=False).numpy(), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(
        got, _run_interpreter(content, {signature.inputs[alias].tensor_name: x})[signature.outputs[output].tensor_name])
    servable.close()


def test_signature_defs_from_metadata_every_key_names_fixed_strings_exact(strings_model, tmp_path):
    by_rank = {len(d["shape"]): d["name"] for d in _interpreter(strings_model).get_output_details()}
    column, picked = by_rank[2], by_rank[1]
    signatures = {
        "serving_default": _signature_def(f"""
            inputs {{ key: "w" value {{ name: "words:0" dtype: DT_STRING tensor_shape {{ dim {{ size: -1 }} }} }} }}
            inputs {{ key: "p" value {{ name: "pick" dtype: DT_INT32 tensor_shape {{ dim {{ size: -1 }} }} }} }}
            outputs {{ key: "picked" value {{ name: "{picked}:0" dtype: DT_STRING }} }}
            method_name: "tensorflow/serving/predict"
        """),
        "as_column": _signature_def(f"""
            inputs {{ key: "w" value {{ name: "words" dtype: DT_STRING }} }}
            inputs {{ key: "p" value {{ name: "pick" dtype: DT_INT32 }} }}
            outputs {{ key: "column" value {{ name: "{column}" dtype: DT_STRING }} }}
            method_name: "tensorflow/serving/classify"
        """),
    }
    servable = _servable(with_signature_defs(strings_model, signatures), tmp_path)
    reported = servable.signature_def_map().signature_def
    assert sorted(reported) == ["as_column", "serving_default"]
    assert reported["serving_default"].inputs["w"].name == "words"  # the ":0" the model lacks, dropped
    assert reported["serving_default"].outputs["picked"].name == picked
    assert reported["serving_default"].inputs["w"].tensor_shape.dim[0].size == -1  # the metadata's, kept
    assert reported["as_column"].method_name == "tensorflow/serving/classify"
    words = np.array([b"a\x00b", b"xy\x00\x00", b"", b"\xff"], dtype=object)
    pick = np.array([1, 3, 0], np.int32)
    got = servable.run(servable.signature("serving_default"), {"w": words, "p": pick}, ["picked"])["picked"]
    assert got.dtype == object and got.tolist() == [b"xy\x00\x00", b"\xff", b"a\x00b"]
    got = servable.run(servable.signature("as_column"), {"w": words[:2], "p": pick[:1]}, ["column"])["column"]
    assert got.shape == (2, 1) and got.ravel().tolist() == [b"a\x00b", b"xy\x00\x00"]
    servable.close()


def test_signature_naming_an_unknown_tensor_fails_the_load(strings_model, tmp_path):
    broken = with_signature_defs(strings_model, {"serving_default": _signature_def(
        'inputs { key: "w" value { name: "nope:0" dtype: DT_STRING } } method_name: "tensorflow/serving/predict"')})
    version = tmp_path / "1"
    version.mkdir()
    (version / "model.tflite").write_bytes(broken)
    with pytest.raises(ServingError) as caught:
        load_servable("m", 1, version, TFLITE_OPTIONS)
    assert caught.value.code is Code.FAILED_PRECONDITION
    assert "Signature input w references an unknown tensor" in caught.value.message


def test_tensor_types_tf_serving_cannot_map_fail_the_load(tmp_path):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float64, name="x")])
    def doubles(x):
        return tf.cast(x, tf.float32) * 2.0

    with pytest.raises(ServingError) as caught:
        _servable(_convert(doubles), tmp_path)
    assert "Unknown TfLite type: float64" in caught.value.message


def test_not_a_flatbuffer_fails_the_load(tmp_path):
    version = tmp_path / "1"
    version.mkdir()
    (version / "model.tflite").write_bytes(b"not a model at all")
    with pytest.raises(ServingError) as caught:
        load_servable("m", 1, version, TFLITE_OPTIONS)
    assert caught.value.code is Code.FAILED_PRECONDITION and "model.tflite" in caught.value.message


# -- errors and the pool ----------------------------------------------------------------------------------

def test_bad_requests_are_invalid_argument_and_the_next_request_is_served(dense, tmp_path):
    _module, content = dense
    servable = _servable(content, tmp_path, pool_size=1)
    signature = servable.signature("serving_default")
    run = servable.run
    good = np.ones((2, 3), np.float32)
    expected = run(signature, {"serving_default_x": good}, ["StatefulPartitionedCall"])["StatefulPartitionedCall"]
    for bad in (np.ones((2, 4), np.float32), np.ones((2, 3), np.int64)):
        with pytest.raises(ServingError) as caught:
            run(signature, {"serving_default_x": bad}, ["StatefulPartitionedCall"])
        assert caught.value.code is Code.INVALID_ARGUMENT, caught.value
        again = run(signature, {"serving_default_x": good}, ["StatefulPartitionedCall"])["StatefulPartitionedCall"]
        np.testing.assert_array_equal(again, expected)
    with pytest.raises(ServingError) as caught:
        run(signature, {"nope": good}, ["StatefulPartitionedCall"])
    assert caught.value.code is Code.INVALID_ARGUMENT
    servable.close()
    with pytest.raises(ServingError) as caught:
        run(signature, {"serving_default_x": good}, ["StatefulPartitionedCall"])
    assert caught.value.code is Code.UNAVAILABLE


def test_a_failing_invoke_is_internal_as_in_tf_serving(strings_model, tmp_path):
    servable = _servable(strings_model, tmp_path)
    signature = servable.signature("serving_default")
    with pytest.raises(ServingError) as caught:
        servable.run(signature, {"words": np.array([b"a"], dtype=object), "pick": np.array([5], np.int32)},
                     list(signature.outputs))
    assert caught.value.code is Code.INTERNAL and "Failed to invoke TfLite interpreter" in caught.value.message
    servable.close()


def test_concurrent_calls_of_every_batch_size_share_a_bounded_pool(two_outputs_model, tmp_path):
    servable = _servable(two_outputs_model, tmp_path, pool_size=3)
    signature = servable.signature("serving_default")
    failures: list[BaseException] = []

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(40):
                x = rng.normal(size=(int(rng.integers(1, 9)), 4)).astype(np.float32)
                got = servable.run(signature, {"x": x}, ["Identity", "Identity_1"])
                by_shape = {value.ndim: value for value in got.values()}
                np.testing.assert_allclose(by_shape[2], x * 2.0, rtol=0, atol=1e-5)
                np.testing.assert_allclose(by_shape[1], x.sum(axis=1), rtol=0, atol=1e-5)
        except BaseException as error:  # reported below, from the test's thread
            failures.append(error)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[0]
    assert 1 <= servable._pool.built <= 3
    servable.close()


def test_loader_prefers_model_tflite_only_when_asked(keras_model, tmp_path):
    _model, content = keras_model
    version = tmp_path / "7"
    version.mkdir()
    (version / "model.tflite").write_bytes(content)
    servable = load_servable("k", 7, version, TFLITE_OPTIONS)
    assert isinstance(servable, TfLiteServable) and servable.kind == "tflite"
    servable.close()
    with pytest.raises(ServingError):  # no SavedModel beside it: without the flag the load fails
        load_servable("k", 7, version, LoaderOptions())
