"""The fast path: a SavedModel run through a TF1 session, as TF Serving runs it.

TF Serving's ``SavedModelBundle`` loads every SavedModel, TF1 or TF2, into a session
and runs SignatureDefs by tensor name. Where that is exact it is also the cheapest
way to run a model from Python (one C++ callable per signature). Where it is not
(variables the signature reads that the session's restore never fills: Keras 3
models inside a ``tf.Module``, subclassed models, ``ExportArchive``), the loader
sees it at load time with :func:`uninitialized_variables` and takes the object graph.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .servable import Servable, as_serving_error
from .signature import SignatureSpec
from .tf_private import make_session_callable

log = logging.getLogger(__name__)

_VARIABLE_OPS = {"VarHandleOp": "resource", "VariableV2": "ref", "Variable": "ref"}
# Callables for output subsets that output_filter asks for, kept at most this many per version (least
# recently used first out): a signature with n outputs has 2**n - 1 subsets, each a TF callable.
MAX_CALLABLES = 16


class SessionServable(Servable):
    kind = "session"

    def __init__(self, name: str, version: int, path: Path, session: Any, meta_graph: Any, *,
                 method_name_check: bool = False, detail: str = "") -> None:
        super().__init__(name, version, path, meta_graph.signature_def, method_name_check=method_name_check,
                         detail=detail)
        self._session = session
        # Each signature's callable for all its outputs, built at load and kept; callables for the
        # subsets output_filter asks for, in a bounded LRU. Both are keyed by the *sorted* outputs, and
        # the answer is put in the order asked: the order is the client's, and n outputs have n! orders.
        self._callables: dict[tuple, Callable] = {}
        self._subsets: OrderedDict[tuple, Callable] = OrderedDict()
        self._lock = threading.Lock()

    def run(self, signature: SignatureSpec, inputs: dict[str, np.ndarray], output_keys: Sequence[str]) -> dict:
        input_keys = tuple(sorted(inputs))
        fetched = tuple(sorted(output_keys))
        fn = self._callable(signature, input_keys, fetched)
        try:
            results = fn(*(inputs[key] for key in input_keys))
        except Exception as error:
            raise as_serving_error(error) from None
        by_key = dict(zip(fetched, results, strict=True))
        return {key: _as_array(by_key[key]) for key in output_keys}

    def _callable(self, signature: SignatureSpec, input_keys: tuple, output_keys: tuple) -> Callable:
        cache_key = (signature.name, input_keys, output_keys)
        fn = self._callables.get(cache_key)
        if fn is not None:
            return fn
        every = output_keys == tuple(sorted(signature.outputs)) and input_keys == tuple(sorted(signature.inputs))
        with self._lock:
            fn = self._callables.get(cache_key) if every else self._subsets.get(cache_key)
            if fn is not None:
                if not every:
                    self._subsets.move_to_end(cache_key)
                return fn
            try:
                fn = make_session_callable(
                    self._session,
                    [signature.inputs[key].tensor_name for key in input_keys],
                    [signature.outputs[key].tensor_name for key in output_keys],
                )
            except Exception as error:
                raise as_serving_error(error) from None
            if every:
                self._callables[cache_key] = fn
            else:
                self._subsets[cache_key] = fn
                while len(self._subsets) > MAX_CALLABLES:
                    self._subsets.popitem(last=False)
        return fn

    def prepare(self, signature_names: Iterable[str]) -> None:
        """Build each signature's callable now, so a signature naming missing tensors fails the load."""
        for name in signature_names:
            signature = self.signatures[name]
            self._callable(signature, tuple(sorted(signature.inputs)), tuple(sorted(signature.outputs)))

    def _release(self) -> None:
        with self._lock:
            self._callables.clear()
            self._subsets.clear()
        self._session.close()


def _as_array(value: Any) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else np.asarray(value)


def load_session_bundle(path: Path, config: Any) -> tuple[Any, Any]:
    """(session, MetaGraphDef) of the ``serve`` MetaGraph, in a graph of its own."""
    import tensorflow as tf

    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=config)
    try:
        with graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
    except BaseException:
        session.close()
        raise
    return session, meta_graph


def uninitialized_variables(session: Any, meta_graph: Any, signature_names: Iterable[str]) -> dict[str, list[str]]:
    """The variables each signature reads that the session's restore left empty.

    A signature's fetches reach variables through the main graph's edges (a
    ``StatefulPartitionedCall`` takes its variables as resource inputs). A variable
    left uninitialized after the SavedModel's restore and init ops is one the
    checkpoint holds under another object: running the signature would fail on
    every request with "Could not find variable ...".
    """
    import tensorflow as tf

    nodes = {node.name: node for node in meta_graph.graph_def.node}
    reached: dict[str, set[str]] = {}
    for name in signature_names:
        signature = meta_graph.signature_def[name]
        pending = [_node_name(info.name) for info in signature.outputs.values()]
        seen: set[str] = set()
        variables: set[str] = set()
        while pending:
            current = pending.pop()
            if current in seen or current not in nodes:
                continue
            seen.add(current)
            node = nodes[current]
            if node.op in _VARIABLE_OPS:
                variables.add(current)
            pending.extend(_node_name(inp) for inp in node.input)
        reached[name] = variables
    every = sorted(set().union(*reached.values())) if reached else []
    if not every:
        return {}
    graph = session.graph
    with graph.as_default():
        checks = []
        for variable in every:
            tensor = graph.get_tensor_by_name(f"{variable}:0")
            if _VARIABLE_OPS[nodes[variable].op] == "resource":
                checks.append(tf.raw_ops.VarIsInitializedOp(resource=tensor))
            else:
                checks.append(tf.raw_ops.IsVariableInitialized(ref=tensor))
    initialized = dict(zip(every, session.run(checks), strict=True))
    missing = {name: sorted(v for v in variables if not initialized[v]) for name, variables in reached.items()}
    return {name: variables for name, variables in missing.items() if variables}


def _node_name(tensor_name: str) -> str:
    return tensor_name.lstrip("^").split(":")[0]
