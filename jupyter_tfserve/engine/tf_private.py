"""Every private TensorFlow API the engine relies on, in one place.

Each entry says why the public API will not do; ``tests/engine/test_tf_private.py``
pins each one against the installed TensorFlow, so an upgrade that moves or changes
one fails there, by name, instead of at a user's first request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def make_session_callable(session: Any, feeds: list[str], fetches: list[str]) -> Callable[..., list]:
    """A pre-built callable over a TF1 session: feeds and fetches by tensor name.

    Why private: the public ``Session.make_callable`` re-checks every fed array against
    the placeholder's static shape in Python, so it refuses inputs TF Serving accepts
    (TF Serving feeds tensors to the C++ session, which checks only what the kernels
    need), and it costs a Python-side feed-dict walk per call. ``_make_callable_from_options``
    is the C++ callable the public one wraps: about 26 us of overhead per call.
    """
    from tensorflow.core.protobuf import config_pb2

    options = config_pb2.CallableOptions()
    options.feed.extend(feeds)
    options.fetch.extend(fetches)
    return session._make_callable_from_options(options)


def tflite_model_schema() -> Any:
    """The Python bindings of TFLite's flatbuffer schema (``Model``, ``Metadata``, ``Buffer``).

    Why private: TF Serving reads a TFLite model's SignatureDefs from its ``signature_defs_metadata``
    buffer (``tflite::GetSignatureDefMap``), which ``tf.lite.Interpreter`` does not expose; the
    generated schema bindings TensorFlow ships are the only reader of that buffer in the pip package.
    """
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated
