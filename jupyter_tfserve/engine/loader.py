"""The SavedModel loader (TF Serving's SavedModelBundleSourceAdapter and Loader, in one).

It turns a version folder into a :class:`~.servable.Servable` that runs whatever
``tf.saved_model.load`` runs, and decides how at load time, never at the first
request:

1. ``--prefer_tflite_model`` and a ``model.tflite`` in the folder: a TFLite interpreter.
2. Otherwise a TF1 session over the ``serve`` MetaGraph (TF Serving's own path, and the
   fastest from Python), kept when every signature's callable builds and every variable
   a signature reads was restored.
3. When a TF2 export's signature reads variables the session's restore never filled
   (Keras 3 models inside a ``tf.Module``, subclassed models with ``tf.function``
   methods, ``ExportArchive``), the object graph: ``tf.saved_model.load``.
4. When neither can run a signature, the load fails with the reason, and the version
   ends in END, reported in its status.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ServingError, failed_precondition
from .object_graph_servable import ObjectGraphServable, load_object_graph
from .servable import Servable
from .session_servable import SessionServable, load_session_bundle, uninitialized_variables
from .source import SAVED_MODEL_FILES, TFLITE_FILE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionOptions:
    intra_op_parallelism: int = 0
    inter_op_parallelism: int = 0


@dataclass(frozen=True)
class LoaderOptions:
    session: SessionOptions = SessionOptions()
    prefer_tflite_model: bool = False
    method_name_check: bool = False


def default_session_options(intra: int = 0, inter: int = 0) -> SessionOptions:
    """0 lets TensorFlow pick; on a small machine one inter-op thread avoids oversubscription."""
    cores = os.cpu_count() or 1
    return SessionOptions(intra_op_parallelism=intra or cores, inter_op_parallelism=inter or (1 if cores <= 4 else 2))


def load_servable(name: str, version: int, path: Path, options: LoaderOptions) -> Servable:
    """Load one version (blocking: call off the event loop)."""
    if options.prefer_tflite_model and (path / TFLITE_FILE).is_file():
        from .tflite_servable import load_tflite_servable

        return load_tflite_servable(name, version, path, options)
    if (path / TFLITE_FILE).is_file() and not any((path / file).is_file() for file in SAVED_MODEL_FILES):
        raise failed_precondition(f"{path} holds a {TFLITE_FILE} and no SavedModel: serve it with "
                                  "--prefer_tflite_model=true")
    return _load_saved_model(name, version, path, options)


def _load_saved_model(name: str, version: int, path: Path, options: LoaderOptions) -> Servable:
    try:
        session, meta_graph = load_session_bundle(path, _session_config(options.session))
    except Exception as error:
        raise failed_precondition(f"Failed to load SavedModel at {path}: {_message(error)}") from None
    runnable = [key for key in meta_graph.signature_def if not key.startswith("__")]
    try:
        missing = uninitialized_variables(session, meta_graph, runnable)
    except Exception as error:
        session.close()
        raise failed_precondition(f"Failed to inspect the variables of {path}: {_message(error)}") from None
    if not missing:
        servable = SessionServable(name, version, path, session, meta_graph,
                                   method_name_check=options.method_name_check)
        try:
            servable.prepare(runnable)
        except ServingError as error:
            servable.close()
            raise failed_precondition(f"Signature of {path} cannot run: {error.message}") from None
        return servable
    session.close()
    reason = "; ".join(f"signature {key} reads {', '.join(variables)}" for key, variables in sorted(missing.items()))
    if not _has_object_graph(meta_graph):
        raise failed_precondition(f"SavedModel at {path} cannot run: the restore leaves variables it needs "
                                  f"uninitialized ({reason})")
    _configure_eager_threads(options.session)
    try:
        loaded = load_object_graph(path)
        servable = ObjectGraphServable(name, version, path, loaded, meta_graph.signature_def,
                                       method_name_check=options.method_name_check,
                                       detail=f"object graph: a TF1 session would not restore them ({reason})")
    except ServingError as error:
        raise failed_precondition(f"SavedModel at {path} cannot run: {error.message}") from None
    except Exception as error:
        raise failed_precondition(f"Failed to load SavedModel at {path} with tf.saved_model.load: "
                                  f"{_message(error)}") from None
    log.info("model %s version %d runs through its object graph (tf.saved_model.load): a TF1 session, as TF "
             "Serving uses, would not restore the variables %s", name, version, reason)
    return servable


def _has_object_graph(meta_graph: Any) -> bool:
    return len(meta_graph.object_graph_def.nodes) > 0


def _session_config(options: SessionOptions) -> Any:
    import tensorflow as tf

    return tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=options.intra_op_parallelism,
        inter_op_parallelism_threads=options.inter_op_parallelism,
        allow_soft_placement=True,
    )


_eager_threads_configured = False


def _configure_eager_threads(options: SessionOptions) -> None:
    """The object graph runs in TensorFlow's eager context, whose thread pools are set once per process."""
    global _eager_threads_configured
    if _eager_threads_configured:
        return
    _eager_threads_configured = True
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(options.intra_op_parallelism)
        tf.config.threading.set_inter_op_parallelism_threads(options.inter_op_parallelism)
    except RuntimeError:  # the eager context is already up (a test process); its pools stay as they are
        log.debug("eager thread pools already initialised")


def _message(error: Exception) -> str:
    return (getattr(error, "message", None) or str(error)).strip()
