"""How the engine's resident memory moves when a model is loaded and unloaded over and over.

Usage: .venv/bin/python benchmarks/reload_memory.py [--cycles 50] [--warmup 5] [--kind module|keras]
       [--predicts 5] [--env NAME=VALUE ...]

Exports a small CNN once (``module``: a ~200k-parameter ``tf.Module`` saved with
``tf.saved_model.save``, served through a TF1 session as TF Serving does; ``keras``: a Keras 3
model of the same size exported with ``model.export``), starts ``jupyter tfserve serve`` with
no models, and then, per cycle, sends gRPC ``ModelService.HandleReloadConfigRequest`` with a
config naming the model (the call returns once it is AVAILABLE), a few Predicts, and a config
without it (returns once it is unloaded). After each cycle it reads the engine's VmRSS from
/proc/<pid>/status and prints the curve, and the growth after the warm-up cycles.

TF Serving's users see its RSS climb this way (tensorflow/serving#1572, #1664); the test
tests/server/test_reload_memory.py runs the same measurement with a bound on the growth.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.helpers.server import free_port  # noqa: E402

log = logging.getLogger("reload_memory")

IMAGE_SHAPE = (32, 32, 3)


def write_cnn(base_path: Path, version: int = 1, kind: str = "module") -> Path:
    """A ~200k-parameter CNN as ``base_path/version``: four 3x3 convolutions, global pooling, two dense layers."""
    import tensorflow as tf

    export = base_path / str(version)
    if kind == "keras":
        _keras_cnn().export(str(export), verbose=False)
        return export
    if kind == "keras-module":

        class Serving(tf.Module):
            def __init__(self, model) -> None:
                super().__init__()
                self.model = model

            @tf.function(input_signature=[tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32, name="images")])
            def serve(self, images):
                return {"scores": self.model(images)}

        serving = Serving(_keras_cnn())
        tf.saved_model.save(serving, str(export), signatures={"serving_default": serving.serve})
        return export

    class Cnn(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            rng = np.random.default_rng(0)
            shapes = [(3, 3, 3, 32), (3, 3, 32, 64), (3, 3, 64, 128), (3, 3, 128, 64)]
            self.kernels = [tf.Variable(rng.normal(0, 0.05, s).astype(np.float32)) for s in shapes]
            self.dense1 = tf.Variable(rng.normal(0, 0.05, (64, 256)).astype(np.float32))
            self.dense2 = tf.Variable(rng.normal(0, 0.05, (256, 10)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32, name="images")])
        def serve(self, images):
            x = images
            for kernel in self.kernels:
                x = tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME"))
            x = tf.reduce_mean(x, axis=[1, 2])
            x = tf.nn.relu(x @ self.dense1)
            return {"scores": tf.nn.softmax(x @ self.dense2)}

    module = Cnn()
    tf.saved_model.save(module, str(export), signatures={"serving_default": module.serve})
    return export


def _keras_cnn():
    """The same CNN in Keras 3 (with biases)."""
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input(IMAGE_SHAPE),
        keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
        keras.layers.Conv2D(64, 3, activation="relu", padding="same"),
        keras.layers.Conv2D(128, 3, activation="relu", padding="same"),
        keras.layers.Conv2D(64, 3, activation="relu", padding="same"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])


def parameter_count(kind: str = "module") -> int:
    """The CNN's parameters (what "a ~200k-parameter model" means here)."""
    if kind != "module":
        return 3 * 3 * 3 * 32 + 32 + 3 * 3 * 32 * 64 + 64 + 3 * 3 * 64 * 128 + 128 + 3 * 3 * 128 * 64 + 64 \
            + 64 * 256 + 256 + 256 * 10 + 10
    return 3 * 3 * 3 * 32 + 3 * 3 * 32 * 64 + 3 * 3 * 64 * 128 + 3 * 3 * 128 * 64 + 64 * 256 + 256 * 10


def rss_mb(pid: int) -> float:
    """VmRSS of a process, in MB (what the kernel counts against its memory limit)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _config(name: str, base_path: Path | None):
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.SetInParent()
    if base_path is not None:
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = str(base_path)
        entry.model_platform = "tensorflow"
    return config


@dataclass
class Curve:
    """RSS after start, and after each load/unload cycle (MB)."""

    started_mb: float
    cycles_mb: list[float] = field(default_factory=list)
    warmup: int = 5
    cycle_seconds: list[float] = field(default_factory=list)

    @property
    def baseline_mb(self) -> float:
        """RSS after the warm-up cycles: TF's one-time caches (kernels, thread pools) are in by then."""
        return self.cycles_mb[self.warmup - 1]

    @property
    def growth(self) -> float:
        """Growth of the last cycle over the baseline, as a fraction."""
        return self.cycles_mb[-1] / self.baseline_mb - 1

    def summary(self) -> str:
        return (f"RSS {self.started_mb:.0f} MB at start, {self.baseline_mb:.0f} MB after {self.warmup} warm-up "
                f"cycles, {self.cycles_mb[-1]:.0f} MB after {len(self.cycles_mb)} cycles "
                f"({self.growth:+.1%} over the warm-up; peak {max(self.cycles_mb):.0f} MB)")


def measure(base_path: Path, log_path: Path, *, cycles: int = 50, warmup: int = 5, predicts: int = 5,
            env: dict[str, str] | None = None, name: str = "cnn", on_cycle=None) -> Curve:
    """Start an engine with no models and swap ``base_path`` in and out ``cycles`` times over gRPC."""
    import grpc
    from tensorflow_serving.apis import (
        model_management_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    from jupyter_tfserve.engine.codecs.tensor_proto import numpy_to_tensor_proto

    grpc_port, rest_port = free_port(), free_port()
    command = [sys.executable, "-m", "jupyter_tfserve", "serve", f"--port={grpc_port}",
               f"--rest_api_port={rest_port}", "--file_system_poll_wait_seconds=1"]
    with open(log_path, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=REPO,
                                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=120)
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        prediction = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        images = np.random.default_rng(1).random((4, *IMAGE_SHAPE), dtype=np.float32)
        request.inputs["images" if "images" in _input_names(base_path) else _input_names(base_path)[0]].CopyFrom(
            numpy_to_tensor_proto(images))
        with_model, without = _config(name, base_path), _config(name, None)
        curve = Curve(started_mb=rss_mb(process.pid), warmup=warmup)
        for cycle in range(cycles):
            started = time.perf_counter()
            for config in (with_model, without):
                response = models.HandleReloadConfigRequest(
                    model_management_pb2.ReloadConfigRequest(config=config), timeout=120)
                if response.status.error_code:
                    raise RuntimeError(f"reload failed in cycle {cycle}: {response.status.error_message}")
                if config is with_model:
                    for _ in range(predicts):
                        prediction.Predict(request, timeout=30)
            curve.cycle_seconds.append(time.perf_counter() - started)
            curve.cycles_mb.append(rss_mb(process.pid))
            if on_cycle is not None:
                on_cycle(cycle, curve)
        return curve
    finally:
        channel.close()
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _input_names(base_path: Path) -> list[str]:
    """The serving_default input aliases of the export (Keras names its input after the layer)."""
    from tensorflow.core.protobuf import saved_model_pb2

    version = sorted(p for p in base_path.iterdir() if p.name.isdigit())[0]
    saved = saved_model_pb2.SavedModel.FromString((version / "saved_model.pb").read_bytes())
    return sorted(saved.meta_graphs[0].signature_def["serving_default"].inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--predicts", type=int, default=5, help="Predict calls after each load")
    parser.add_argument("--kind", choices=("module", "keras", "keras-module"), default="module")
    parser.add_argument("--base_path", type=Path, help="serve this model instead of exporting the CNN")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the engine's environment")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/reload_memory"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args.workdir.mkdir(parents=True, exist_ok=True)
    base_path = args.base_path
    if base_path is None:
        base_path = args.workdir / f"cnn-{args.kind}"
        if not (base_path / "1").is_dir():
            write_cnn(base_path, 1, args.kind)
        log.info("model: %s CNN, %d parameters, at %s", args.kind, parameter_count(args.kind), base_path)
    env = dict(item.split("=", 1) for item in args.env)

    def report(cycle: int, curve: Curve) -> None:
        log.info("cycle %3d: RSS %7.1f MB (%.2f s)", cycle + 1, curve.cycles_mb[-1], curve.cycle_seconds[-1])

    curve = measure(base_path, args.workdir / "engine.log", cycles=args.cycles, warmup=args.warmup,
                    predicts=args.predicts, env=env, on_cycle=report)
    log.info("%s", curve.summary())


if __name__ == "__main__":
    main()
