"""A Keras model, a ``tf.Module`` or a SavedModel folder becomes the next version of a served model.

The version is written into a temporary folder beside the versions (``.export-*``,
which the engine's source never takes for a version) and renamed into place, so the
engine never sees half a model; the engine is then asked to look now rather than at
its next poll, and the call returns once the new version is AVAILABLE, or raises
with the engine's reason when it fails to load.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..private_files import make_private_dirs
from .client import TFServeClient, TFServeError

log = logging.getLogger(__name__)

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
NEW_MODEL_POLICY = {"latest": 2}  # the previous version stays loaded, for A/B comparison and rollback


@dataclass
class ExportResult:
    name: str
    version: int
    path: str
    seconds: float
    predict_url: str
    labels: dict
    stale_labels: dict = field(default_factory=dict)  # label -> the version it was on, no longer AVAILABLE

    def __str__(self) -> str:
        text = f"{self.name} version {self.version} is AVAILABLE ({self.seconds:.1f} s): POST {self.predict_url}"
        for key, value in sorted(self.stale_labels.items()):
            if self.labels.get(key) == value:
                where = "it still points there: requests to it fail until you move it (export with --label)"
            else:
                where = f"moved to version {self.labels[key]}" if key in self.labels else "removed"
            text += f"\nlabel {key!r} was on version {value}, which is no longer AVAILABLE; {where}"
        return text


def _make_owner_only(tree: Path) -> None:
    """Folders 0700, files 0600 under ``tree``, before it is published.

    A SavedModel is code the engine runs: a version another user could read leaks the
    model, and one they could write (a copied folder keeps its source's modes, 0777
    included) would run their code; the engine refuses the latter.
    """
    os.chmod(tree, 0o700)
    for root, folders, files in os.walk(tree):
        for name in folders:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o700)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o600)


def next_version(base: Path) -> int:
    if not base.is_dir():
        return 1
    versions = [int(entry.name) for entry in base.iterdir() if entry.name.isascii() and entry.name.isdigit()]
    return max(versions, default=0) + 1


@contextlib.contextmanager
def _quiet_tensorflow():
    """TensorFlow logs "Assets written to: <temporary folder>" at INFO: noise in a notebook, and misleading."""
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def save_saved_model(model: Any, path: Path) -> None:
    """Keras 3 ``export``, ``tf.saved_model.save`` with the module's serving function, or a folder copy."""
    if isinstance(model, str | os.PathLike):
        source = Path(model)
        if not (source / "saved_model.pb").is_file():
            raise TFServeError(f"{source} is not a SavedModel folder (no saved_model.pb)")
        shutil.copytree(source, path, dirs_exist_ok=True)
        return
    import tensorflow as tf

    if hasattr(model, "export") and hasattr(model, "layers"):  # Keras 3
        model.export(str(path), format="tf_saved_model", verbose=False)
        return
    if isinstance(model, tf.Module):
        function = getattr(model, "serve", None)
        if function is None and callable(model):
            function = model.__call__
        signature = getattr(function, "input_signature", None)
        if signature is None:
            raise TFServeError("a tf.Module needs a `serve` or `__call__` tf.function with an input_signature "
                               "to be served")
        tf.saved_model.save(model, str(path), signatures={"serving_default": function})
        return
    raise TFServeError(f"cannot export a {type(model).__name__}: pass a Keras model, a tf.Module with a "
                       "tf.function signature, or a SavedModel folder")


def signature_inputs(path: Path, signature_name: str = "serving_default") -> dict[str, Any]:
    """The signature's input names and dtypes, read from saved_model.pb without loading the model."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((path / "saved_model.pb").read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if signature_name in meta_graph.signature_def:
            return dict(meta_graph.signature_def[signature_name].inputs)
    raise TFServeError(f"the exported model has no {signature_name!r} signature")


def write_warmup(path: Path, name: str, sample: Any) -> int:
    """``assets.extra/tf_serving_warmup_requests``: one PredictRequest built from a sample input.

    The engine (and TF Serving) replays it at load, so the first real request does not
    pay for graph tracing and allocation.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    inputs = signature_inputs(path)
    if isinstance(sample, Mapping):
        values = dict(sample)
    elif len(inputs) == 1:
        values = {next(iter(inputs)): sample}
    else:
        raise TFServeError(f"the model has {len(inputs)} inputs ({', '.join(inputs)}): pass the warmup sample as a "
                           "dict of them")
    unknown = set(values) - set(inputs)
    if unknown:
        raise TFServeError(f"warmup sample has unknown input(s) {sorted(unknown)}; the model takes {sorted(inputs)}")
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=name,
                                                                        signature_name="serving_default"))
    for key, value in values.items():
        dtype = tf.dtypes.as_dtype(inputs[key].dtype)
        request.inputs[key].CopyFrom(tf.make_tensor_proto(np.asarray(value), dtype=dtype))
    record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    target = path / WARMUP_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(target)) as writer:
        writer.write(record.SerializeToString())
    return 1


def _served_versions(description: dict) -> dict[int, dict]:
    return {int(status["version"]): status for status in description["model_version_status"]}


def _kept_available(description: dict) -> set[int]:
    """The AVAILABLE versions the policy keeps: with "latest N", not those the new version is pushing out.

    Right after an export the oldest version may still be AVAILABLE while it unloads;
    a label put on it now would be refused a moment later, or left on an END version.
    """
    versions = _served_versions(description)
    available = {v for v, status in versions.items() if status["state"] == "AVAILABLE"}
    words = str(description.get("version_policy", "")).split()
    if words[:1] == ["latest"]:
        count = int(words[1]) if len(words) > 1 and words[1].isascii() and words[1].isdigit() else 1
        live = sorted((v for v, status in versions.items() if status["state"] != "END"), reverse=True)
        available &= set(live[:count])
    return available


def _wait_available(client: TFServeClient, name: str, version: int, seconds: float,
                    progress: Callable[[str], None]) -> dict:
    deadline = time.monotonic() + seconds
    last_state = None
    while time.monotonic() < deadline:
        description = client.model(name)
        status = _served_versions(description).get(version)
        if status is not None:
            if status["state"] != last_state:
                last_state = status["state"]
                progress(f"version {version}: {last_state}")
            if status["state"] == "AVAILABLE":
                return description
            if status["status"]["error_code"] != "OK":
                raise TFServeError(f"version {version} of {name} failed to load: {status['status']['error_message']}")
            if status["state"] == "END":
                raise TFServeError(f"version {version} of {name} was not kept by the version policy "
                                   f"({description.get('version_policy')})")
        time.sleep(0.05)
    raise TFServeError(f"version {version} of {name} was not AVAILABLE after {seconds:g} s")


def export_model(client: TFServeClient, model: Any, name: str, *, label: str | None = None, warmup: Any = None,
                 wait_seconds: float = 300, progress: Callable[[str], None] | None = None) -> ExportResult:
    """Write the next version of ``name``, serve it, wait for AVAILABLE, then set ``label`` on it.

    A model served for the first time gets the policy "latest 2". Labelling a version
    ``canary`` (any label but ``stable``) on a model with no ``stable`` label yet puts
    ``stable`` on the version that was serving, ready for an A/B split.
    """
    report = progress or (lambda message: log.info("export %s: %s", name, message))
    started = time.perf_counter()
    served = client.find_model(name)
    base = Path(served["base_path"]) if served else Path(client.model_repository_root()) / name
    created = not base.exists()
    make_private_dirs(base)
    version = max(next_version(base), max(_served_versions(served), default=0) + 1 if served else 1)
    report(f"saving version {version} to {base}")
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=base))
    try:
        with _quiet_tensorflow():
            save_saved_model(model, staging)
        if warmup is not None:
            write_warmup(staging, name, warmup)
            report("wrote a warmup request")
        _make_owner_only(staging)
        os.rename(staging, base / str(version))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            # The model folder was made for this export: a failed one leaves nothing behind (an empty
            # folder would be taken for a model with no versions at the next export or load).
            with contextlib.suppress(OSError):
                base.rmdir()
        raise
    report(f"published {base / str(version)}; loading")
    if served is None:
        client.load(name, str(base), version_policy=NEW_MODEL_POLICY, wait_seconds=0)
    elif served.get("version_policy", "").startswith("specific"):
        versions = [int(v) for v in served["version_policy"].split(" ", 1)[1].split(",")] + [version]
        client.load(name, str(base), version_policy={"specific": versions}, replace=True, wait_seconds=0,
                    labels={k: int(v) for k, v in served.get("labels", {}).items()})
    else:
        client.poll(name)
    description = _wait_available(client, name, version, wait_seconds, report)
    labels = {key: int(value) for key, value in description.get("labels", {}).items()}
    available = _kept_available(description)
    stale = {key: value for key, value in labels.items() if value not in available}
    if label:
        # Labels on versions the policy has since unloaded (a notebook run again) would make the engine
        # refuse the whole set: they are dropped, and said so, before the new label is set.
        labels = {key: value for key, value in labels.items() if value in available}
        if label != "stable" and "stable" not in labels:
            previous = [v for v in available if v != version]
            if previous:
                labels["stable"] = max(previous)
        labels[label] = version
        labels = {k: int(v) for k, v in client.set_labels(name, labels, replace=True)["labels"].items()}
    seconds = time.perf_counter() - started
    result = ExportResult(name, version, str(base / str(version)), seconds, client.predict_url(name), labels,
                          stale)
    report(str(result))
    return result
