"""``--rest_front_processes``: front-door processes answer as the engine alone does, and hand it the rest.

One engine runs with two front doors (they accept every REST connection), one without, on the
same models and state. The owner's model calls are parsed and decoded in a front door; share
tokens, GETs, large bodies and malformed bytes are handed to the engine with the connection. Every
raw request below goes to both, and the answers must be the same bytes (the Date header aside).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import orjson
import pytest
import requests

from tests.helpers.raw_http import (
    MODEL_CALLS,
    OWNER,
    SECRET,
    EnginePair,
    engines_for_model_calls,
    exchange,
    post,
    read_answer,
    without_date,
)
from tests.helpers.server import ServerProcess

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="SO_REUSEPORT is Linux's and BSD's")


class Pair(EnginePair):
    fronted = property(lambda self: self.first)
    alone = property(lambda self: self.second)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    with engines_for_model_calls(tmp_path_factory.mktemp("front"), (["--rest_front_processes=2"], [])) as (
            servers, api):
        yield Pair(servers[0], servers[1], api)


def _counter(server: ServerProcess, name: str) -> float:
    text = server.get("/monitoring/prometheus/metrics").text
    return float(re.search(rf"^{name}_total (\S+)$", text, re.M).group(1))


def _front_doors(server: ServerProcess) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except OSError:
            continue
        if parent == server.process.pid and b"front_door_worker" in command:
            children.append(int(entry))
    return children


@pytest.mark.parametrize("name", list(MODEL_CALLS))
def test_a_front_door_answers_as_the_engine_alone(engines, name):
    path, body = MODEL_CALLS[name]
    answer = engines.same(post(path, body))
    assert answer.startswith(b"HTTP/1.1 ")
    if answer.startswith(b"HTTP/1.1 200 "):
        assert b"X-Tfserve-Model-Version: " in answer
    else:
        assert set(orjson.loads(answer.partition(b"\r\n\r\n")[2])) == {"error"}


def test_owner_calls_go_through_the_front_doors_and_the_rest_is_handed_over(engines):
    calls = _counter(engines.fronted, "tfserve_rest_front_process_calls")
    direct = _counter(engines.fronted, "tfserve_rest_direct_calls")
    for _ in range(3):
        assert engines.same(post(*MODEL_CALLS["predict rows"])).startswith(b"HTTP/1.1 200 ")
    assert _counter(engines.fronted, "tfserve_rest_front_process_calls") == calls + 3
    assert _counter(engines.fronted, "tfserve_rest_direct_calls") == direct  # not the engine's own direct path
    # Reading the metrics is a GET, handed to the engine with its connection (kept alive since then).
    handoffs = _counter(engines.fronted, "tfserve_rest_front_process_handoffs")
    exchange(engines.fronted.rest_port, b"GET /v1/models/half HTTP/1.1\r\nHost: x\r\n" + OWNER.encode() + b"\r\n")
    assert _counter(engines.fronted, "tfserve_rest_front_process_handoffs") == handoffs + 1


def test_the_front_doors_hold_no_model_and_no_tensorflow(engines):
    doors = _front_doors(engines.fronted)
    assert len(doors) == 2
    for pid in doors:
        with open(f"/proc/{pid}/maps") as maps:
            assert "tensorflow" not in maps.read()


def test_a_share_token_is_the_engines_to_judge(engines):
    token = requests.post(engines.api + "/tokens", json={"model": "half", "verbs": ["predict"]},
                          headers={"X-TFServe-Engine-Secret": SECRET}, timeout=30).json()["token"]
    bearer = f"Authorization: Bearer {token}\r\n"
    handoffs = _counter(engines.fronted, "tfserve_rest_front_process_handoffs")
    assert engines.same(post("/v1/models/half:predict", b'{"instances": [2.0]}', bearer)).startswith(
        b"HTTP/1.1 200 ")
    assert engines.same(post("/v1/models/tf2:predict", b'{"instances": [[2.0]]}', bearer)).startswith(
        b"HTTP/1.1 403 ")
    assert engines.same(post("/v1/models/half:predict", b'{"instances": [1.0]}', "")).startswith(
        b"HTTP/1.1 401 ")  # no credential at all, on an engine that requires one
    assert _counter(engines.fronted, "tfserve_rest_front_process_handoffs") >= handoffs + 3


@pytest.mark.parametrize("data", [
    b"GET /v1/models/half HTTP/1.1\r\nHost: x\r\n" + OWNER.encode() + b"\r\n",
    b"this is not HTTP\r\n\r\n",
    b"POST /v1/models/half:predict HTTP/1.1\nHost: x\nContent-Length: 2\n\n{}",  # bare LF
    b"POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n{}",
    b"POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + OWNER.encode()
    + b"\r\n5\r\n{\"ins\r\n0\r\n\r\n",
    b"POST /v1/models/half:predict?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n" + OWNER.encode() + b"\r\n{}",
    b"POST /v1/models/half:predict HTTP/1.0\r\nContent-Length: 2\r\n" + OWNER.encode() + b"\r\n{}",
], ids=["get", "garbage", "bare-lf", "two-lengths", "chunked", "query", "http-1.0"])
def test_what_a_front_door_does_not_take_is_answered_by_the_engine(engines, data):
    engines.same(data)


def test_a_large_body_is_handed_over_and_decoded_by_the_engine(engines):
    body = orjson.dumps({"instances": [float(i % 7) + 0.25 for i in range(60_000)]})
    assert len(body) > 256 * 1024
    answer = engines.same(post("/v1/models/half:predict", body))
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_keep_alive_mixes_front_door_calls_and_handed_over_requests_in_order(engines):
    requests_in_order = [
        post("/v1/models/half:predict", b'{"instances": [1.0]}'),
        b"GET /v1/models/half/versions/1 HTTP/1.1\r\nHost: x\r\n" + OWNER.encode() + b"\r\n",
        post("/v1/models/half:predict", b'{"instances": [3.0]}'),
        post("/v1/models/half:predict", b'{"instances": [5.0]}', OWNER + "Connection: close\r\n"),
    ]
    answers = {}
    for name, server in (("fronted", engines.fronted), ("alone", engines.alone)):
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as sock:
            got = []
            for data in requests_in_order:
                sock.sendall(data)
                answer, extra = read_answer(sock)
                assert not extra
                got.append(without_date(answer))
            assert sock.recv(1) == b""  # closed after the answer to Connection: close
        answers[name] = got
    assert answers["fronted"] == answers["alone"]
    assert [a.split(b"\r\n\r\n")[1] for a in answers["fronted"][::2]] == [b'{"predictions":[3.5]}',
                                                                          b'{"predictions":[4.5]}']


def test_pipelined_calls_and_a_request_split_across_packets(engines):
    data = b"".join(post("/v1/models/half:predict", b'{"instances": [%d.0]}' % i) for i in range(5))
    data += b"GET /v1/models/half HTTP/1.1\r\nHost: x\r\n" + OWNER.encode() + b"\r\n"
    data += post("/v1/models/half:predict", b'{"instances": [9.0]}')
    with socket.create_connection(("127.0.0.1", engines.fronted.rest_port), timeout=30) as sock:
        for start in range(0, len(data), 37):  # in pieces, none on a boundary that means anything
            sock.sendall(data[start:start + 37])
            time.sleep(0.002)
        answers, rest = [], b""
        for _ in range(7):
            answer, rest = read_answer(sock, rest)
            answers.append(answer.partition(b"\r\n\r\n")[2])
    assert answers[:5] == [b'{"predictions":[%s]}' % str(i / 2 + 3.0).encode() for i in range(5)]
    assert b"model_version_status" in answers[5]
    assert answers[6] == b'{"predictions":[7.5]}'


def test_a_front_door_that_dies_is_replaced_and_serving_goes_on(engines):
    doors = _front_doors(engines.fronted)
    os.kill(doors[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    served = 0
    while time.monotonic() < deadline and (served < 20 or len(set(_front_doors(engines.fronted)) - {doors[0]}) < 2):
        try:
            answer = exchange(engines.fronted.rest_port, post(*MODEL_CALLS["predict rows"]))
        except OSError:  # a connection queued on the killed door's socket is reset
            continue
        assert answer.startswith(b"HTTP/1.1 200 ")
        served += 1
    now = set(_front_doors(engines.fronted))
    assert served >= 20 and doors[0] not in now and len(now) == 2
    assert "exited with -9; starting another" in engines.fronted.log_text()


def test_the_front_doors_stop_with_the_engine(tmp_path):
    from tests.helpers.models import write_tf1_half_plus

    write_tf1_half_plus(tmp_path / "half", 1)
    server = ServerProcess(["--model_name=half", f"--model_base_path={tmp_path / 'half'}",
                            "--rest_front_processes=1"], tmp_path / "engine.log")
    try:
        server.wait_for_port()
        doors = _front_doors(server)
        assert len(doors) == 1
        server.wait_for_versions("half", {1})
        assert server.post("/v1/models/half:predict", {"instances": [2.0]}).json() == {"predictions": [3.0]}
    finally:
        assert server.stop() == 0
    time.sleep(0.5)
    assert not os.path.exists(f"/proc/{doors[0]}")
