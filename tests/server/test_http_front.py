"""The httptools front door (server/http_front.py) answers every exchange as tornado's own HTTP layer does.

Each scenario is sent byte for byte to one tornado Application served twice, by tornado's
HTTPServer and by FrontDoor, and the raw answers must match (the Date header aside). The REST
handlers' own limits are covered on both layers by test_hostile_input.py.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

from jupyter_tfserve.server.http_front import FrontDoor

MAX_BODY = 1 << 20


@tornado.web.stream_request_body
class Echo(tornado.web.RequestHandler):
    """Counts the body as it streams, answers its size; ``?limit=N`` raises the body limit in prepare."""

    def prepare(self) -> None:
        self.size = 0
        if self.get_query_argument("limit", None):
            self.request.connection.set_max_body_size(int(self.get_query_argument("limit")))
        if self.get_query_argument("refuse", None):
            self.set_status(403)
            self.set_header("Connection", "close")
            self.finish(b"refused")

    async def data_received(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.get_query_argument("slow", None):
            await asyncio.sleep(0.001)  # a handler that applies back-pressure

    def post(self) -> None:
        self.finish(b"%d %s" % (self.size, self.request.headers.get("X-Tag", "").encode()))

    put = post

    def get(self) -> None:
        self.finish(b"get " + self.request.path.encode())


class Chunks(tornado.web.RequestHandler):
    async def get(self) -> None:
        self.write(b"first ")
        await self.flush()
        self.write(b"second")


class Fails(tornado.web.RequestHandler):
    def get(self) -> None:
        raise RuntimeError("boom")


def _app() -> tornado.web.Application:
    return tornado.web.Application([(r"/echo.*", Echo), (r"/chunks", Chunks), (r"/fails", Fails)])


class _Servers:
    """Both layers on one event loop in a thread: {'tornado': port, 'httptools': port}."""

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            app = _app()
            sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
            server = tornado.httpserver.HTTPServer(app, max_body_size=MAX_BODY, idle_connection_timeout=300)
            server.add_sockets(sockets)
            self.ports["tornado"] = sockets[0].getsockname()[1]
            sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
            self.front = FrontDoor(app, max_body_size=MAX_BODY, idle_seconds=1.0)
            await self.front.add_sockets(sockets)
            self.ports["httptools"] = sockets[0].getsockname()[1]

        self.loop.run_until_complete(start())
        ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def servers():
    both = _Servers()
    yield both
    both.stop()


def _exchange(port: int, data: bytes | list[bytes], read_seconds: float = 2.0) -> bytes:
    """Send ``data`` (pieces sent one by one), then read until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_seconds) as sock:
        answer = b""
        for piece in data if isinstance(data, list) else [data]:
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):  # the server answered and closed mid-upload
                break
        deadline = time.monotonic() + read_seconds
        sock.settimeout(0.3)
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if answer:
                    break
                continue
            except ConnectionResetError:
                answer += b"<reset>"
                break
            if not chunk:
                answer += b"<closed>"
                break
            answer += chunk
    return answer


def _normal(answer: bytes) -> bytes:
    """Without the Date; a connection closed with unread bytes in it may be reset rather than closed."""
    return re.sub(rb"Date: [^\r]*\r\n", b"", answer).replace(b"<reset>", b"<closed>")


SCENARIOS = {
    "get": b"GET /echo/a HTTP/1.1\r\nHost: x\r\n\r\n",
    "post with a body": b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Tag: t\r\nContent-Length: 5\r\n\r\nhello",
    "keep-alive, two requests one after the other": [
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        b"GET /echo/b HTTP/1.1\r\nHost: x\r\n\r\n"],
    "pipelined in one packet": (b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Tag: 1\r\nContent-Length: 2\r\n\r\nab"
                                b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Tag: 2\r\nContent-Length: 1\r\n\r\nc"
                                b"GET /echo/c HTTP/1.1\r\nHost: x\r\n\r\n"),
    "chunked body": (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
    "expect 100-continue": b"PUT /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
    "http/1.0 closes": b"GET /echo/d HTTP/1.0\r\n\r\n",
    "http/1.0 keep-alive": b"GET /echo/e HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "connection close": b"GET /echo/f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "head": b"HEAD /echo/g HTTP/1.1\r\nHost: x\r\n\r\n",
    "chunked answer": b"GET /chunks HTTP/1.1\r\nHost: x\r\n\r\n",
    "a handler that fails": b"GET /fails HTTP/1.1\r\nHost: x\r\n\r\n",
    "not found": b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n",
    "a body over the limit": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\nab" % (MAX_BODY + 1),
    "a limit raised in prepare": [b"POST /echo?limit=3000000 HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n",
                                  b"x" * 2_000_000],
    "a chunked body over the limit": [b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                                      b"%x\r\n%s\r\n" % (MAX_BODY + 10, b"y" * (MAX_BODY + 10)), b"0\r\n\r\n"],
    "answered in prepare, body still coming": [
        b"POST /echo?refuse=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n", b"z" * 100_000],
    "back-pressure from data_received": [b"POST /echo?slow=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n",
                                         b"q" * 300_000],
    "more body than Content-Length, then garbage": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nabXYZ",
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_same_answer_as_tornados_http_layer(servers, name):
    data = SCENARIOS[name]
    tornado_answer = _normal(_exchange(servers.ports["tornado"], data))
    front_answer = _normal(_exchange(servers.ports["httptools"], data))
    if name == "more body than Content-Length, then garbage":
        # tornado waits for 64 KiB of header that never ends; llhttp sees at once that XYZ is no request:
        # both answer the request first, then the bytes after it do not get a 200.
        assert front_answer.startswith(b"HTTP/1.1 200 OK") and b"\r\n\r\n2 " in front_answer, front_answer
        assert tornado_answer.startswith(b"HTTP/1.1 200 OK"), tornado_answer
        assert front_answer.endswith(b"<closed>") and b"HTTP/1.1 400 Bad Request" in front_answer
        return
    if name == "a chunked body over the limit":
        for answer in (tornado_answer, front_answer):
            # Refused and closed while the client still sends: its kernel may drop the 400 on the reset.
            assert answer == b"<closed>" or answer.startswith(b"HTTP/1.1 400 Bad Request"), answer
        return
    if name == "a body over the limit":
        assert tornado_answer == b"HTTP/1.1 400 Bad Request\r\n\r\n<closed>", tornado_answer
        assert front_answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b'{"error":' in front_answer
        assert front_answer.endswith(b"<closed>")
        return
    assert front_answer == tornado_answer


@pytest.mark.parametrize("garbage", [b"NOT HTTP AT ALL\r\n\r\n", b"GET /\x00 HTTP/1.1\r\n\r\n",
                                     b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n"])
def test_what_is_no_request_gets_a_400_in_tf_servings_error_format_and_a_closed_connection(servers, garbage):
    answer = _exchange(servers.ports["httptools"], garbage)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"), answer[:200]
    assert b'{"error":"Malformed HTTP request: ' in answer and answer.endswith(b"<closed>")


def test_an_idle_connection_is_closed_and_a_busy_one_is_not(servers):
    with socket.create_connection(("127.0.0.1", servers.ports["httptools"]), timeout=5) as sock:
        for _ in range(3):  # requests 0.5 s apart keep a connection with a 1 s idle limit open
            sock.sendall(b"GET /echo/h HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
            time.sleep(0.5)
        started = time.monotonic()
        assert sock.recv(65536) == b""  # then closed by the server, about 1 s after the last answer
        assert time.monotonic() - started < 3


def test_many_connections_at_once_each_get_their_own_answers(servers):
    def one(index: int) -> bytes:
        body = b"x" * index
        return _exchange(servers.ports["httptools"],
                         b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Tag: %d\r\nContent-Length: %d\r\n\r\n%b"
                         % (index, len(body), body), read_seconds=5)

    results: dict[int, bytes] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, one(i))) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    for index in range(40):
        assert results[index].endswith(b"\r\n\r\n%d %d" % (index, index)), (index, results[index][-60:])
