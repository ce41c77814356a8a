"""A servable: one loaded version of a model, whatever runs it underneath.

TF Serving's request handlers only ever ask a servable for its SignatureDefs and
to run one of them; how the version was loaded (a TF1 session, TensorFlow's
object graph, a TFLite interpreter) is the loader's business. Classify and
Regress are the same on every kind, so they live here, with TF Serving's own
checks (``classifier.cc`` / ``regressor.cc``: ``PreProcessClassification``,
``PostProcessClassificationResult`` and their regression twins).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import Code, ServingError, invalid_argument
from .signature import CLASSIFY_METHOD, DT_FLOAT, DT_STRING, REGRESS_METHOD, SignatureSpec

log = logging.getLogger(__name__)

CLASSIFY_INPUTS = "inputs"
CLASSIFY_CLASSES = "classes"
CLASSIFY_SCORES = "scores"
REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"


class Servable:
    """A loaded version; thread-safe to run from many threads at once.

    Subclasses implement :meth:`run` and :meth:`_release`. ``kind`` names how the
    version runs, for status and logs.
    """

    kind = "servable"

    def __init__(self, name: str, version: int, path: Path, signature_defs: Mapping[str, Any], *,
                 method_name_check: bool = False, detail: str = "") -> None:
        self.name = name
        self.version = version
        self.path = path
        self.detail = detail
        self._signature_defs = dict(signature_defs)
        self._method_name_check = method_name_check
        self.signatures: dict[str, SignatureSpec] = {
            key: SignatureSpec.from_signature_def(key, sig) for key, sig in self._signature_defs.items()
        }

    def signature(self, name: str) -> SignatureSpec:
        try:
            return self.signatures[name]
        except KeyError:
            raise invalid_argument(f"Serving signature key \"{name}\" not found.") from None

    def signature_def_map(self) -> Any:
        """The SignatureDefMap proto, as GetModelMetadata returns it."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in self._signature_defs.items():
            signature_map.signature_def[key].CopyFrom(value)
        return signature_map

    def run(self, signature: SignatureSpec, inputs: dict[str, np.ndarray], output_keys: Sequence[str]) -> dict:
        """Run a signature; ``inputs`` are keyed by alias and already of the right dtypes."""
        raise NotImplementedError

    # -- Classify and Regress, as TF Serving checks and shapes them ----------------------------

    def classify(self, signature: SignatureSpec, serialized_examples: list[bytes]) -> list[list[tuple[str, float]]]:
        """Classify serialized tf.Examples: one list of (label, score) per example."""
        wanted = self._classification_outputs(signature)
        outputs = self.run(signature, {CLASSIFY_INPUTS: _examples_tensor(serialized_examples)}, wanted)
        count = len(serialized_examples)
        classes = outputs.get(CLASSIFY_CLASSES)
        scores = outputs.get(CLASSIFY_SCORES)
        width = 0
        for key, array, want in ((CLASSIFY_CLASSES, classes, DT_STRING), (CLASSIFY_SCORES, scores, DT_FLOAT)):
            if array is None:
                continue
            if array.ndim != 2:
                raise invalid_argument(f"Expected Tensor shape: [batch_size num_classes] but got {list(array.shape)}")
            if want == DT_STRING and array.dtype.kind not in "OSU":
                raise invalid_argument(f"Expected classes Tensor of DT_STRING. Got: {array.dtype}")
            if want == DT_FLOAT and array.dtype != np.float32:
                raise invalid_argument(f"Expected scores Tensor of DT_FLOAT. Got: {array.dtype}")
            if array.shape[0] != count:
                raise invalid_argument(f"Expected {key} output batch size of {count}. Got: {array.shape[0]}")
            width = array.shape[1]
        if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
            raise invalid_argument(f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} "
                                   f"vs. {scores.shape[1]}")
        results = []
        for row in range(count):
            labels = [_text(classes[row, i]) for i in range(width)] if classes is not None else [""] * width
            values = [float(v) for v in scores[row]] if scores is not None else [0.0] * width
            results.append(list(zip(labels, values, strict=True)))
        return results

    def regress(self, signature: SignatureSpec, serialized_examples: list[bytes]) -> list[float]:
        self._check_regression(signature)
        output = self.run(signature, {REGRESS_INPUTS: _examples_tensor(serialized_examples)},
                          [REGRESS_OUTPUTS])[REGRESS_OUTPUTS]
        count = len(serialized_examples)
        if not (output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1)):
            raise invalid_argument("Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but "
                                   f"got {list(output.shape)}")
        if output.shape[0] != count:
            raise invalid_argument(f"Input batch size did not match output batch size: {count} vs. {output.shape[0]}")
        if output.dtype != np.float32:
            raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {output.dtype}")
        return [float(v) for v in output.reshape(-1)]

    def _classification_outputs(self, signature: SignatureSpec) -> list[str]:
        if self._method_name_check and signature.method_name != CLASSIFY_METHOD:
            raise invalid_argument(f"Expected classification signature method_name to be {CLASSIFY_METHOD}. "
                                   f"Was: {signature.method_name}")
        _check_example_input(signature, "classification")
        if len(signature.outputs) not in (1, 2):
            raise invalid_argument(f"Expected one or two output Tensors, found {len(signature.outputs)}")
        wanted = [key for key in (CLASSIFY_CLASSES, CLASSIFY_SCORES) if key in signature.outputs]
        if not wanted:
            raise invalid_argument('Expected classification signature outputs to contain at least one of "classes" '
                                   f'or "scores". Signature {signature.name} has {sorted(signature.outputs)}')
        return wanted

    def _check_regression(self, signature: SignatureSpec) -> None:
        if self._method_name_check and signature.method_name != REGRESS_METHOD:
            raise invalid_argument(f"Expected regression signature method_name to be {REGRESS_METHOD}. "
                                   f"Was: {signature.method_name}")
        _check_example_input(signature, "regression")
        if len(signature.outputs) != 1:
            raise invalid_argument("Expected one output Tensor.")
        if REGRESS_OUTPUTS not in signature.outputs:
            raise invalid_argument(f"No regression outputs found in SignatureDef {signature.name}: it has "
                                   f"{sorted(signature.outputs)}")

    def close(self) -> None:
        try:
            self._release()
        except Exception:  # closing must never fail an unload
            log.exception("releasing %s version %s", self.name, self.version)

    def _release(self) -> None:
        """Free what the version holds (sessions, interpreters)."""


def _check_example_input(signature: SignatureSpec, what: str) -> None:
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    spec = signature.inputs.get(CLASSIFY_INPUTS)
    if spec is None:
        raise invalid_argument(f"No {what} inputs found in SignatureDef {signature.name}: its input is "
                               f"{next(iter(signature.inputs))!r}, not 'inputs'")
    if spec.tf_dtype != DT_STRING:
        raise invalid_argument(f"Expected input inputs to be DT_STRING serialized tf.Examples, got {spec.dtype_name}")


def _examples_tensor(serialized_examples: list[bytes]) -> np.ndarray:
    array = np.empty(len(serialized_examples), dtype=object)
    array[:] = serialized_examples
    return array


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def as_serving_error(error: Exception) -> ServingError:
    """TensorFlow's errors carry a canonical code; keep it, and its message."""
    if isinstance(error, ServingError):
        return error
    code = getattr(error, "error_code", None)
    message = getattr(error, "message", None) or str(error)
    message = message.strip()
    try:
        status = Code(int(code)) if code is not None else Code.INTERNAL
    except ValueError:
        status = Code.INTERNAL
    return ServingError(status, message)
