""":predict, :classify and :regress on the httptools layer's direct path answer exactly as tornado's handler.

One engine runs with the direct path (the default), one with every request through tornado's
``RequestHandler`` (``--rest_direct_calls=false``), on the same models and state; each raw request
below goes to both, and the answers must be the same bytes (the Date header aside). Requests the
direct path does not take (refused callers, big or chunked bodies) are covered on both layers by
test_hostile_input.py.
"""

from __future__ import annotations

import re
import socket

import orjson
import pytest
import requests

from tests.helpers.models import write_tf1_half_plus, write_tf2_half_plus
from tests.helpers.server import ServerProcess, free_port, write_monitoring_config

SECRET = "direct-calls-secret"
OWNER = f"X-TFServe-Engine-Secret: {SECRET}\r\n"


class Pair:
    def __init__(self, direct: ServerProcess, through_tornado: ServerProcess, api: str) -> None:
        self.direct, self.through_tornado, self.api = direct, through_tornado, api


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    root = tmp_path_factory.mktemp("direct")
    write_tf1_half_plus(root / "half", 1)
    write_tf1_half_plus(root / "half", 2, b=3.0)
    write_tf2_half_plus(root / "tf2", 1)
    config = root / "models.config"
    config.write_text(f"""model_config_list {{
  config {{ name: "half" base_path: "{root / 'half'}" model_version_policy {{ all {{}} }}
           version_labels {{ key: "stable" value: 1 }} }}
  config {{ name: "tf2" base_path: "{root / 'tf2'}" }}
}}
""")
    monitoring = write_monitoring_config(root / "monitoring.config")
    port = free_port()
    servers = []
    try:
        for name, flags in (("direct", []), ("tornado", ["--rest_direct_calls=false"])):
            management = [f"--management_port={port}"] if name == "direct" else []
            server = ServerProcess(["--require_auth", f"--state_db={root / 'state.sqlite'}",
                                    f"--monitoring_config_file={monitoring}", f"--model_config_file={config}",
                                    *management, *flags],
                                   root / f"{name}.log", env={"TFSERVE_ENGINE_SECRET": SECRET})
            servers.append(server)
            server.session.headers["X-TFServe-Engine-Secret"] = SECRET
            server.wait_for_port()
            server.wait_for_versions("half", {1, 2}, timeout=120)
            server.wait_for_versions("tf2", {1}, timeout=120)
        yield Pair(servers[0], servers[1], f"http://127.0.0.1:{port}/api")
    finally:
        for server in servers:
            server.stop()


def _raw(server: ServerProcess, data: bytes) -> bytes:
    """One exchange; the answer read to its Content-Length (or to the close)."""
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as sock:
        sock.sendall(data)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                return answer
            answer += chunk
        head, _, rest = answer.partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return head + b"\r\n\r\n" + rest


def _same(engines: Pair, data: bytes) -> bytes:
    direct = re.sub(rb"Date: [^\r]*\r\n", b"", _raw(engines.direct, data))
    through_tornado = re.sub(rb"Date: [^\r]*\r\n", b"", _raw(engines.through_tornado, data))
    assert direct == through_tornado
    return direct


def _post(path: str, body: bytes, extra: str = OWNER) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


CALLS = {
    "predict rows": ("/v1/models/half:predict", b'{"instances": [1.0, 2.0, 5.0]}'),
    "predict columns": ("/v1/models/half/versions/1:predict", b'{"inputs": {"x": [1.0, 2.0]}}'),
    "predict by label": ("/v1/models/half/labels/stable:predict", b'{"instances": [4.0]}'),
    "predict a tf2 module": ("/v1/models/tf2:predict", b'{"instances": [[1.0], [2.0]]}'),
    "a named signature": ("/v1/models/half:predict",
                          b'{"signature_name": "regress_x2_to_y3", "instances": [[1.0], [3.0]]}'),
    "classify": ("/v1/models/half:classify", b'{"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}]}'),
    "regress": ("/v1/models/half:regress", b'{"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}'),
    "json that does not parse": ("/v1/models/half:predict", b'{"instances": [1.0,'),
    "a wrong dtype": ("/v1/models/half:predict", b'{"instances": ["a", "b"]}'),
    "an unknown model": ("/v1/models/nosuch:predict", b'{"instances": [1.0]}'),
    "an unknown version": ("/v1/models/half/versions/9:predict", b'{"instances": [1.0]}'),
    "an unknown label": ("/v1/models/half/labels/gone:predict", b'{"instances": [1.0]}'),
    "an unknown signature": ("/v1/models/half:predict", b'{"signature_name": "nope", "instances": [1.0]}'),
    "an empty body": ("/v1/models/half:predict", b""),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_the_direct_path_answers_as_tornados_handler(engines, name):
    path, body = CALLS[name]
    answer = _same(engines, _post(path, body))
    assert answer.startswith(b"HTTP/1.1 ")
    assert b"Server: TornadoServer/" in answer and b"Content-Type: application/json\r\n" in answer
    if answer.startswith(b"HTTP/1.1 200 "):
        assert b"X-Tfserve-Model-Version: " in answer
    else:
        assert b"X-Tfserve-Model-Version" not in answer
        assert set(orjson.loads(answer.partition(b"\r\n\r\n")[2])) == {"error"}


def test_connection_close_is_answered_and_honoured(engines):
    path, body = CALLS["predict rows"]
    answer = _same(engines, _post(path, body, OWNER + "Connection: close\r\n"))
    assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close\r\n" in answer


def test_a_share_token_gets_the_same_answers_and_no_paths(engines):
    token = requests.post(engines.api + "/tokens", json={"model": "half", "verbs": ["predict"]},
                          headers={"X-TFServe-Engine-Secret": SECRET}, timeout=30).json()["token"]
    bearer = f"Authorization: Bearer {token}\r\n"
    assert _same(engines, _post("/v1/models/half:predict", b'{"instances": [2.0]}', bearer)).startswith(
        b"HTTP/1.1 200 ")
    refused = _same(engines, _post("/v1/models/tf2:predict", b'{"instances": [[2.0]]}', bearer))
    assert refused.startswith(b"HTTP/1.1 403 ")
    wrong = _same(engines, _post("/v1/models/half:predict", b'{"instances": ["x"]}', bearer))
    assert wrong.startswith(b"HTTP/1.1 400 ") and b"/tmp" not in wrong


def test_keep_alive_and_pipelined_calls_are_answered_in_order(engines):
    data = b"".join(_post("/v1/models/half:predict", b'{"instances": [%d.0]}' % i) for i in range(5))
    with socket.create_connection(("127.0.0.1", engines.direct.rest_port), timeout=30) as sock:
        sock.sendall(data)
        answer = b""
        while answer.count(b"predictions") < 5:
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    values = [float(v) for v in re.findall(rb'"predictions":\[([0-9.]+)\]', answer)]
    assert values == [i / 2 + 3.0 for i in range(5)]  # version 2 (b=3) is the latest


def _direct_calls(server: ServerProcess) -> float:
    text = server.get("/monitoring/prometheus/metrics").text
    return float(re.search(r"^tfserve_rest_direct_calls_total (\S+)$", text, re.M).group(1))


def test_the_direct_path_is_taken_on_one_engine_and_not_the_other(engines):
    before = _direct_calls(engines.direct), _direct_calls(engines.through_tornado)
    path, body = CALLS["predict rows"]
    _same(engines, _post(path, body))
    _same(engines, _post("/v1/models/half:predict", b'{"instances": [1.0]}', ""))  # refused: tornado answers
    assert _direct_calls(engines.direct) == before[0] + 1
    assert _direct_calls(engines.through_tornado) == before[1] == 0
