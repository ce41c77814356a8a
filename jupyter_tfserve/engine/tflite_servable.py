"""A ``model.tflite`` run as TF Serving's ``TfLiteSession`` runs it (``--prefer_tflite_model``).

What clients see is TF Serving's (``tflite_session.cc``, ``TfLiteSession::Create``):

* SignatureDefs come from the model's ``signature_defs_metadata`` entry, the serialized
  SignatureDefMap that ``tflite::SetSignatureDefMap`` writes (read by
  ``tflite::GetSignatureDefMap``), every key of it, each tensor name checked against the
  primary subgraph's inputs and outputs, falling back to the name without its ``:N``
  suffix (``FixTfLiteTensorName``: old converters stripped it). The converter's own
  TFLite SignatureDefs (what ``get_signature_list`` shows) are not read: TF Serving
  ignores them too.
* Without that metadata, one generated ``serving_default`` (``tensorflow/serving/predict``)
  over the primary subgraph's inputs and outputs, each keyed by its tensor name up to the
  first ``:`` and naming the tensor in full, with the dims the model declares. Two outputs
  named ``T:0`` and ``T:1`` share the key ``T``; the later (by name) wins, as in TF
  Serving, and the load logs which tensor that hides.
* Each input is resized to the request's shape when the shape differs
  (``SetInputAndInvokeMiniBatch``: ``ResizeInputTensor`` + ``AllocateTensors``), so any
  batch size runs; outputs take the shape the interpreter gives them.
* Interpreters are not thread-safe, so each call takes one from a pool
  (``TfLiteInterpreterPool``), each with one thread, at most one per core by default
  (``--num_tflite_pools`` defaults to the CPU count). Ours are built on demand, so a
  version holds only as many as its concurrency ever needed; ``invoke`` releases the GIL,
  so they run in parallel.
* Tensor types outside TF Serving's ``TfLiteTypeToTfType`` (float16, float64, ...) fail
  the load, as they do there.

Where we differ, deliberately: a shape the model cannot take (``AllocateTensors`` fails
after the resize) is INVALID_ARGUMENT with the interpreter's reason, not TF Serving's
INTERNAL "Failed to allocate tensors": the request is at fault. An interpreter that failed
in any way is dropped and a fresh one built, so a bad request never leaves a half-resized
interpreter behind for the next one. A string input is resized to its own shape, where TF
Serving resizes it to ``[batch]`` taken from the first input (the same for the usual 1-D
string input).
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import Code, ServingError, failed_precondition, invalid_argument, unavailable
from .servable import Servable, as_serving_error
from .signature import (
    DEFAULT_SIGNATURE,
    DT_BOOL,
    DT_COMPLEX64,
    DT_FLOAT,
    DT_INT8,
    DT_INT16,
    DT_INT32,
    DT_INT64,
    DT_STRING,
    DT_UINT8,
    PREDICT_METHOD,
    SignatureSpec,
)
from .source import TFLITE_FILE

if TYPE_CHECKING:
    from .loader import LoaderOptions

log = logging.getLogger(__name__)

SIGNATURE_DEFS_METADATA = "signature_defs_metadata"  # tflite::kSignatureDefsMetadataName

# TF Serving's TfLiteTypeToTfType, in numpy terms: the only types a TFLite model may expose.
_TF_DTYPES: dict[np.dtype, int] = {
    np.dtype(np.float32): DT_FLOAT,
    np.dtype(np.int32): DT_INT32,
    np.dtype(np.uint8): DT_UINT8,
    np.dtype(np.int64): DT_INT64,
    np.dtype(np.bytes_): DT_STRING,
    np.dtype(np.bool_): DT_BOOL,
    np.dtype(np.int16): DT_INT16,
    np.dtype(np.complex64): DT_COMPLEX64,
    np.dtype(np.int8): DT_INT8,
}


def load_tflite_servable(name: str, version: int, path: Path, options: LoaderOptions) -> TfLiteServable:
    """Load ``<path>/model.tflite`` (blocking); any failure is FAILED_PRECONDITION with its reason."""
    model_path = path / TFLITE_FILE
    try:
        content = model_path.read_bytes()
    except OSError as error:
        raise failed_precondition(f"Failed to read TFLite model {model_path}: {error}") from None
    try:
        servable = TfLiteServable(name, version, path, content, method_name_check=options.method_name_check)
    except ServingError as error:
        raise failed_precondition(f"Failed to load TFLite model {model_path}: {error.message}") from None
    log.info("model %s version %d runs %s through TFLite interpreters (up to %d)", name, version, TFLITE_FILE,
             servable.pool_size)
    return servable


@dataclass
class _Slot:
    """One interpreter and the input dims it is allocated for (resizing only when a request differs)."""

    interpreter: Any
    dims: dict[int, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Binding:
    """A signature's aliases resolved to tensor indices once, at load time."""

    inputs: dict[str, int]
    outputs: dict[str, int]


class TfLiteServable(Servable):
    """A ``model.tflite`` version: its SignatureDefs as TF Serving reports them, runs on pooled interpreters.

    Each signature's aliases are resolved to the primary subgraph's tensor indices once, here,
    so a call only looks up indices, takes an interpreter, and feeds it.
    """

    kind = "tflite"

    def __init__(self, name: str, version: int, path: Path, model_content: bytes, *,
                 pool_size: int | None = None, method_name_check: bool = False) -> None:
        self._content = model_content  # the interpreters read the flatbuffer in place: keep it alive
        first = self._new_slot()
        interpreter = first.interpreter
        inputs = _tensor_infos(interpreter.get_input_details(), "Input")
        outputs = _tensor_infos(interpreter.get_output_details(), "Output")
        stored = _metadata_signature_defs(model_content)
        signature_defs = (_checked_signature_defs(stored, inputs, outputs) if stored
                          else _generated_signature_def(inputs, outputs))
        self.pool_size = max(1, pool_size or os.cpu_count() or 1)
        super().__init__(name, version, path, signature_defs, method_name_check=method_name_check,
                         detail=f"TFLite interpreter pool (up to {self.pool_size}), "
                                f"{'SignatureDefs from the model' if stored else 'generated serving_default'}")
        input_index = {info.name: index for info, index in inputs.values()}
        output_index = {info.name: index for info, index in outputs.values()}
        self._input_names = {index: name for name, index in input_index.items()}
        self._bindings = {
            key: _Binding({alias: input_index[info.name] for alias, info in sig.inputs.items()},
                          {alias: output_index[info.name] for alias, info in sig.outputs.items()})
            for key, sig in signature_defs.items()
        }
        self._pool = _Pool(self._new_slot, first, self.pool_size)

    def _new_slot(self) -> _Slot:
        interpreter = _new_interpreter(self._content)
        return _Slot(interpreter, {d["index"]: tuple(int(n) for n in d["shape"])
                                   for d in interpreter.get_input_details()})

    def run(self, signature: SignatureSpec, inputs: dict[str, np.ndarray], output_keys: Sequence[str]) -> dict:
        binding = self._bindings.get(signature.name)
        if binding is None:
            raise invalid_argument(f"Signature {signature.name} cannot be run")
        feeds = []
        for alias, array in inputs.items():
            index = binding.inputs.get(alias)
            if index is None:
                raise invalid_argument(f"Missing input TFLite tensor: {alias} is not an input of signature "
                                       f"{signature.name}")
            feeds.append((index, array))
        fetches = []
        for alias in output_keys:
            index = binding.outputs.get(alias)
            if index is None:
                raise invalid_argument(f"Missing output TFLite tensor: {alias} is not an output of signature "
                                       f"{signature.name}")
            fetches.append((alias, index))
        slot = self._pool.take()
        try:
            results = _invoke(slot, feeds, fetches, self._input_names)
        except BaseException as error:
            self._pool.discard()
            if isinstance(error, Exception) and not isinstance(error, ServingError):
                raise as_serving_error(error) from None
            raise
        self._pool.give(slot)
        return results

    def _release(self) -> None:
        self._pool.close()


def _invoke(slot: _Slot, feeds: list[tuple[int, np.ndarray]], fetches: list[tuple[str, int]],
            names: dict[int, str]) -> dict:
    """Resize what changed shape, feed, invoke, copy the outputs out (SetInputAndInvokeMiniBatch)."""
    interpreter = slot.interpreter
    resized = []
    for index, array in feeds:
        if slot.dims.get(index) != array.shape:
            try:
                interpreter.resize_tensor_input(index, list(array.shape))
            except (ValueError, RuntimeError) as error:
                raise invalid_argument(f"Failed to resize input tensor {names[index]} to "
                                       f"{list(array.shape)}: {_reason(error)}") from None
            slot.dims[index] = array.shape
            resized.append(index)
    if resized:
        try:
            interpreter.allocate_tensors()
        except RuntimeError as error:
            shapes = ", ".join(f"{names[i]} {list(slot.dims[i])}" for i in resized)
            raise invalid_argument(f"Failed to allocate tensors: the model cannot take inputs of shape {shapes}: "
                                   f"{_reason(error)}") from None
    for index, array in feeds:
        try:
            interpreter.set_tensor(index, array)
        except (ValueError, TypeError) as error:
            raise invalid_argument(f"Cannot set input tensor {names[index]}: "
                                   f"{_reason(error)}") from None
    try:
        interpreter.invoke()
    except RuntimeError as error:
        raise ServingError(Code.INTERNAL, f"Failed to invoke TfLite interpreter: {_reason(error)}") from None
    return {alias: interpreter.get_tensor(index) for alias, index in fetches}  # get_tensor copies


class _Pool:
    """Interpreters handed to one call at a time (TfLiteInterpreterPool), built on demand up to ``limit``.

    The last one given back is the next taken, so a lightly loaded version keeps using the
    same warm interpreter and builds more only under real concurrency.
    """

    def __init__(self, factory: Callable[[], _Slot], first: _Slot, limit: int) -> None:
        self._factory = factory
        self._idle = [first]
        self._built = 1
        self._limit = limit
        self._closed = False
        self._ready = threading.Condition()

    def take(self) -> _Slot:
        with self._ready:
            while True:
                if self._closed:
                    raise unavailable("TFLite model version is being unloaded")
                if self._idle:
                    return self._idle.pop()
                if self._built < self._limit:
                    self._built += 1
                    break
                self._ready.wait()
        try:
            return self._factory()
        except BaseException:
            self.discard()
            raise

    def give(self, slot: _Slot) -> None:
        with self._ready:
            if not self._closed:
                self._idle.append(slot)
            self._ready.notify()

    def discard(self) -> None:
        """Forget an interpreter whose state is in doubt; a fresh one is built when needed."""
        with self._ready:
            self._built -= 1
            self._ready.notify()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._idle.clear()
            self._ready.notify_all()

    @property
    def built(self) -> int:
        with self._ready:
            return self._built


# -- building interpreters and SignatureDefs -------------------------------------------------------

def _new_interpreter(content: bytes) -> Any:
    """One interpreter with one thread, as TF Serving builds each of its pool's, tensors allocated."""
    import tensorflow as tf

    try:
        with warnings.catch_warnings():  # tf.lite.Interpreter warns that LiteRT will replace it, on every build
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(model_content=content, num_threads=1)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise invalid_argument(f"Cannot build a TFLite interpreter: {_reason(error)}") from None
    return interpreter


def _tensor_infos(details: list[dict], what: str) -> dict[str, tuple[Any, int]]:
    """TensorInfo and index by TFLite tensor name (GetTensorInfoMap / TfLiteTensorToTensorInfo)."""
    from tensorflow.core.protobuf import meta_graph_pb2

    infos: dict[str, tuple[Any, int]] = {}
    for detail in sorted(details, key=lambda d: d["name"]):
        name, index = detail["name"], int(detail["index"])
        if not name:
            raise ServingError(Code.INTERNAL, f"{what} name missing for tensor index: {index}")
        dtype = _TF_DTYPES.get(np.dtype(detail["dtype"]))
        if dtype is None:
            raise ServingError(Code.INTERNAL, f"Unknown TfLite type: {np.dtype(detail['dtype']).name} "
                                              f"({what.lower()} {name}); TF Serving serves only "
                                              "float32, int32, uint8, int64, string, bool, int16, complex64, int8")
        if name in infos:
            raise ServingError(Code.ALREADY_EXISTS, f"{what} tensor name: {name} has multiple indices")
        info = meta_graph_pb2.TensorInfo(name=name, dtype=dtype)
        for size in detail["shape"]:
            info.tensor_shape.dim.add(size=int(size))
        infos[name] = (info, index)
    return infos


def _generated_signature_def(inputs: dict, outputs: dict) -> dict[str, Any]:
    """TF Serving's mock ``serving_default``: aliases are tensor names up to the first ``:``."""
    from tensorflow.core.protobuf import meta_graph_pb2

    log.warning("No signature def found in TFLite model. Generating one.")  # TF Serving's own warning
    signature = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
    for infos, target in ((inputs, signature.inputs), (outputs, signature.outputs)):
        for name, (info, _index) in infos.items():  # sorted by name, as TF Serving's std::map
            alias = name.split(":", 1)[0]
            if alias in target:
                log.warning("TFLite tensors %s and %s both get the signature key %r; %s wins and %s cannot be "
                            "requested (TF Serving keys them the same way)", target[alias].name, name, alias,
                            name, target[alias].name)
            target[alias].CopyFrom(info)
    return {DEFAULT_SIGNATURE: signature}


def _checked_signature_defs(stored: dict[str, Any], inputs: dict, outputs: dict) -> dict[str, Any]:
    """The model's own SignatureDefs, each tensor name made one the interpreter has (FixTfLiteTensorName)."""
    for signature in stored.values():
        for what, infos, tensors in (("input", inputs, signature.inputs), ("output", outputs, signature.outputs)):
            for alias, info in tensors.items():
                name = info.name
                if name not in infos:
                    legacy = name.split(":", 1)[0]
                    if legacy not in infos:
                        raise ServingError(Code.INTERNAL, f"Signature {what} {alias} references an unknown tensor: "
                                                          f"Unknown tensor '{name}'.")
                    info.name = legacy
    return stored


def _metadata_signature_defs(content: bytes) -> dict[str, Any]:
    """The SignatureDefMap in the model's ``signature_defs_metadata`` (tflite::GetSignatureDefMap); {} if none.

    The entry is a flexbuffer map from signature key to a serialized SignatureDef, in a
    model buffer named by the metadata. TensorFlow ships the flatbuffer schema's Python
    bindings and the flatbuffers package (a dependency of tensorflow) reads flexbuffers.
    """
    from flatbuffers import flexbuffers
    from tensorflow.core.protobuf import meta_graph_pb2

    from .tf_private import tflite_model_schema

    schema = tflite_model_schema()
    try:
        model = schema.Model.GetRootAsModel(content, 0)
        entries = [model.Metadata(i) for i in range(model.MetadataLength())]
        entry = next((m for m in entries if m.Name() == SIGNATURE_DEFS_METADATA.encode()), None)
        if entry is None:
            return {}
        data = model.Buffers(entry.Buffer()).DataAsNumpy()
        mapping = flexbuffers.GetRoot(bytearray(data.tobytes())).AsMap
        serialized = {key.AsKey: mapping[key.AsKey].AsStringBytes for key in mapping.Keys}
    except Exception as error:  # a malformed flatbuffer raises anything from struct.error to IndexError
        raise invalid_argument(f"Invalid SignatureDefs found in TfLite model: Error reading signature def map: "
                               f"{error}") from None
    signatures = {}
    for key, value in serialized.items():
        signature = meta_graph_pb2.SignatureDef()
        try:
            signature.ParseFromString(value)
        except Exception:
            raise invalid_argument("Invalid SignatureDefs found in TfLite model: Cannot parse signature def found "
                                   "in flatbuffer.") from None
        signatures[key] = signature
    return signatures


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
