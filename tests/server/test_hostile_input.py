"""Hostile clients against the real engine: shape claims, bodies before credentials, slow and half-open
connections, decoding that must not stop the event loop, and what a share token's bearer may read.

Each test is bounded: a few requests, each with a timeout, on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import orjson
import pytest
import requests
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.helpers.models import write_tf1_half_plus, write_tf2_half_plus
from tests.helpers.server import ServerProcess, free_port, write_models_config, write_monitoring_config

SECRET = "hostile-input-secret"
OWNER = {"X-TFServe-Engine-Secret": SECRET}
OWNER_METADATA = (("x-tfserve-engine-secret", SECRET),)
BIG_CLIENT = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def write_file_reader(base_path: Path, version: int, data: Path) -> Path:
    """A TF1 model whose y = x + len(read_file(data)): once ``data`` is gone, every predict fails naming it."""
    import tensorflow as tf

    v1 = tf.compat.v1
    export = base_path / str(version)
    with tf.Graph().as_default(), v1.Session() as session:
        x = v1.placeholder(tf.float32, shape=[None], name="x")
        # The file name depends on x (an empty piece of it), so that TensorFlow cannot fold the read away.
        name = tf.strings.join([str(data), tf.strings.substr(tf.strings.as_string(tf.reduce_sum(x)), 0, 0)])
        length = tf.cast(tf.strings.length(tf.io.read_file(name)), tf.float32)
        y = tf.identity(x + length, name="y")
        info = v1.saved_model.utils.build_tensor_info
        builder = v1.saved_model.Builder(str(export))
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
            "serving_default": v1.saved_model.signature_def_utils.build_signature_def(
                {"x": info(x)}, {"y": info(y)}, "tensorflow/serving/predict")})
        builder.save()
    return export


class Engine:
    """The engine under attack, with the owner's and a share token's ways in."""

    def __init__(self, server: ServerProcess, management_port: int, http_layer: str) -> None:
        self.server = server
        self.http_layer = http_layer
        self.api = f"http://127.0.0.1:{management_port}/api"
        server.session.headers.update(OWNER)

    def token(self, model: str, verbs: list[str]) -> str:
        response = requests.post(self.api + "/tokens", json={"model": model, "verbs": verbs}, headers=OWNER,
                                 timeout=30)
        assert response.status_code == 201, response.text
        return response.json()["token"]

    def post(self, path: str, body, headers=None, timeout: float = 60) -> requests.Response:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        return requests.post(self.server.url + path, data=data, headers=OWNER if headers is None else headers,
                             timeout=timeout)

    def get(self, path: str, headers=None) -> requests.Response:
        return requests.get(self.server.url + path, headers=OWNER if headers is None else headers, timeout=30)

    def stub(self, channel: grpc.Channel):
        return prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def reset_peak_rss(self) -> float:
        """Start measuring the engine's peak resident memory afresh (VmHWM); returns the current RSS."""
        Path(f"/proc/{self.server.process.pid}/clear_refs").write_text("5")
        return self.peak_rss_mb()

    def peak_rss_mb(self) -> float:
        """The engine's peak resident memory since the last reset (VmHWM)."""
        for line in Path(f"/proc/{self.server.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    def metrics(self) -> str:
        return self.get("/monitoring/prometheus/metrics").text


LAYERS = {"httptools": ["--rest_http_layer=httptools"], "tornado": ["--rest_http_layer=tornado"],
          "front-processes": ["--rest_http_layer=httptools", "--rest_front_processes=1"]}


@pytest.fixture(scope="module", params=list(LAYERS))
def engine(tmp_path_factory, request):
    """The engine on each REST HTTP layer (--rest_http_layer), and behind a front-door process: the same limits
    must hold on all three."""
    root = tmp_path_factory.mktemp("hostile")
    write_tf1_half_plus(root / "half", 1)
    write_tf2_half_plus(root / "tf2", 1)
    data = root / "private" / "secret-data.txt"
    data.parent.mkdir()
    data.write_text("12345")
    write_file_reader(root / "reader", 1, data)
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "saved_model.pb").write_bytes(b"\x08\x01not a SavedModel")
    names = ("half", "tf2", "reader", "broken")
    config = write_models_config(root / "models.config", {name: root / name for name in names})
    monitoring = write_monitoring_config(root / "monitoring.config")
    port = free_port()
    server = ServerProcess(
        ["--require_auth", f"--management_port={port}", f"--state_db={root / 'state.sqlite'}",
         f"--model_config_file={config}", f"--monitoring_config_file={monitoring}", "--rest_api_timeout_in_ms=60000",
         *LAYERS[request.param]],
        root / "server.log", env={"TFSERVE_ENGINE_SECRET": SECRET})
    try:
        server.session.headers.update(OWNER)
        server.wait_for_port()
        for name in ("half", "tf2", "reader"):
            server.wait_for_versions(name, {1}, timeout=120)
        data.unlink()  # from now on, "reader" fails naming the file it cannot read
        yield Engine(server, port, request.param)
        assert server.process.poll() is None, "the engine died:\n" + server.log_text()[-3000:]
    finally:
        server.stop()


def half_request(values, shape=None, field="float_val") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half"
    tensor = request.inputs["x"]
    tensor.dtype = 1
    for size in (shape if shape is not None else [len(values)]):
        tensor.tensor_shape.dim.add(size=size)
    getattr(tensor, field).extend(values)
    return request


def good_predict(engine: Engine) -> None:
    response = engine.post("/v1/models/half:predict", {"instances": [1.0, 2.0, 5.0]})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [2.5, 3.0, 4.5]}


# -- item 1: gRPC shape claims -----------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "values", "code"), [
    ([2**29], [1.0], grpc.StatusCode.RESOURCE_EXHAUSTED),       # 2 GiB by TensorFlow's padding rule
    ([2**40], [1.0], grpc.StatusCode.RESOURCE_EXHAUSTED),       # numpy's MemoryError, answered UNKNOWN before
    ([2**31, 2**31, 2**31], [], grpc.StatusCode.RESOURCE_EXHAUSTED),  # zeros: no values at all
    ([2**20, 2**10], [], grpc.StatusCode.RESOURCE_EXHAUSTED),   # 4 GiB of zeros
    ([1] * 65, [1.0], grpc.StatusCode.INVALID_ARGUMENT),        # more dimensions than numpy has
    ([0, 2**62, 2**62], [], grpc.StatusCode.INVALID_ARGUMENT),  # empty, but too big for numpy
])
def test_a_shape_claim_is_refused_before_the_array_exists(engine, shape, values, code):
    peak = engine.reset_peak_rss()
    with grpc.insecure_channel(engine.server.grpc_target) as channel:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            engine.stub(channel).Predict(half_request(values, shape), timeout=30, metadata=OWNER_METADATA)
        elapsed = time.monotonic() - started
    assert raised.value.code() == code, raised.value.details()
    assert elapsed < 5
    assert engine.peak_rss_mb() - peak < 200, "the claimed array was allocated"
    good_predict(engine)


def test_refused_claims_are_counted_as_refused_not_ok(engine):
    def count(status: str) -> float:
        total = 0.0
        for line in engine.metrics().splitlines():
            if line.startswith(":tensorflow:serving:request_count{") and 'model_name="half"' in line \
                    and f'status="{status}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    ok, exhausted = count("OK"), count("RESOURCE_EXHAUSTED")
    with grpc.insecure_channel(engine.server.grpc_target) as channel, pytest.raises(grpc.RpcError) as raised:
        engine.stub(channel).Predict(half_request([1.0], [2**40]), timeout=30, metadata=OWNER_METADATA)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert count("RESOURCE_EXHAUSTED") == exhausted + 1
    assert count("OK") == ok


def test_honest_requests_beyond_the_floor_still_decode(engine):
    """8 MiB of floats, sent in full and as a shape padded from one value (under the 64 MiB floor)."""
    values = np.arange(2**21, dtype=np.float32)
    with grpc.insecure_channel(engine.server.grpc_target, options=BIG_CLIENT) as channel:
        stub = engine.stub(channel)
        full = stub.Predict(half_request(values.tolist()), timeout=60, metadata=OWNER_METADATA)
        assert np.array_equal(np.array(full.outputs["y"].float_val, dtype=np.float32), values / 2 + 2)
        padded = stub.Predict(half_request([4.0], [2**21]), timeout=60, metadata=OWNER_METADATA)
        assert len(padded.outputs["y"].float_val) == 2**21 and set(padded.outputs["y"].float_val) == {4.0}


FIELDS = ["float_val", "double_val", "int_val", "int64_val", "string_val", "bool_val", "half_val", "scomplex_val",
          "dcomplex_val", "uint32_val", "uint64_val"]
SIZES = [0, 1, 2, 3, 7, 100, 2**20, 2**31, 2**62, 2**63 - 1]


def random_tensor(rng, tensor) -> None:
    tensor.dtype = rng.choice([1, 1, 1, 2, 3, 7, 9, 10, 19, 8, 14, 20, 0, 99, 23, 17])
    for _ in range(rng.choice([0, 1, 1, 2, 3, 9, 70])):
        tensor.tensor_shape.dim.add(size=rng.choice(SIZES))
    if rng.random() < 0.1:
        tensor.tensor_shape.unknown_rank = True
    roll = rng.random()
    if roll < 0.3:
        tensor.tensor_content = rng.randbytes(rng.choice([0, 1, 3, 4, 8, 12, 4096]))
    elif roll < 0.8:
        field = rng.choice(FIELDS)
        count = rng.choice([1, 2, 3, 5, 1000])
        values = getattr(tensor, field)
        if field == "string_val":
            values.extend(rng.randbytes(rng.randrange(20)) for _ in range(count))
        elif field in ("float_val", "double_val", "scomplex_val", "dcomplex_val"):
            values.extend(rng.choice([0.0, -1.5, 3.4e38, float("nan"), float("inf")]) for _ in range(count))
        elif field == "bool_val":
            values.extend(rng.random() < 0.5 for _ in range(count))
        elif field in ("uint32_val", "uint64_val"):
            values.extend(rng.randrange(2**32 if field == "uint32_val" else 2**64) for _ in range(count))
        else:
            values.extend(rng.randrange(-2**31, 2**31) for _ in range(count))


def test_fuzzed_tensor_protos_get_canonical_codes_never_unknown(engine):
    """800 random TensorProtos (dtypes, shapes, fields, contents) to three signatures: each gets OK or a
    client's code; UNKNOWN (an exception that escaped) and INTERNAL never."""
    import random

    rng = random.Random(1202)
    codes: dict[str, int] = {}
    allowed = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
               grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND}
    targets = [("half", "", ["x"]), ("tf2", "multi", ["a", "b"]), ("tf2", "strings", ["text"])]
    started = time.monotonic()
    with grpc.insecure_channel(engine.server.grpc_target, options=BIG_CLIENT) as channel:
        stub = engine.stub(channel)
        for index in range(800):
            model, signature_name, names = rng.choice(targets)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model
            request.model_spec.signature_name = signature_name
            for name in names + (["extra"] if rng.random() < 0.05 else []):
                if rng.random() < 0.95:
                    random_tensor(rng, request.inputs[name])
            try:
                stub.Predict(request, timeout=30, metadata=OWNER_METADATA)
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
                assert code in allowed, f"#{index} {code}: {error.details()} for {request}"[:3000]
            codes[code.name] = codes.get(code.name, 0) + 1
    print(f"gRPC TensorProto fuzzer: 800 requests in {time.monotonic() - started:.1f} s; codes {codes}")
    good_predict(engine)


# -- item 8: no body is taken before the credentials ---------------------------------------------------


def _raw_request(engine: Engine, head: str, body: bytes = b"", wait: float = 5.0) -> bytes:
    """Send ``head`` (and ``body``), then read what the engine answers within ``wait`` seconds."""
    with socket.create_connection(("127.0.0.1", engine.server.rest_port), timeout=wait) as sock:
        sock.sendall(head.encode() + body)
        received = b""
        deadline = time.monotonic() + wait
        while b"\r\n\r\n" not in received and time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
        return received


@pytest.mark.parametrize(("credentials", "path", "status"), [
    ("", "/v1/models/half:predict", 401),
    ("Authorization: Bearer tfs_nope_nope\r\n", "/v1/models/half:predict", 401),
    ("X-TFServe-Engine-Secret: wrong\r\n", "/v1/models/half:predict", 401),
    ("", "/v1/models", 401),
    ("", "/v1/models/half/versions/1/metadata", 401),
    ("", "/v1/nothing/here", 401),
])
def test_an_unauthenticated_body_is_answered_before_it_is_sent(engine, credentials, path, status):
    """Headers announcing 50 MB, no body: before, the engine waited for (and kept) the body, then said 401."""
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{credentials}"
            "Content-Length: 50000000\r\n\r\n")
    started = time.monotonic()
    answer = _raw_request(engine, head)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    assert b"Connection: close" in answer  # the body is not read: the connection cannot carry on
    assert time.monotonic() - started < 3


def test_a_share_token_for_another_model_or_verb_is_refused_before_the_body(engine):
    token = engine.token("tf2", ["metadata"])
    for path in ("/v1/models/half:predict", "/v1/models/tf2:predict"):
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                "Content-Length: 50000000\r\n\r\n")
        assert _raw_request(engine, head).startswith(b"HTTP/1.1 403 "), path


def test_a_small_refused_body_is_drained_so_the_client_reads_the_answer(engine):
    body = orjson.dumps({"instances": [1.0] * 5000})  # ~25 KB: read, dropped, then answered
    response = requests.post(engine.server.url + "/v1/models/half:predict", data=body, timeout=30)
    assert response.status_code == 401 and set(response.json()) == {"error"}
    for method in ("GET", "PUT", "DELETE"):
        response = requests.request(method, engine.server.url + "/v1/models/half", data=body, timeout=30)
        assert response.status_code == 401 and set(response.json()) == {"error"}, method


def test_an_admitted_body_over_the_limit_is_still_413(engine):
    head = ("POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\nX-TFServe-Engine-Secret: " + SECRET +
            "\r\nContent-Length: 70000000\r\n\r\n")
    with socket.create_connection(("127.0.0.1", engine.server.rest_port), timeout=30) as sock:
        sock.sendall(head.encode())
        chunk = b"0" * (1 << 20)
        for _ in range(67):
            sock.sendall(chunk)
        sock.sendall(b"0" * (70000000 - 67 * len(chunk)))
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    chunked = ("POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\nX-TFServe-Engine-Secret: " + SECRET +
               "\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", engine.server.rest_port), timeout=30) as sock:
        sock.sendall(chunked)
        piece = b"%x\r\n%s\r\n" % (1 << 20, b"0" * (1 << 20))
        for _ in range(66):
            sock.sendall(piece)
        sock.sendall(b"0\r\n\r\n")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 ") and b'{"error":' in answer, answer[:300]


def test_grpc_refuses_bad_credentials_before_taking_the_message(engine):
    """A 256 MiB Predict without credentials: the interceptor answers from the metadata, the message is not
    taken (before: received, parsed on the event loop, then refused)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half"
    tensor = request.inputs["x"]
    tensor.dtype = 1
    tensor.tensor_shape.dim.add(size=2**26)
    tensor.tensor_content = bytes(4 * 2**26)
    token = engine.token("half", ["status"])
    peak = engine.reset_peak_rss()
    with grpc.insecure_channel(engine.server.grpc_target, options=BIG_CLIENT) as channel:
        stub = engine.stub(channel)
        refusals = [((), grpc.StatusCode.UNAUTHENTICATED),
                    ((("authorization", f"Bearer {token}"),), grpc.StatusCode.PERMISSION_DENIED)]
        for metadata, code in refusals:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as raised:
                stub.Predict(request, timeout=60, metadata=metadata)
            assert raised.value.code() == code, raised.value.details()
            elapsed = time.monotonic() - started
            assert elapsed < 10
            print(f"gRPC {code.name} for a 256 MiB message in {elapsed * 1000:.0f} ms")
    grown = engine.peak_rss_mb() - peak
    print(f"engine peak RSS grew {grown:.0f} MB over both refused 256 MiB messages")
    assert grown < 128, "the refused message was taken in"


# -- item 3: decoding does not stop the event loop -------------------------------------------------------


def _healthz_latencies(engine: Engine, stop: threading.Event, out: list[float]) -> None:
    session = requests.Session()
    while not stop.is_set():
        started = time.monotonic()
        try:
            answered = session.get(engine.server.url + "/healthz", timeout=10).status_code == 200
        except requests.RequestException:
            answered = False
        out.append(time.monotonic() - started if answered else float("inf"))
        time.sleep(0.02)


def test_healthz_answers_while_a_huge_hostile_body_is_decoded(engine):
    """40 MB of zeros ending in one string, to a float model: before, a 1.7 GB string array and a
    per-value walk on the event loop (seconds without /healthz); now a worker process says INVALID_ARGUMENT."""
    hostile = orjson.dumps({"instances": [0] * 20_000_000 + ["x"]})
    good_predict(engine)  # warm
    peak = engine.reset_peak_rss()
    latencies: list[float] = []
    stop = threading.Event()
    poller = threading.Thread(target=_healthz_latencies, args=(engine, stop, latencies))
    poller.start()
    try:
        time.sleep(0.2)
        for _ in range(2):
            response = engine.post("/v1/models/half:predict", hostile, timeout=120)
            assert response.status_code == 400, response.text
            assert "instance 20000000" in response.json()["error"] and "string" in response.json()["error"]
            good_predict(engine)
    finally:
        stop.set()
        poller.join(30)
    assert len(latencies) > 10
    grown = engine.peak_rss_mb() - peak
    print(f"/healthz during two 40 MB hostile bodies: {len(latencies)} answers, median "
          f"{sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms; engine peak "
          f"RSS grew {grown:.0f} MB")
    assert max(latencies) < 0.5, f"/healthz waited {max(latencies) * 1000:.0f} ms"
    assert grown < 600, "the body became a huge array in the engine"


def test_large_bodies_decoded_by_the_worker_answer_like_small_ones(engine):
    values = np.linspace(-5, 5, 300_000).astype(np.float32)
    response = engine.post("/v1/models/half:predict", {"instances": values.tolist()})
    assert response.status_code == 200, response.text
    assert np.allclose(response.json()["predictions"], values / 2 + 2)
    texts = [f"word{i}" for i in range(40_000)]
    response = engine.post("/v1/models/tf2:predict", {"signature_name": "strings", "inputs": {"text": texts}})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"]["length"] == [len(t) for t in texts]
    columns = {"a": [[1.0, 2.0]] * 30_000, "b": list(range(30_000))}
    response = engine.post("/v1/models/tf2:predict", {"signature_name": "multi", "inputs": columns})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"]["sum"][:3] == [3.0, 4.0, 5.0]
    bad = engine.post("/v1/models/tf2:predict", {"signature_name": "nope", "instances": [1.0] * 100_000})
    assert bad.status_code == 400 and "nope" in bad.json()["error"]
    broken = engine.post("/v1/models/half:predict", b'{"instances": [' + b"1.0, " * 100_000)
    assert broken.status_code == 400 and "JSON" in broken.json()["error"]


# -- slow and half-open clients --------------------------------------------------------------------------


def test_slow_and_half_open_clients_do_not_hold_up_others(engine):
    sockets: list[socket.socket] = []
    try:
        for index in range(60):
            sock = socket.create_connection(("127.0.0.1", engine.server.rest_port), timeout=5)
            kind = index % 4
            if kind == 0:    # slowloris: headers that never end
                sock.sendall(b"POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\n")
            elif kind == 1:  # a body that stops halfway
                sock.sendall(b"POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\nX-TFServe-Engine-Secret: "
                             + SECRET.encode() + b"\r\nContent-Length: 100000\r\n\r\n{\"instances\": [1.0, ")
            elif kind == 2:  # half-closed: the client will send nothing more
                sock.sendall(b"POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
                sock.shutdown(socket.SHUT_WR)
            else:            # connected, silent
                pass
            sockets.append(sock)
        grpc_sockets = []
        for index in range(10):  # gRPC: a partial HTTP/2 preface, or nothing at all
            sock = socket.create_connection(("127.0.0.1", engine.server.grpc_port), timeout=5)
            if index % 2:
                sock.sendall(b"PRI * HTTP/2.0\r\n")
            grpc_sockets.append(sock)
        sockets.extend(grpc_sockets)
        started = time.monotonic()
        good_predict(engine)
        assert engine.get("/healthz").status_code == 200
        with grpc.insecure_channel(engine.server.grpc_target) as channel:
            answer = engine.stub(channel).Predict(half_request([2.0]), timeout=10, metadata=OWNER_METADATA)
        assert list(answer.outputs["y"].float_val) == [3.0]
        assert time.monotonic() - started < 5
    finally:
        for sock in sockets:
            sock.close()
    good_predict(engine)


def test_a_client_that_disconnects_mid_body_leaves_the_engine_serving(engine):
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", engine.server.rest_port), timeout=5) as sock:
            sock.sendall(b"POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\nX-TFServe-Engine-Secret: "
                         + SECRET.encode() + b"\r\nContent-Length: 1000000\r\n\r\n" + b"[" * 5000)
    good_predict(engine)


# -- item 12: paths, digits ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["\u00b2", "\u0661", "\uff11", "1" * 20, "9223372036854775808"])
def test_a_version_that_is_no_ascii_int64_is_malformed_not_500(engine, version):
    path = f"/v1/models/half/versions/{version}"
    for method, body in (("GET", None), ("POST", {"instances": [1.0]})):
        suffix = "" if method == "GET" else ":predict"
        owner = requests.request(method, engine.server.url + path + suffix, json=body, headers=OWNER, timeout=30)
        assert owner.status_code == 400 and "Malformed request" in owner.json()["error"], owner.text
        anonymous = requests.request(method, engine.server.url + path + suffix, json=body, timeout=30)
        assert anonymous.status_code == 401, anonymous.text


@pytest.mark.parametrize("digit", [b"\xb2", b"\xb3", b"\xb9", b"1\xb2"])
def test_a_latin1_digit_in_the_raw_path_is_malformed_not_500(engine, digit):
    """Tornado reads the request line as latin-1, where superscripts are digits to str.isdigit: before,
    int() failed on them and the engine answered 500, before authenticating anyone. llhttp (the httptools
    layer) refuses a raw byte past ASCII in the request target itself (RFC 3986 allows none), with a 400
    in TF Serving's error format, before any handler runs."""
    for credentials, status in ((b"", b"401"), (b"X-TFServe-Engine-Secret: " + SECRET.encode() + b"\r\n", b"400")):
        if engine.http_layer != "tornado":
            status = b"400"
        for line in (b"GET /v1/models/half/versions/" + digit, b"GET /v1/models/half/versions/" + digit + b"/metadata"):
            with socket.create_connection(("127.0.0.1", engine.server.rest_port), timeout=10) as sock:
                sock.sendall(line + b" HTTP/1.1\r\nHost: x\r\n" + credentials + b"\r\n")
                answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 " + status), answer[:300]
            assert b'{"error":' in answer and b"Content-Type: application/json" in answer, answer[:300]


def test_a_share_token_never_reads_the_engines_paths(engine):
    root = str(Path(engine.server.log_path).parent)
    token = engine.token("reader", ["predict"])
    owner = engine.post("/v1/models/reader:predict", {"instances": [1.0]})
    assert owner.status_code == 404 and "secret-data.txt" in owner.json()["error"]
    assert root in owner.json()["error"]  # the owner sees where
    shared = engine.post("/v1/models/reader:predict", {"instances": [1.0]},
                         headers={"Authorization": f"Bearer {token}"})
    assert shared.status_code == 404, shared.text
    assert "secret-data.txt" in shared.json()["error"] and root not in shared.json()["error"]
    assert "/private/" not in shared.json()["error"]

    status_token = engine.token("broken", ["status"])
    owner_status = engine.get("/v1/models/broken").json()["model_version_status"][0]["status"]["error_message"]
    shared_status = engine.get("/v1/models/broken", headers={"Authorization": f"Bearer {status_token}"}).json()
    message = shared_status["model_version_status"][0]["status"]["error_message"]
    assert message and root not in message, message
    assert root in owner_status or not os.path.isabs(owner_status.split()[-1])

    with grpc.insecure_channel(engine.server.grpc_target) as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "reader"
        request.inputs["x"].CopyFrom(half_request([1.0]).inputs["x"])
        with pytest.raises(grpc.RpcError) as raised:
            engine.stub(channel).Predict(request, timeout=30, metadata=(("authorization", f"Bearer {token}"),))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "secret-data.txt" in raised.value.details() and root not in raised.value.details()


def test_output_filter_orderings_do_not_grow_the_callable_cache(tmp_path):
    """Every ordering and subset of a signature's outputs: before, one TF callable each (n! orderings)."""
    import itertools

    import tensorflow as tf

    from jupyter_tfserve.engine.session_servable import MAX_CALLABLES, SessionServable, load_session_bundle

    v1 = tf.compat.v1
    export = tmp_path / "four" / "1"
    with tf.Graph().as_default(), v1.Session() as session:
        x = v1.placeholder(tf.float32, shape=[None], name="x")
        outputs = {f"o{i}": tf.identity(x * (i + 1), name=f"o{i}") for i in range(5)}
        info = v1.saved_model.utils.build_tensor_info
        builder = v1.saved_model.Builder(str(export))
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
            "serving_default": v1.saved_model.signature_def_utils.build_signature_def(
                {"x": info(x)}, {key: info(value) for key, value in outputs.items()}, "tensorflow/serving/predict")})
        builder.save()
    session, meta_graph = load_session_bundle(export, None)
    servable = SessionServable("four", 1, export, session, meta_graph)
    try:
        signature = servable.signature("serving_default")
        inputs = {"x": np.array([1.0, 2.0], dtype=np.float32)}
        for ordering in itertools.permutations(signature.outputs, 5):
            answer = servable.run(signature, inputs, list(ordering))
            assert list(answer) == list(ordering)
            for key in ordering:
                assert np.array_equal(answer[key], inputs["x"] * (int(key[1]) + 1))
        assert len(servable._callables) == 1 and not servable._subsets  # one callable, whatever the order asked
        for size in range(1, 6):
            for subset in itertools.combinations(signature.outputs, size):
                for ordering in itertools.permutations(subset):
                    assert list(servable.run(signature, inputs, list(ordering))) == list(ordering)
        assert len(servable._callables) == 1 and len(servable._subsets) <= MAX_CALLABLES
    finally:
        servable.close()
