"""Serving throughput and latency, as ratios against baselines measured in the same run.

Usage: .venv/bin/python benchmarks/serving_benchmark.py [--seconds 3] [--quick]
(`./dev.sh bench` installs what it needs: the bench extras and Debian's wrk.)

Builds half_plus_two (TF Serving's, from ../shared when present), an MLP 784-512-512-10 and a small CNN on
32x32x3 in a temporary directory, then measures on this machine:
  - the in-process limit: the signature called directly through the engine's session callable;
  - jupyter-tfserve with batching off and on, over REST (wrk) and gRPC (grpc.aio client process), and the MLP
    over KServe V2 REST with binary tensors (wrk);
  - jupyter-tfserve with batching and two REST front-door processes (--rest_front_processes=2), over REST,
    with the CPU of the engine process alone beside that of all its processes: the engine's CPU per request
    is what bounds its throughput on a machine with cores for more front doors;
  - a hand-written FastAPI endpoint (uvicorn) that calls the model per request;
  - LitServe with its batching on;
  - the HTTP ceiling: a no-op tornado handler;
  - the HTTP floor: a bare ASGI no-op under uvicorn with httptools and uvloop;
  - overload: the CNN behind a small batching queue, hit by more concurrent requests than it may queue,
    with answers counted and timed by status (every one must be 200 or a quick 503).
Prints a table and the target ratios; writes results/serving.json and results/serving.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tests.helpers.server import free_port  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CONCURRENCY = (1, 8, 64)
FRONT_PROCESSES = 2
SHARED_HALF_PLUS_TWO = REPO.parent / "shared" / "testdata" / "tfserving" / "saved_model_half_plus_two_cpu"


@dataclass
class Model:
    name: str
    base_path: Path
    instance: np.ndarray  # one instance, without the batch dimension
    input_name: str = ""


@dataclass
class Result:
    model: str
    server: str
    protocol: str
    concurrency: int
    requests: int
    errors: int
    req_per_s: float
    items_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float | None = None  # every process of the server
    engine_cpu_ms_per_request: float | None = None  # the engine process alone (front doors: the one with models)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- models ----------------------------------------------------------------------------------------


def build_models(root: Path) -> list[Model]:
    import keras

    rng = np.random.default_rng(0)
    models = []
    if SHARED_HALF_PLUS_TWO.is_dir():
        models.append(Model("half_plus_two", SHARED_HALF_PLUS_TWO, np.array([2.0], np.float32)))
    else:
        from jupyter_tfserve.demo import write_demo_model

        models.append(Model("half_plus_two", write_demo_model(root / "half_plus_two"), np.array(2.0, np.float32)))
    keras.utils.set_random_seed(0)
    mlp = keras.Sequential([keras.Input((784,)), keras.layers.Dense(512, activation="relu"),
                            keras.layers.Dense(512, activation="relu"), keras.layers.Dense(10, activation="softmax")])
    mlp.export(str(root / "mlp" / "1"), verbose=False)
    models.append(Model("mlp", root / "mlp", rng.random(784, np.float32).round(3)))
    cnn = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(), keras.layers.Conv2D(64, 3, activation="relu"),
        keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10),
    ])
    cnn.export(str(root / "cnn" / "1"), verbose=False)
    models.append(Model("cnn", root / "cnn", rng.random((32, 32, 3), np.float32).round(3)))
    return models


# -- in-process limit ------------------------------------------------------------------------------


def in_process_limit(model: Model, seconds_per_size: float) -> dict:
    from jupyter_tfserve.engine.loader import LoaderOptions, default_session_options, load_servable

    version = max(int(p.name) for p in model.base_path.iterdir() if p.name.isdigit())
    path = next(p for p in model.base_path.iterdir() if p.name.isdigit() and int(p.name) == version)
    servable = load_servable(model.name, version, path, LoaderOptions(session=default_session_options()))
    signature = servable.signature("serving_default")
    (input_name,) = signature.inputs
    model.input_name = input_name
    outputs = list(signature.outputs)
    best = 0.0
    by_size = {}
    cpu_ms_per_item = float("inf")  # at the batch size where an item costs least CPU (all threads' time)
    for size in (1, 2, 4, 8, 16, 32, 64, 128):
        batch = {input_name: np.repeat(model.instance[None], size, axis=0)}
        servable.run(signature, batch, outputs)
        calls, started, cpu_started = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - started < seconds_per_size and calls < 100_000:
            servable.run(signature, batch, outputs)
            calls += 1
        rate = calls * size / (time.perf_counter() - started)
        cpu_ms_per_item = min(cpu_ms_per_item, (time.process_time() - cpu_started) * 1000 / (calls * size))
        by_size[size] = rate
        best = max(best, rate)
    one = {input_name: model.instance[None]}
    latencies = []
    for _ in range(300):
        started = time.perf_counter()
        servable.run(signature, one, outputs)
        latencies.append(time.perf_counter() - started)
    servable.close()
    return {"best_items_per_s": best, "items_per_s_by_batch": by_size, "cpu_ms_per_item": cpu_ms_per_item,
            "p50_ms_batch1": statistics.median(latencies) * 1000}


# -- servers ---------------------------------------------------------------------------------------


class Server:
    def __init__(self, name: str, command: list[str], ready_url: str, env: dict | None = None,
                 ready_check=None) -> None:
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO,
                                        start_new_session=True,
                                        env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise SystemExit(f"{name} exited; log: {self.log.name}")
            try:
                response = requests.get(ready_url, timeout=1)
                if ready_check is None or ready_check(response):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"{name} did not become ready; log: {self.log.name}")

    def cpu_seconds(self) -> float:
        """The server process and the processes it started (front doors, decoding or LitServe workers)."""
        return process_cpu_seconds(self.process.pid) + sum(map(process_cpu_seconds, children(self.process.pid)))

    def engine_cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        """Stop the server and everything it started: LitServe's worker processes outlive their parent, and
        left running they took a core from every later measurement."""
        stop_process_group(self.process)


def process_cpu_seconds(pid: int) -> float:
    """User and system CPU of a process so far, from /proc (all its threads); 0 for one that is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL after 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# One batch at a time: TensorFlow already spreads a batch over both cores (intra-op threads), and two
# batches at once on 2 cores ran the CNN 10-15% slower (smaller batches, threads fighting for cores).
BATCHING = ("max_batch_size { value: 64 } batch_timeout_micros { value: 0 } "
            "max_enqueued_batches { value: 64 } num_batch_threads { value: 1 }")
# Room for 4 batches of 16 CNN images: far fewer than the overload phase's concurrent requests.
OVERLOAD_BATCHING = ("max_batch_size { value: 16 } batch_timeout_micros { value: 0 } "
                     "max_enqueued_batches { value: 4 } num_batch_threads { value: 1 }")
OVERLOAD_CONCURRENCY = 128


def start_engine(models: list[Model], directory: Path, batching: bool,
                 batching_parameters: str = BATCHING, front_processes: int = 0) -> tuple[Server, int, int]:
    config = directory / "models.config"
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{m.name}" base_path: "{m.base_path}" }}\n' for m in models) + "}\n")
    params = directory / "batching.config"
    params.write_text(batching_parameters)
    rest, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "jupyter_tfserve", "serve", f"--rest_api_port={rest}", f"--port={grpc_port}",
               f"--model_config_file={config}", "--log_level=WARNING"]
    if batching:
        command += ["--enable_batching", f"--batching_parameters_file={params}"]
    if front_processes:
        command.append(f"--rest_front_processes={front_processes}")

    def all_available(response) -> bool:
        states = [s["state"] for m in response.json()["models"] for s in m["model_version_status"]]
        return len(states) == len(models) and set(states) == {"AVAILABLE"}

    name = "jupyter-tfserve" + (" batching" if batching else "") + (" front doors" if front_processes else "")
    return Server(name, command, f"http://127.0.0.1:{rest}/v1/models", ready_check=all_available), rest, grpc_port


# -- load ------------------------------------------------------------------------------------------


def rest_body(model: Model) -> bytes:
    return json.dumps({"instances": [model.instance.tolist()]}).encode()


def v2_binary_body(model: Model) -> tuple[bytes, dict[str, str]]:
    """A KServe V2 infer body with the binary tensor extension, as tritonclient sends it, and its header."""
    data = np.ascontiguousarray(model.instance[None], dtype=np.float32)
    header = json.dumps({"inputs": [{"name": model.input_name, "shape": list(data.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": data.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + data.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def run_wrk(url: str, body_file: Path, concurrency: int, seconds: float, headers: dict[str, str] | None = None) -> dict:
    threads = min(2, concurrency)
    header_args = [arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")]
    command = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
               *header_args, "-s", str(HERE / "post.lua"), url]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60,
                              env={**os.environ, "WRK_BODY_FILE": str(body_file)})
    line = next((line for line in finished.stdout.splitlines() if line.startswith("{")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {finished.stdout[-1000:]} {finished.stderr[-1000:]}")
    data = json.loads(line)
    return {"requests": data["requests"], "errors": data["non2xx"] + data["socket_errors"],
            "seconds": data["duration_us"] / 1e6, "p50_ms": data["p50_us"] / 1000, "p99_ms": data["p99_us"] / 1000}


def run_load_script(script: str, target: str, body_file: Path, concurrency: int, seconds: float) -> dict:
    """One of our own load generators, in its own process; it prints one JSON line of results."""
    output = subprocess.run([sys.executable, str(HERE / script), target, str(body_file), str(concurrency),
                             str(seconds)], capture_output=True, text=True, timeout=seconds + 120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    line = next((line for line in output.stdout.splitlines() if line.startswith("{")), None)
    if line is None:
        raise SystemExit(f"{script} failed: {output.stderr[-2000:]}")
    return json.loads(line)


def overload(model: Model, directory: Path, seconds: float) -> dict:
    """More concurrent requests than the batching queue may hold: each must get 200 or a quick 503."""
    server, rest, _ = start_engine([model], directory, True, OVERLOAD_BATCHING)
    try:
        url = f"http://127.0.0.1:{rest}/v1/models/{model.name}:predict"
        run_wrk(url, directory / f"{model.name}.json", 8, 1)
        progress(f"overload: {model.name}, {OVERLOAD_CONCURRENCY} concurrent requests, queue of 4 x 16")
        report = run_load_script("http_load.py", url, directory / f"{model.name}.json", OVERLOAD_CONCURRENCY,
                                 seconds)
    finally:
        server.stop()
    by_status = report["by_status"]
    return {"model": model.name, "concurrency": OVERLOAD_CONCURRENCY, "seconds": report["seconds"],
            "batching": OVERLOAD_BATCHING, "by_status": by_status,
            "other_answers": sum(v["count"] for k, v in by_status.items() if k not in ("200", "503"))}


def measure(load: dict, model: str, server: str, protocol: str, concurrency: int,
            cpu: float | None = None, engine_cpu: float | None = None) -> Result:
    rate = load["requests"] / load["seconds"]

    def per_request(seconds: float | None) -> float | None:
        return seconds * 1000 / load["requests"] if seconds is not None and load["requests"] else None

    return Result(model, server, protocol, concurrency, load["requests"], load["errors"], rate, rate,
                  load["p50_ms"], load["p99_ms"], per_request(cpu), per_request(engine_cpu))


def rest_runs(server: Server, url: str, body: Path, model: str, seconds: float, *, warm_up: bool = True,
              cpu: bool = False, protocol: str = "REST", headers: dict[str, str] | None = None) -> list[Result]:
    """One model over REST at every concurrency (after a short warm-up run)."""
    if warm_up:
        run_wrk(url, body, 8, 1, headers)
    results = []
    for concurrency in CONCURRENCY:
        progress(f"{server.name} {protocol} {model} c{concurrency}")
        before = (server.cpu_seconds(), server.engine_cpu_seconds()) if cpu else None
        load = run_wrk(url, body, concurrency, seconds, headers)
        used = (server.cpu_seconds() - before[0], server.engine_cpu_seconds() - before[1]) if before else (None, None)
        results.append(measure(load, model, server.name, protocol, concurrency, *used))
    return results


# -- report ----------------------------------------------------------------------------------------


def find(results: list[Result], model: str, server: str, protocol: str, concurrency: int) -> Result | None:
    for result in results:
        if (result.model, result.server, result.protocol, result.concurrency) == (model, server, protocol,
                                                                                   concurrency):
            return result
    return None


def targets(results: list[Result], limits: dict, flood: dict | None = None) -> list[tuple[str, float, str, bool]]:
    rows = []

    def ratio(label, value, goal, ok):
        rows.append((label, value, goal, ok))

    ours = "jupyter-tfserve batching"
    cnn = find(results, "cnn", ours, "REST", 64)
    if cnn:
        value = cnn.items_per_s / limits["cnn"]["best_items_per_s"]
        ratio("CNN REST c64 batching / in-process limit", value, ">= 0.8", value >= 0.8)
        if cnn.cpu_ms_per_request is not None:
            value = cnn.cpu_ms_per_request / limits["cnn"]["cpu_ms_per_item"]
            ratio("CNN REST c64 batching server CPU / request / in-process CPU / item", value, "<= 1.25",
                  value <= 1.25)
        for other in ("FastAPI", "LitServe"):
            base = find(results, "cnn", other, "REST", 64)
            if base and base.items_per_s:
                value = cnn.items_per_s / base.items_per_s
                ratio(f"CNN REST c64 batching / {other}", value, ">= 4", value >= 4)
    mlp = find(results, "mlp", ours, "REST", 64)
    if mlp:
        fastapi = find(results, "mlp", "FastAPI", "REST", 64)
        if fastapi and fastapi.items_per_s:
            value = mlp.req_per_s / fastapi.req_per_s
            ratio("MLP REST c64 batching / FastAPI", value, ">= 4", value >= 4)
        ceiling = find(results, "mlp", "tornado no-op", "REST", 64)
        if ceiling:
            value = mlp.req_per_s / ceiling.req_per_s
            ratio("MLP REST c64 batching / no-op tornado", value, ">= 1.0", value >= 1.0)
        floor = find(results, "mlp", "ASGI no-op (uvicorn)", "REST", 64)
        if floor:
            value = mlp.req_per_s / floor.req_per_s
            ratio("MLP REST c64 batching / no-op ASGI under uvicorn+httptools+uvloop", value, ">= 0.3",
                  value >= 0.3)
        value = mlp.p99_ms / mlp.p50_ms
        ratio("MLP REST c64 batching p99 / p50", value, "<= 3", value <= 3)
        if mlp.cpu_ms_per_request is not None:
            value = mlp.cpu_ms_per_request / limits["mlp"]["cpu_ms_per_item"]
            ratio("MLP REST c64 batching server CPU / request / in-process CPU / item", value, "<= 10",
                  value <= 10)
    grpc_mlp = find(results, "mlp", ours, "gRPC", 64)
    if grpc_mlp and mlp:
        value = grpc_mlp.req_per_s / mlp.req_per_s
        ratio("MLP gRPC c64 / REST c64 (batching)", value, ">= 1", value >= 1)
        value = grpc_mlp.p99_ms / grpc_mlp.p50_ms
        ratio("MLP gRPC c64 batching p99 / p50", value, "<= 3", value <= 3)
    for protocol, goal in (("REST", 0.4), ("gRPC", 0.3)):
        one = find(results, "mlp", "jupyter-tfserve", protocol, 1)
        if one:
            value = one.p50_ms - limits["mlp"]["p50_ms_batch1"]
            ratio(f"MLP {protocol} c1 p50 - in-process p50 (ms)", value, f"<= {goal}", value <= goal)
    errors = sum(r.errors for r in results if r.server.startswith("jupyter-tfserve"))
    ratio("failed requests to jupyter-tfserve", errors, "== 0", errors == 0)
    if flood is not None:
        served, refused = flood["by_status"].get("200"), flood["by_status"].get("503")
        ratio("overload: answers other than 200 or 503", flood["other_answers"], "== 0", flood["other_answers"] == 0)
        ratio("overload: requests refused with 503", refused["count"] if refused else 0, "> 0", bool(refused))
        if served and refused:
            value = refused["p99_ms"] / served["p50_ms"]
            ratio("overload: 503 p99 / 200 p50 (refusals come back before answers)", value, "< 1", value < 1)
    return rows


def front_door_projection(results: list[Result]) -> list[str]:
    """What front doors give here and what they would give with cores to spare.

    With enough cores for the front doors, the engine process is the one that cannot be copied:
    its CPU per request (the request path, batching, the model's run) bounds the request rate at
    about 1000 / engine ms per request, less what the model's own threads need.
    """
    lines = []
    for model in ("half_plus_two", "mlp", "cnn"):
        alone = find(results, model, "jupyter-tfserve batching", "REST", 64)
        fronted = find(results, model, "jupyter-tfserve batching front doors", "REST", 64)
        if not alone or not fronted or not fronted.engine_cpu_ms_per_request or not alone.engine_cpu_ms_per_request:
            continue
        gain = alone.engine_cpu_ms_per_request / fronted.engine_cpu_ms_per_request
        lines.append(
            f"front doors, {model} REST c64: {fronted.req_per_s:.0f} req/s here against {alone.req_per_s:.0f} "
            f"with one loop ({fronted.req_per_s / alone.req_per_s:.2f}x on {os.cpu_count()} cores); engine CPU "
            f"{fronted.engine_cpu_ms_per_request:.3f} ms/request against {alone.engine_cpu_ms_per_request:.3f}: "
            f"with cores for the front doors, up to {1000 / fronted.engine_cpu_ms_per_request:.0f} req/s against "
            f"{1000 / alone.engine_cpu_ms_per_request:.0f} ({gain:.2f}x)")
    return lines


def plot(results: list[Result], path: Path, limits: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r.model for r in results})
    figure, axes = plt.subplots(2, len(models), figsize=(5 * len(models), 8), squeeze=False)
    for column, model in enumerate(models):
        series = sorted({(r.server, r.protocol) for r in results if r.model == model})
        for server, protocol in series:
            points = sorted((r.concurrency, r.items_per_s, r.p99_ms) for r in results
                            if (r.model, r.server, r.protocol) == (model, server, protocol))
            xs = [p[0] for p in points]
            axes[0][column].plot(xs, [p[1] for p in points], marker="o", label=f"{server} {protocol}")
            axes[1][column].plot(xs, [p[2] for p in points], marker="o", label=f"{server} {protocol}")
        for row, label in ((0, "items/s"), (1, "p99 latency (ms)")):
            axes[row][column].set_xscale("log", base=2)
            axes[row][column].set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
            axes[row][column].set_ylabel(label)
            axes[row][column].set_xlabel("concurrency")
            axes[row][column].set_title(f"{model}: {label}")
            axes[row][column].grid(alpha=0.3)
        if model in limits:
            axes[0][column].set_title(f"{model}: items/s (in-process limit {limits[model]['best_items_per_s']:,.0f})")
        axes[1][column].set_yscale("log")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each load run")
    parser.add_argument("--quick", action="store_true", help="a smoke run: half_plus_two only, 1 s runs")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: run ./dev.sh bench, or apt-get install wrk")
    seconds = 1.0 if args.quick else args.seconds
    started = time.monotonic()
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tfserve-bench-") as tmp:
        root = Path(tmp)
        progress("building models")
        models = build_models(root)
        if args.quick:
            models = models[:1]
        limits = {}
        for model in models:
            progress(f"in-process limit of {model.name}")
            limits[model.name] = in_process_limit(model, 0.1 if args.quick else 0.4)
        results: list[Result] = []
        for model in models:
            (root / f"{model.name}.json").write_bytes(rest_body(model))
            from tensorflow_serving.apis import predict_pb2

            from jupyter_tfserve.engine.codecs.tensor_proto import numpy_to_tensor_proto

            request = predict_pb2.PredictRequest()
            request.model_spec.name = model.name
            request.inputs[model.input_name].CopyFrom(numpy_to_tensor_proto(model.instance[None]))
            (root / f"{model.name}.grpc").write_bytes(request.SerializeToString())
        for batching in (False, True):
            server, rest, grpc_port = start_engine(models, root, batching)
            try:
                for model in models:
                    url = f"http://127.0.0.1:{rest}/v1/models/{model.name}:predict"
                    results += rest_runs(server, url, root / f"{model.name}.json", model.name, seconds, cpu=True)
                    if model.name == "mlp":  # KServe V2 with binary tensors, beside TF Serving's JSON
                        v2_body, v2_headers = v2_binary_body(model)
                        (root / f"{model.name}.v2").write_bytes(v2_body)
                        results += rest_runs(server, f"http://127.0.0.1:{rest}/v2/models/{model.name}/infer",
                                             root / f"{model.name}.v2", model.name, seconds, cpu=True,
                                             protocol="V2", headers=v2_headers)
                    for concurrency in CONCURRENCY:
                        progress(f"{server.name} gRPC {model.name} c{concurrency}")
                        before = server.cpu_seconds()
                        load = run_load_script("grpc_load.py", f"127.0.0.1:{grpc_port}",
                                               root / f"{model.name}.grpc", concurrency, seconds)
                        results.append(measure(load, model.name, server.name, "gRPC", concurrency,
                                               server.cpu_seconds() - before))
            finally:
                server.stop()
        server, rest, _ = start_engine(models, root, True, front_processes=FRONT_PROCESSES)
        try:
            for model in models:
                url = f"http://127.0.0.1:{rest}/v1/models/{model.name}:predict"
                results += rest_runs(server, url, root / f"{model.name}.json", model.name, seconds, cpu=True)
        finally:
            server.stop()
        port = free_port()
        env = {"MODELS": ",".join(f"{m.name}={m.base_path}" for m in models), "TF_CPP_MIN_LOG_LEVEL": "2"}
        fastapi = Server("FastAPI", [sys.executable, "-m", "uvicorn", "benchmarks.baselines.fastapi_app:app",
                                     "--port", str(port), "--log-level", "warning"],
                         f"http://127.0.0.1:{port}/docs", env=env)
        try:
            for model in models:
                url = f"http://127.0.0.1:{port}/v1/models/{model.name}:predict"
                results += rest_runs(fastapi, url, root / f"{model.name}.json", model.name, seconds)
        finally:
            fastapi.stop()
        for model in models:
            port = free_port()
            litserve = Server("LitServe", [sys.executable, str(HERE / "baselines" / "litserve_app.py"),
                                           str(model.base_path), str(port), "64"],
                              f"http://127.0.0.1:{port}/health", env={"TF_CPP_MIN_LOG_LEVEL": "2"},
                              ready_check=lambda r: r.status_code == 200)
            try:
                url = f"http://127.0.0.1:{port}/predict"
                results += rest_runs(litserve, url, root / f"{model.name}.json", model.name, seconds)
            finally:
                litserve.stop()
        cnn = next((m for m in models if m.name == "cnn"), None)
        flood = overload(cnn, root, seconds) if cnn is not None else None
        for name, script in (("tornado no-op", "noop_tornado.py"), ("ASGI no-op (uvicorn)", "noop_asgi.py")):
            port = free_port()
            baseline = Server(name, [sys.executable, str(HERE / "baselines" / script), str(port)],
                              f"http://127.0.0.1:{port}/", ready_check=lambda r: True)
            try:
                for model in models:
                    url = f"http://127.0.0.1:{port}/v1/models/{model.name}:predict"
                    results += rest_runs(baseline, url, root / f"{model.name}.json", model.name, seconds,
                                         warm_up=False, cpu=True)
            finally:
                baseline.stop()
    print()
    print(f"{'model':14} {'server':26} {'proto':5} {'conc':>4} {'req/s':>9} {'items/s':>9} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'errors':>6} {'cpu ms/req':>10} {'engine cpu':>10}")
    for r in results:
        cpu = f"{r.cpu_ms_per_request:.3f}" if r.cpu_ms_per_request is not None else "-"
        engine_cpu = f"{r.engine_cpu_ms_per_request:.3f}" if r.engine_cpu_ms_per_request is not None else "-"
        print(f"{r.model:14} {r.server:26} {r.protocol:5} {r.concurrency:>4} {r.req_per_s:>9.0f} "
              f"{r.items_per_s:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>6} {cpu:>10} {engine_cpu:>10}")
    print()
    for line in front_door_projection(results):
        print(line)
    print()
    for name, limit in limits.items():
        print(f"in-process limit {name}: best {limit['best_items_per_s']:.0f} items/s "
              f"({limit['cpu_ms_per_item']:.4f} ms CPU per item at best), "
              f"p50 at batch 1 {limit['p50_ms_batch1']:.3f} ms")
    if flood is not None:
        print()
        print(f"overload ({flood['model']}, {flood['concurrency']} concurrent, {flood['batching']}):")
        for status, stats in flood["by_status"].items():
            print(f"  {status}: {stats['count']} answers ({stats['count'] / flood['seconds']:.0f}/s), "
                  f"p50 {stats['p50_ms']:.1f} ms, p99 {stats['p99_ms']:.1f} ms")
    print()
    rows = targets(results, limits, flood)
    for label, value, goal, ok in rows:
        print(f"{'MET    ' if ok else 'NOT MET'} {label}: {value:.3f} (target {goal})")
    (RESULTS / "serving.json").write_text(json.dumps({
        "machine": {"cpus": os.cpu_count()}, "seconds_per_run": seconds, "in_process_limits": limits,
        "results": [asdict(r) for r in results], "overload": flood, "front_doors": front_door_projection(results),
        "targets": [{"label": label, "value": value, "target": goal, "met": ok} for label, value, goal, ok in rows],
    }, indent=1))
    plot(results, RESULTS / "serving.png", limits)
    progress(f"wrote {RESULTS / 'serving.json'} and {RESULTS / 'serving.png'} "
             f"({time.monotonic() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
