"""The path TensorFlow itself takes: ``tf.saved_model.load`` and the restored signatures.

A TF2 SavedModel is an object graph (modules, variables, functions) beside its
MetaGraph. ``tf.saved_model.load`` rebuilds the objects and binds each function to
the variables its owner tracks, which is what makes a Keras 3 model inside a
``tf.Module``, a subclassed model with a ``tf.function`` method and a
``keras.export.ExportArchive`` run, where a TF1 session (TF Serving's path) fails
with "Could not find variable ...". Each call goes through the restored
signature's concrete function: slower than a session callable (about 100 us more),
which is why the loader takes this path only when the session cannot serve.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import invalid_argument
from .servable import Servable, as_serving_error
from .signature import SignatureSpec

log = logging.getLogger(__name__)


class ObjectGraphServable(Servable):
    kind = "object-graph"

    def __init__(self, name: str, version: int, path: Path, loaded: Any, signature_defs: Any, *,
                 method_name_check: bool = False, detail: str = "") -> None:
        super().__init__(name, version, path, signature_defs, method_name_check=method_name_check, detail=detail)
        self._loaded = loaded  # holds the variables the functions read
        self._functions = {}
        for key in self.signatures:
            if key.startswith("__"):  # __saved_model_init_op: run by the load itself
                continue
            if key not in loaded.signatures:
                raise invalid_argument(f"SignatureDef {key} has no restored function in {path}")
            self._functions[key] = loaded.signatures[key]

    def run(self, signature: SignatureSpec, inputs: dict[str, np.ndarray], output_keys: Sequence[str]) -> dict:
        import tensorflow as tf

        function = self._functions.get(signature.name)
        if function is None:
            raise invalid_argument(f"Signature {signature.name} cannot be run")
        try:
            arguments = {key: tf.convert_to_tensor(value, dtype=tf.as_dtype(signature.inputs[key].tf_dtype))
                         for key, value in inputs.items()}
            results = function(**arguments)
        except (TypeError, ValueError) as error:  # the function's own input check (shape, dtype, names)
            raise invalid_argument(f"Signature {signature.name}: {_first_line(error)}") from None
        except Exception as error:
            raise as_serving_error(error) from None
        return {key: _as_numpy(results[key]) for key in output_keys}

    def _release(self) -> None:
        self._functions.clear()
        self._loaded = None


def load_object_graph(path: Path) -> Any:
    import tensorflow as tf

    return tf.saved_model.load(str(path), tags=["serve"])


def _as_numpy(value: Any) -> np.ndarray:
    array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    return array if isinstance(array, np.ndarray) else np.asarray(array)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
