"""SavedModels exported the ways users export them, each with the inputs to ask it.

Each builder writes version 1 under ``base`` (atomically, as our export does) and
returns the signature to call and its inputs by key. The served answer is then
checked against ``tf.saved_model.load`` in the test process: what TensorFlow runs,
the server must serve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .models import _atomic_version, write_tf1_half_plus


@dataclass
class Export:
    path: Path
    signature: str
    inputs: dict[str, np.ndarray]


def _floats(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def tf1_graph(base: Path) -> Export:
    """TF1 ``SavedModelBuilder`` with reference variables (TF Serving's own test models are these)."""
    return Export(write_tf1_half_plus(base, 1), "serving_default", {"x": _floats(3, 1)})


def tf2_module_several_signatures(base: Path) -> Export:
    """A ``tf.Module`` with two signatures, several outputs of different dtypes."""
    import tensorflow as tf

    class Stats(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = tf.Variable([1.0, 2.0, 3.0])

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def scaled(self, x):
            return {"scaled": x * self.scale}

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def stats(self, x):
            return {"total": tf.reduce_sum(x * self.scale, axis=1),
                    "argmax": tf.argmax(x, axis=1, output_type=tf.int64)}

    def build(export: Path) -> None:
        module = Stats()
        tf.saved_model.save(module, str(export), signatures={"serving_default": module.scaled,
                                                             "stats": module.stats})

    return Export(_atomic_version(base, 1, build), "stats", {"x": _floats(4, 3, seed=1)})


def _sequential(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,), name="features"), keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dense(3)])


def keras_model_export(base: Path) -> Export:
    """Keras 3 ``model.export()``, the export Keras documents for TF Serving."""
    def build(export: Path) -> None:
        _sequential(2).export(str(export), format="tf_saved_model", verbose=False)

    return Export(_atomic_version(base, 1, build), "serving_default", {})


def keras_in_tf_module(base: Path) -> Export:
    """A Keras 3 model held by a ``tf.Module``, saved with ``tf.saved_model.save``: TF Serving fails on it
    ("Could not find variable sequential/dense/kernel", tensorflow/serving#2226)."""
    import tensorflow as tf

    class Serving(tf.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def serve(self, x):
            return {"y": self.model(x)}

    def build(export: Path) -> None:
        module = Serving(_sequential(3))
        tf.saved_model.save(module, str(export), signatures={"serving_default": module.serve})

    return Export(_atomic_version(base, 1, build), "serving_default", {"x": _floats(5, 4, seed=3)})


def keras_export_archive(base: Path) -> Export:
    """``keras.export.ExportArchive`` with an explicit endpoint."""
    import keras
    import tensorflow as tf

    def build(export: Path) -> None:
        model = _sequential(4)
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(name="serve", fn=model.call, input_signature=[tf.TensorSpec((None, 4), tf.float32)])
        archive.write_out(str(export), verbose=False)

    return Export(_atomic_version(base, 1, build), "serve", {})


def keras_subclassed_text_model(base: Path) -> Export:
    """A subclassed Keras model (Embedding + LSTM) with a ``tf.function`` serving method."""
    import keras
    import tensorflow as tf

    class TextModel(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = keras.layers.Embedding(50, 8)
            self.lstm = keras.layers.LSTM(6)
            self.head = keras.layers.Dense(2)

        def call(self, tokens):
            return self.head(self.lstm(self.embedding(tokens)))

        @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.int32)])
        def serve(self, tokens):
            return {"logits": self(tokens)}

    def build(export: Path) -> None:
        keras.utils.set_random_seed(5)
        model = TextModel()
        model(np.zeros((1, 5), np.int32))
        tf.saved_model.save(model, str(export), signatures={"serving_default": model.serve})

    tokens = np.random.default_rng(5).integers(0, 50, size=(3, 5)).astype(np.int32)
    return Export(_atomic_version(base, 1, build), "serving_default", {"tokens": tokens})


def keras_sequential_saved_model_save(base: Path) -> Export:
    """A Keras 3 Sequential handed straight to ``tf.saved_model.save``."""
    import tensorflow as tf

    def build(export: Path) -> None:
        tf.saved_model.save(_sequential(6), str(export))

    return Export(_atomic_version(base, 1, build), "serving_default", {})


def vocabulary_lookup(base: Path) -> Export:
    """A string-input lookup table initialised from a vocabulary file, which is deleted after the export:
    the copy under ``assets/`` is what must be read."""
    import tensorflow as tf

    def build(export: Path) -> None:
        vocabulary = export.parent / "vocabulary.txt"
        vocabulary.write_text("apple\nbanana\ncherry\n")

        class Lookup(tf.Module):
            def __init__(self) -> None:
                super().__init__()
                initializer = tf.lookup.TextFileInitializer(
                    str(vocabulary), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                    tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
                self.table = tf.lookup.StaticHashTable(initializer, default_value=-1)

            @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
            def lookup(self, words):
                return {"ids": self.table.lookup(words), "echo": tf.strings.upper(words)}

        module = Lookup()
        tf.saved_model.save(module, str(export), signatures={"serving_default": module.lookup})
        vocabulary.unlink()

    words = np.array([b"cherry", b"kiwi", b"apple"], dtype=object)
    return Export(_atomic_version(base, 1, build), "serving_default", {"words": words})


def tf_keras_functional(base: Path) -> Export:
    """A Keras 2 (tf-keras) functional model saved with ``tf.saved_model.save``."""
    import tensorflow as tf
    import tf_keras

    def build(export: Path) -> None:
        tf_keras.utils.set_random_seed(7)
        inputs = tf_keras.Input((4,), name="x")
        outputs = tf_keras.layers.Dense(2, name="y")(inputs)
        tf.saved_model.save(tf_keras.Model(inputs, outputs), str(export))

    return Export(_atomic_version(base, 1, build), "serving_default", {"x": _floats(2, 4, seed=7)})


def tf2_classify_and_regress(base: Path) -> Export:
    """``tf.saved_model.save`` signatures shaped for Classify and Regress (their method name says predict)."""
    import tensorflow as tf

    features = {"x": tf.io.FixedLenFeature([1], tf.float32)}

    class Scorer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def classify(self, inputs):  # Classify feeds the examples to the input named "inputs"
            x = tf.io.parse_example(inputs, features)["x"]
            scores = tf.concat([x / 2 + 2, 1 - x], axis=1)
            classes = tf.broadcast_to(tf.constant([["half_plus_two", "one_minus"]]), tf.shape(scores))
            return {"scores": scores, "classes": classes}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def regress(self, inputs):
            return {"outputs": tf.io.parse_example(inputs, features)["x"] * 3}

    def build(export: Path) -> None:
        module = Scorer()
        tf.saved_model.save(module, str(export), signatures={
            "classify": module.classify.get_concrete_function(),
            "regress": module.regress.get_concrete_function()})

    return Export(_atomic_version(base, 1, build), "regress", {"inputs": _examples([2.0, 4.0])})


def _examples(values: list[float]) -> np.ndarray:
    import tensorflow as tf

    serialized = [tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=[v]))})).SerializeToString() for v in values]
    return np.array(serialized, dtype=object)


BUILDERS: dict[str, Callable[[Path], Export]] = {
    "tf1_graph": tf1_graph,
    "tf2_module": tf2_module_several_signatures,
    "keras_export": keras_model_export,
    "keras_in_module": keras_in_tf_module,
    "export_archive": keras_export_archive,
    "keras_subclassed": keras_subclassed_text_model,
    "keras_sequential_save": keras_sequential_saved_model_save,
    "vocabulary": vocabulary_lookup,
    "tf_keras": tf_keras_functional,
    "tf2_examples": tf2_classify_and_regress,
}


def reference_outputs(export: Export) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, outputs) of ``tf.saved_model.load`` on the export: the answer the server must give.

    Builders that leave ``inputs`` empty get float rows made from the signature's own input specs.
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(str(export.path))
    function = loaded.signatures[export.signature]
    inputs = dict(export.inputs)
    if not inputs:
        for key, spec in function.structured_input_signature[1].items():
            shape = [3 if size is None else size for size in spec.shape]
            inputs[key] = _floats(*shape, seed=len(key)).astype(spec.dtype.as_numpy_dtype)
    outputs = function(**{key: tf.constant(value) for key, value in inputs.items()})
    return inputs, {key: value.numpy() for key, value in outputs.items()}
