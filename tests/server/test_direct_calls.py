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

from tests.helpers.raw_http import (
    MODEL_CALLS,
    OWNER,
    SECRET,
    EnginePair,
    engines_for_model_calls,
    post,
)
from tests.helpers.server import ServerProcess


class Pair(EnginePair):
    direct = property(lambda self: self.first)
    through_tornado = property(lambda self: self.second)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    with engines_for_model_calls(tmp_path_factory.mktemp("direct"), ([], ["--rest_direct_calls=false"])) as (
            servers, api):
        yield Pair(servers[0], servers[1], api)


@pytest.mark.parametrize("name", list(MODEL_CALLS))
def test_the_direct_path_answers_as_tornados_handler(engines, name):
    path, body = MODEL_CALLS[name]
    answer = engines.same(post(path, body))
    assert answer.startswith(b"HTTP/1.1 ")
    assert b"Server: TornadoServer/" in answer and b"Content-Type: application/json\r\n" in answer
    if answer.startswith(b"HTTP/1.1 200 "):
        assert b"X-Tfserve-Model-Version: " in answer
    else:
        assert b"X-Tfserve-Model-Version" not in answer
        assert set(orjson.loads(answer.partition(b"\r\n\r\n")[2])) == {"error"}


def test_connection_close_is_answered_and_honoured(engines):
    path, body = MODEL_CALLS["predict rows"]
    answer = engines.same(post(path, body, OWNER + "Connection: close\r\n"))
    assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close\r\n" in answer


def test_a_share_token_gets_the_same_answers_and_no_paths(engines):
    token = requests.post(engines.api + "/tokens", json={"model": "half", "verbs": ["predict"]},
                          headers={"X-TFServe-Engine-Secret": SECRET}, timeout=30).json()["token"]
    bearer = f"Authorization: Bearer {token}\r\n"
    assert engines.same(post("/v1/models/half:predict", b'{"instances": [2.0]}', bearer)).startswith(
        b"HTTP/1.1 200 ")
    refused = engines.same(post("/v1/models/tf2:predict", b'{"instances": [[2.0]]}', bearer))
    assert refused.startswith(b"HTTP/1.1 403 ")
    wrong = engines.same(post("/v1/models/half:predict", b'{"instances": ["x"]}', bearer))
    assert wrong.startswith(b"HTTP/1.1 400 ") and b"/tmp" not in wrong


def test_keep_alive_and_pipelined_calls_are_answered_in_order(engines):
    data = b"".join(post("/v1/models/half:predict", b'{"instances": [%d.0]}' % i) for i in range(5))
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
    path, body = MODEL_CALLS["predict rows"]
    engines.same(post(path, body))
    engines.same(post("/v1/models/half:predict", b'{"instances": [1.0]}', ""))  # refused: tornado answers
    assert _direct_calls(engines.direct) == before[0] + 1
    assert _direct_calls(engines.through_tornado) == before[1] == 0
