"""A fuzzer over the REST API: thousands of mutated and hostile bodies, paths, methods and credentials.

Whatever a client sends, the engine answers in TF Serving's format (``{"error": "..."}`` with the
status of the canonical code), never with a 5xx for the client's own mistake, never crashes, and the
well-formed requests interleaved with the hostile ones still get exactly the right answer.

Deterministic (a fixed seed), bounded in count (``FUZZ_CASES``) and in time (``FUZZ_SECONDS``), on
127.0.0.1 only. The summary (requests sent, statuses seen, time) is printed: run with ``-s`` to see it.
"""

from __future__ import annotations

import base64
import collections
import copy
import json
import random
import socket
import time

import numpy as np
import orjson
import pytest
import requests

from tests.helpers.models import keras_reference_predict, write_keras_export, write_tf1_half_plus, write_tf2_half_plus
from tests.helpers.server import ServerProcess, free_port, write_models_config, write_monitoring_config

SECRET = "fuzz-secret"
FUZZ_CASES = 10000
FUZZ_SECONDS = 150
MAX_BODY = 2 * 1024 * 1024
SEED = 20261202

# Statuses the canonical codes map to; a client's mistake gets one of the 4xx ones.
CLIENT_STATUSES = {400, 401, 403, 404, 405, 409, 413, 429}

SEEDS: list[tuple[str, str, object]] = [
    ("half", "predict", {"instances": [1.0, 2.0]}),
    ("half", "predict", {"inputs": [[1.0], [2.0]]}),
    ("half", "predict", {"inputs": {"x": [1.0]}}),
    ("half", "predict", {"instances": [{"x": [1.0]}, {"x": [2.0]}]}),
    ("half", "predict", {"signature_name": "serving_default", "instances": [[3.0]]}),
    ("half", "classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}, {"x": [2.0]}]}),
    ("half", "regress", {"signature_name": "regress_x_to_y", "context": {"x": 1.0}, "examples": [{}, {"x": 3.0}]}),
    ("tf2", "predict", {"instances": [1.0, -2.5]}),
    ("tf2", "predict", {"signature_name": "multi", "inputs": {"a": [[1.0, 2.0]], "b": [3]}}),
    ("tf2", "predict", {"signature_name": "multi", "instances": [{"a": [1.0, 2.0], "b": 3}]}),
    ("tf2", "predict", {"signature_name": "strings", "instances": ["ab", {"b64": "YWI="}]}),
    ("tf2", "predict", {"signature_name": "strings", "inputs": {"text": ["x", "yz"]}}),
    ("keras", "predict", {"instances": [[1.0, 2.0, 3.0, 4.0]]}),
    ("keras", "predict", {"inputs": [[0.5, 0.5, 0.5, 0.5], [1, 2, 3, 4]]}),
]

HOSTILE_VALUES: list[object] = [
    None, True, False, 0, -0.0, 1, -1, 0.5, 1e308, -1e308, 3.4e38, 3.5e38, 2**31, 2**53 + 1, 2**63 - 1, -(2**63),
    2**64 - 1, "", "x", "NaN", "x" * 5000, "\u00e9\u4e2d\U0001f600", {"b64": ""}, {"b64": "!!!"}, {"b64": 1},
    {"b64": "YQ"}, {"b64": "YWI=", "extra": 1}, {}, {"x": 1}, [], [[]], [[[]]], [1, [2]], [[1], [2, 3]],
    [[1, 2], [3]], [None], [True, 1.5], [1, "1"], [[1.0] * 3] * 3, list(range(50)), [{"x": 1.0}],
]

HOSTILE_TOKENS = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"\x00", b"\xff\xfe", b"\xef\xbb\xbf",
                  b"\\u0000", b"\\ud800", b'"\\ud83d"', b"[", b"]", b"{", b"}", b",", b":", b'"', b"\\", b"-",
                  b"0x10", b"01", b".5", b"1.", b"+1", b"true", b"null", b"1" * 400, b"[" * 200, b"]" * 200,
                  b'{"b64": "YQ=="}', b'"instances"', b'"inputs"']

HOSTILE_BODIES: list[bytes] = [
    b"", b" ", b"\n\t ", b"null", b"true", b"[]", b"{}", b'"x"', b"1", b"[1, 2]", b"{", b"}", b"\xff" * 10,
    b'{"instances": }', b'{"instances": [1.0,]}', b'{"instances": [1.0] "inputs": [1]}',
    b'{"instances": [NaN, Infinity, -Infinity]}', b'{"inputs": [1e400]}', b'{"instances": [0x10]}',
    b'{"instances": [' + b"[" * 100 + b"1" + b"]" * 100 + b"]}",
    b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"instances": ' + b"[" * 100_000,
    b'{"a":' * 20_000,
    b'{"instances": [' + b"1" * 100_000 + b"]}",
    b'{"instances": ["' + b"\\u0000" * 1000 + b'"]}',
    b'{"instances": [1.0], "instances": [2.0]}',
    b'{"instances": [1.0], "signature_name": null}',
    b'{"instances": [1.0], "signature_name": ["serving_default"]}',
    b'{"instances": [1.0], "signature_name": "\\u0022"}',
    b'{"signature_name": "strings", "instances": ["\\ud800"]}',
    b'{"signature_name": "strings", "instances": [' + b'"",' * 20_000 + b'""]}',
    b'{"instances": [' + b"0," * 300_000 + b'"x"]}',                   # through a decoding worker
    b'{"instances": [' + b"0," * 8000 + b'"' + b"x" * 40000 + b'"]}',  # a string array of 1.3 GB before
    b'{"inputs": {"x": [' + b"1.5," * 200_000 + b"1.5]}}",
    b'{"instances": [' + b"[1.0]," * 150_000 + b"[1.0, 2.0]]}",         # ragged at the very end
    b'{"examples": [' + b'{"x": 1},' * 10_000 + b"7]}",
    b'{"examples": [{"x": [1, "a"]}]}', b'{"examples": [{"x": 1e39}]}', b'{"examples": [{"x": 99999999999999999999}]}',
    b'{"examples": "x"}', b'{"examples": []}', b'{"context": 1, "examples": [{}]}',
    b"x" * (MAX_BODY + 10),                                            # over --max_request_body_bytes: 413
]

NAMES = ["half", "tf2", "keras", "broken", "nope", "", "%00", "h%2Falf", "half%20", "\u00e9", "x" * 3000, "..",
         "half.", "HALF"]
VERSIONS = ["1", "0", "2", "01", "-1", "+1", "1.0", " 1", "\u00b2", "\u0661", "\uff11", "9" * 25,
            "9223372036854775807", "9223372036854775808", "", "a"]
LABELS = ["stable", "canary", "", "\u00e9", "x" * 500]
VERBS = ["predict", "classify", "regress", "explode", "PREDICT", "", "metadata", "predict:predict"]
METHODS = ["POST"] * 12 + ["GET"] * 3 + ["PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
OTHER_PATHS = ["/v1/models", "/v1/models/", "/v1/", "/v1/anything/else", "/v2/models/half:predict", "/healthz",
               "/readyz", "/monitoring/prometheus/metrics", "/", "/favicon.ico", "//v1/models/half:predict",
               "/v1/models/half/metadata/", "/v1/models/half:predict/", "/v1/models/half:predict?x=1&x=2",
               "/v1/models/half/versions/1/labels/stable:predict", "/v1/models/half/labels/:predict"]


class Fuzzer:
    def __init__(self, server: ServerProcess, token: str, rng: random.Random) -> None:
        self.server = server
        self.token = token
        self.rng = rng
        self.session = requests.Session()

    # -- what to send ------------------------------------------------------------------------------------

    def credentials(self) -> dict[str, str]:
        roll = self.rng.random()
        if roll < 0.6:
            return {"X-TFServe-Engine-Secret": SECRET}
        if roll < 0.75:
            return {"Authorization": f"Bearer {self.token}"}
        if roll < 0.85:
            return {}
        return self.rng.choice([{"X-TFServe-Engine-Secret": "nope"}, {"Authorization": "Bearer tfs_x_y"},
                                {"Authorization": "Bearer " + self.token[:-3] + "abc"}, {"Authorization": "Basic x"},
                                {"Authorization": "Bearer tfs_" + "a" * 5000}, {"X-TFServe-Engine-Secret": ""}])

    def path(self, model: str, verb: str) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.55:
            return f"/v1/models/{model}:{verb}"
        if roll < 0.7:
            return f"/v1/models/{rng.choice(NAMES)}:{rng.choice(VERBS)}"
        if roll < 0.8:
            return f"/v1/models/{model}/versions/{rng.choice(VERSIONS)}:{verb}"
        if roll < 0.85:
            return f"/v1/models/{model}/labels/{rng.choice(LABELS)}:{verb}"
        if roll < 0.92:
            return rng.choice([f"/v1/models/{model}", f"/v1/models/{model}/metadata",
                               f"/v1/models/{model}/versions/{rng.choice(VERSIONS)}/metadata"])
        return rng.choice(OTHER_PATHS)

    def mutate_tree(self, value: object, depth: int = 0) -> object:
        rng = self.rng
        if depth > 3 or rng.random() < 0.3:
            roll = rng.random()
            if roll < 0.6:
                return copy.deepcopy(rng.choice(HOSTILE_VALUES))
            if roll < 0.75:
                return [value]
            if roll < 0.85:
                return [value] * rng.choice([2, 3, 1000])
            return {"b64": base64.b64encode(rng.randbytes(8)).decode()}
        if isinstance(value, dict) and value:
            value = dict(value)
            key = rng.choice(list(value))
            roll = rng.random()
            if roll < 0.7:
                value[key] = self.mutate_tree(value[key], depth + 1)
            elif roll < 0.8:
                del value[key]
            elif roll < 0.9:
                value[rng.choice(["instances", "inputs", "signature_name", "x", "b64", "examples", "context"])] = (
                    copy.deepcopy(rng.choice(HOSTILE_VALUES)))
            else:
                value = {("inputs" if k == "instances" else "instances" if k == "inputs" else k): v
                         for k, v in value.items()}
            return value
        if isinstance(value, list) and value:
            value = list(value)
            index = rng.randrange(len(value))
            value[index] = self.mutate_tree(value[index], depth + 1)
            return value
        return self.mutate_tree(value, depth + 4)

    def mutate_bytes(self, body: bytes) -> bytes:
        rng = self.rng
        data = bytearray(body)
        for _ in range(rng.choice([1, 1, 2, 3, 8])):
            roll = rng.random()
            position = rng.randrange(len(data) + 1)
            if roll < 0.3 and data:
                data[min(position, len(data) - 1)] = rng.randrange(256)
            elif roll < 0.5:
                data[position:position] = rng.choice(HOSTILE_TOKENS)
            elif roll < 0.65:
                del data[position:position + rng.randrange(1, 10)]
            elif roll < 0.8:
                data = data[:position]
            else:
                piece = data[position:position + rng.randrange(1, 40)]
                data[position:position] = piece * rng.randrange(1, 50)
        return bytes(data)

    def body(self, seed: object) -> bytes:
        roll = self.rng.random()
        if roll < 0.4:
            return self._dumps(self.mutate_tree(seed))
        if roll < 0.75:
            return self.mutate_bytes(self._dumps(seed))
        if roll < 0.9:
            return self.rng.choice(HOSTILE_BODIES)
        return self.rng.randbytes(self.rng.choice([1, 10, 100, 5000]))

    @staticmethod
    def _dumps(value: object) -> bytes:
        try:
            return orjson.dumps(value)
        except TypeError:  # integers beyond 64 bits: the standard library writes them
            return json.dumps(value).encode()

    # -- sending and judging -------------------------------------------------------------------------------

    def send(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> requests.Response | None:
        """The answer, or None when the engine closed the connection on a body it refused unread."""
        try:
            return self.session.request(method, self.server.url + path, data=body, headers=headers, timeout=60)
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
            self.session.close()
            self.session = requests.Session()
            return None


def check_format(response: requests.Response, case: str) -> None:
    status = response.status_code
    if status == 503 and response.request.path_url == "/readyz":  # by design: model "broken" never loads
        assert response.json()["status"] == "not ready", case
        return
    assert status < 500, f"{status} for {case}: {response.text[:500]}"
    if response.request.method == "HEAD" or status in (204, 304):
        return
    if response.request.path_url.startswith("/monitoring/") and status == 200:
        return  # Prometheus text
    assert response.headers.get("Content-Type", "").startswith("application/json"), case
    document = response.json()
    assert isinstance(document, dict), case
    if status >= 400:
        assert set(document) == {"error"} and isinstance(document["error"], str) and document["error"], (case, document)


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    write_tf1_half_plus(root / "half", 1)
    write_tf2_half_plus(root / "tf2", 1)
    write_keras_export(root / "keras", 1)
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "saved_model.pb").write_bytes(b"\x08\x01not a SavedModel")
    names = ("half", "tf2", "keras", "broken")
    config = write_models_config(root / "models.config", {name: root / name for name in names})
    monitoring = write_monitoring_config(root / "monitoring.config")
    port = free_port()
    server = ServerProcess(
        ["--require_auth", f"--management_port={port}", f"--model_config_file={config}",
         f"--monitoring_config_file={monitoring}", f"--max_request_body_bytes={MAX_BODY}"],
        root / "server.log", env={"TFSERVE_ENGINE_SECRET": SECRET})
    try:
        server.session.headers.update({"X-TFServe-Engine-Secret": SECRET})
        server.wait_for_port()
        for name in ("half", "tf2", "keras"):
            server.wait_for_versions(name, {1}, timeout=120)
        created = requests.post(f"http://127.0.0.1:{port}/api/tokens", json={"model": "half", "verbs": ["predict"]},
                                headers={"X-TFServe-Engine-Secret": SECRET}, timeout=30)
        assert created.status_code == 201, created.text
        yield server, created.json()["token"]
    finally:
        server.stop()


GOOD: list[tuple[str, object, object]] = [
    ("/v1/models/half:predict", {"instances": [1.0, 2.0, 5.0]}, {"predictions": [2.5, 3.0, 4.5]}),
    ("/v1/models/tf2:predict", {"signature_name": "strings", "instances": ["abc", {"b64": "AAEC"}]},
     None),  # checked below: lengths 3 and 3
    ("/v1/models/tf2:predict", {"signature_name": "multi", "inputs": {"a": [[1.0, 2.0]], "b": [3]}},
     {"outputs": {"scaled": [[2.0, 4.0]], "sum": [6.0]}}),
    ("/v1/models/keras:predict", {"instances": [[1.0, 2.0, 3.0, 4.0]]}, "keras"),
]


def check_good(server: ServerProcess, index: int) -> None:
    path, body, expected = GOOD[index % len(GOOD)]
    response = requests.post(server.url + path, json=body, headers={"X-TFServe-Engine-Secret": SECRET}, timeout=60)
    assert response.status_code == 200, (path, response.text)
    answer = response.json()
    if expected == "keras":
        assert np.allclose(answer["predictions"], keras_reference_predict(np.array(body["instances"])), atol=1e-5)
    elif expected is None:
        assert answer["predictions"] == [{"length": 3, "upper_bytes": {"b64": "QUJD"}},
                                         {"length": 3, "upper_bytes": {"b64": "AAEC"}}]
    else:
        assert answer == expected


def test_fuzzed_rest_requests_get_tf_serving_errors_and_good_ones_still_work(fuzzed_server):
    server, token = fuzzed_server
    rng = random.Random(SEED)
    fuzzer = Fuzzer(server, token, rng)
    statuses: collections.Counter[int] = collections.Counter()
    closed = 0
    good = 0
    started = time.monotonic()
    sent = 0
    for index in range(FUZZ_CASES):
        if time.monotonic() - started > FUZZ_SECONDS:
            break
        model, verb, seed = rng.choice(SEEDS)
        method = rng.choice(METHODS)
        path = fuzzer.path(model, verb)
        body = fuzzer.body(seed) if method in ("POST", "PUT", "PATCH") or rng.random() < 0.1 else None
        headers = fuzzer.credentials()
        if rng.random() < 0.2:
            headers["Content-Type"] = rng.choice(["text/plain", "application/x-www-form-urlencoded", "", "\u00e9",
                                                  "application/json; charset=latin-1", "multipart/form-data"])
        case = f"#{index} {method} {path[:200]!r} headers={sorted(headers)} body={body[:300] if body else body!r}"
        response = fuzzer.send(method, path, body, headers)
        sent += 1
        if response is None:
            # Refused before its body was read (no valid credentials, or another model's token), and too
            # large to drain: the engine answered and closed the connection while the client was sending.
            assert body is not None and len(body) > 64 * 1024, f"connection closed for {case}"
            closed += 1
        else:
            statuses[response.status_code] += 1
            check_format(response, case)
        if index % 25 == 0:
            check_good(server, good)
            good += 1
    elapsed = time.monotonic() - started
    assert server.process.poll() is None, "the engine died:\n" + server.log_text()[-3000:]
    assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
    for index in range(len(GOOD)):
        check_good(server, index)
    log = server.log_text()
    assert "Traceback" not in log and "Uncaught exception" not in log, log[-5000:]
    assert sent >= 1500, f"only {sent} requests in {FUZZ_SECONDS} s"
    summary = (f"REST fuzzer: {sent} requests ({good + len(GOOD)} good ones among them, all answered right) in "
               f"{elapsed:.1f} s; statuses {dict(sorted(statuses.items()))}; {closed} connections closed on refused "
               f"unread bodies; 0 crashes; 0 5xx")
    print(summary)
    assert not set(statuses) - CLIENT_STATUSES - {200, 503}, summary


TARGETS = [("half", "predict", ""), ("half", "classify", "classify_x_to_y"), ("half", "regress", "regress_x_to_y"),
           ("tf2", "predict", ""), ("tf2", "predict", "multi"), ("tf2", "predict", "strings"), ("keras", "predict", "")]


def test_every_hostile_body_on_every_signature(fuzzed_server):
    """Each hostile body, as the owner, to each signature (in its own name when the body names none)."""
    server, _ = fuzzed_server
    statuses: collections.Counter[int] = collections.Counter()
    session = requests.Session()
    started = time.monotonic()
    for body in HOSTILE_BODIES:
        for model, verb, name in TARGETS:
            data = body
            if name and body.startswith(b'{"') and b"signature_name" not in body:
                data = b'{"signature_name": "' + name.encode() + b'", ' + body[1:]
            response = session.post(f"{server.url}/v1/models/{model}:{verb}", data=data, timeout=120,
                                    headers={"X-TFServe-Engine-Secret": SECRET})
            statuses[response.status_code] += 1
            check_format(response, f"{model}:{verb} {name} {data[:200]!r}")
        check_good(server, len(statuses))
    print(f"hostile bodies: {len(HOSTILE_BODIES) * len(TARGETS)} requests in {time.monotonic() - started:.1f} s; "
          f"statuses {dict(sorted(statuses.items()))}")
    assert server.process.poll() is None
    assert set(statuses) <= CLIENT_STATUSES | {200}, statuses


def test_raw_http_garbage_never_kills_the_engine(fuzzed_server):
    """Malformed HTTP itself (tornado's own parser answers these), on raw sockets."""
    server, _ = fuzzed_server
    rng = random.Random(SEED + 1)
    garbage = [
        b"GET / HTTP/1.1\r\n\r\n", b"\r\n\r\n", b"GARBAGE\r\n\r\n", b"GET /healthz HTTP/9.9\r\n\r\n",
        b"POST /v1/models/half:predict HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /v1/models/half:predict HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"POST /v1/models/half:predict HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"POST /v1/models/half:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v1/models/half:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-TFServe-Engine-Secret: "
        + SECRET.encode() + b"\r\n\r\n5\r\n{\"ins\r\n0\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n" + b"X: " + b"a" * 100_000 + b"\r\n\r\n",
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET /v1/models/half/versions/\xb2 HTTP/1.1\r\n\r\n",  # a latin-1 superscript two
        b"POST /v1/models/\xff\xfe/versions/\xb9:predict HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    ]
    garbage += [rng.randbytes(rng.randrange(1, 2000)) for _ in range(40)]
    for data in garbage:
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=5) as sock:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                reply = sock.recv(4096)
            except (ConnectionResetError, BrokenPipeError, TimeoutError):
                reply = b""
        assert not reply or reply.startswith(b"HTTP/1.1 "), (data[:100], reply[:200])
        if reply.startswith(b"HTTP/1.1 5"):
            raise AssertionError(f"5xx for {data[:100]!r}: {reply[:300]!r}")
    assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
    check_good(server, 0)
