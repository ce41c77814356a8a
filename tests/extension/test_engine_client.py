"""The extension's keep-alive client to its engine, against real HTTP servers on 127.0.0.1.

The server here is a small asyncio one that parses requests with llhttp (httptools) and
can be told to misbehave the ways an engine does: close a connection while it is idle,
die with a request in hand, answer ``Connection: close``, chunked, or until the close,
or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools
import pytest
import pytest_asyncio

from jupyter_tfserve.extension.engine_client import EngineClient, EngineUnavailable


@dataclass
class Seen:
    """One request as the server parsed it."""

    connection: int
    number_on_connection: int
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


# What the server does with a request: bytes to answer with, (seconds, bytes) to answer after a while,
# None to close without answering, or "hang" to keep the connection open and never answer.
Behaviour = Callable[[Seen], "bytes | tuple[float, bytes] | str | None"]


def answer(status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}",
             *(f"{name}: {value}" for name, value in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def echo(seen: Seen) -> bytes:
    return answer(200, seen.body, {"Content-Type": seen.headers.get("content-type", "application/octet-stream"),
                                   "X-Target": seen.target, "X-Connection": str(seen.connection)})


class _Request:
    """httptools callbacks for one connection's requests."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.url = b""
        self.done: list[tuple[str, dict[str, str], bytes]] = []
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done.append((self.url.decode(), self.headers, b"".join(self.body)))
        self.headers, self.body, self.url = {}, [], b""


@dataclass
class TinyServer:
    behaviour: Behaviour = echo
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> TinyServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()

    def close_idle_connections(self) -> None:
        for writer in self.writers:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number, count = self.connections, 0
        self.writers.append(writer)
        request = _Request()
        try:
            while data := await reader.read(65536):
                request.parser.feed_data(data)
                while request.done:
                    target, headers, body = request.done.pop(0)
                    count += 1
                    method = request.parser.get_method().decode()
                    seen = Seen(number, count, method, target, headers, body)
                    self.seen.append(seen)
                    reply = self.behaviour(seen)
                    if reply == "hang":
                        await asyncio.sleep(3600)
                    if reply is None or isinstance(reply, str):
                        return
                    if isinstance(reply, tuple):
                        await asyncio.sleep(reply[0])
                        reply = reply[1]
                    writer.write(reply)
                    await writer.drain()
        except (ConnectionError, httptools.HttpParserError):
            pass
        finally:
            writer.close()


@pytest_asyncio.fixture
async def served():
    servers: list[TinyServer] = []

    async def start(behaviour: Behaviour = echo) -> TinyServer:
        server = await TinyServer(behaviour).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_connections_are_kept_alive_and_reused(served):
    server = await served()
    with contextlib.closing(EngineClient()) as client:
        for n in range(20):
            response = await client.request("POST", f"{server.url}/v1/models/m:predict?n={n}",
                                            {"Content-Type": "application/json"}, b'{"instances": [1]}')
            assert response.status == 200 and response.body == b'{"instances": [1]}'
            assert response.header("Content-Type") == "application/json"
            assert response.header("x-target") == f"/v1/models/m:predict?n={n}"
        assert client.connections_made == 1 and server.connections == 1
        assert [s.number_on_connection for s in server.seen] == list(range(1, 21))
        assert server.seen[0].headers["content-length"] == "18"
        assert server.seen[0].headers["host"] == f"127.0.0.1:{server.port}"

        # Concurrent requests each take a connection; afterwards they wait in the pool for the next ones.
        answers = await asyncio.gather(*(client.request("GET", f"{server.url}/x/{n}") for n in range(8)))
        assert [a.header("X-Target") for a in answers] == [f"/x/{n}" for n in range(8)]
        assert client.connections_made == server.connections <= 8
        idle = client.idle_connections("127.0.0.1", server.port)
        assert idle == client.connections_made
        await asyncio.gather(*(client.request("GET", f"{server.url}/y") for _ in range(idle)))
        assert client.connections_made == server.connections == idle
        get = server.seen[-1]
        assert get.method == "GET" and "content-length" not in get.headers and get.body == b""


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_reused_connection_closed_before_the_answer_is_retried_once_on_a_new_one(served):
    # The engine restarted (or closed the connection) just as a pooled connection was used: the
    # second request on every connection is dropped unanswered.
    server = await served(lambda seen: None if seen.number_on_connection == 2 else echo(seen))
    with contextlib.closing(EngineClient()) as client:
        first = await client.request("POST", f"{server.url}/a", {}, b"one")
        again = await client.request("POST", f"{server.url}/b", {}, b"two")
        assert (first.body, again.body) == (b"one", b"two")
        assert [(s.connection, s.target, s.body) for s in server.seen] == [
            (1, "/a", b"one"), (1, "/b", b"two"), (2, "/b", b"two")]
        assert client.connections_made == 2
        assert again.header("X-Connection") == "2"


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_new_connection_closed_before_the_answer_is_not_retried(served):
    server = await served(lambda seen: None)
    with contextlib.closing(EngineClient()) as client:
        with pytest.raises(EngineUnavailable, match="before answering"):
            await client.request("POST", f"{server.url}/a", {}, b"x")
        assert len(server.seen) == 1 and client.connections_made == 1
        # Nor when a pooled one fails and its retry on a new connection fails too: two sends, no more.
        server.behaviour = echo
        await client.request("GET", f"{server.url}/warm")
        server.behaviour = lambda seen: None
        with pytest.raises(EngineUnavailable):
            await client.request("POST", f"{server.url}/b", {}, b"y")
        assert [s.target for s in server.seen] == ["/a", "/warm", "/b", "/b"]


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_connection_the_server_closed_while_idle_is_not_used(served):
    server = await served()
    with contextlib.closing(EngineClient()) as client:
        await client.request("GET", f"{server.url}/a")
        server.close_idle_connections()
        for _ in range(50):  # until the client's side has seen the close
            if client.idle_connections("127.0.0.1", server.port) == 0:
                break
            await asyncio.sleep(0.01)
        response = await client.request("GET", f"{server.url}/b")
        assert response.status == 200 and client.connections_made == 2
        assert [s.connection for s in server.seen] == [1, 2]


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_nothing_listening_is_engine_unavailable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with contextlib.closing(EngineClient()) as client:
        with pytest.raises(EngineUnavailable, match=f"cannot connect to the engine at 127.0.0.1:{port}"):
            await client.request("POST", f"http://127.0.0.1:{port}/v1/models/m:predict", {}, b"{}")
        assert client.connections_made == 0


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_large_bodies_both_ways_in_chunks(served):
    server = await served()
    chunks = [bytes([n]) * 65536 for n in range(128)]  # 8 MiB, as tornado hands a streamed body over
    with contextlib.closing(EngineClient()) as client:
        response = await client.request("POST", f"{server.url}/big", {"Content-Type": "application/json"}, chunks)
        assert response.status == 200 and response.body == b"".join(chunks)
        assert server.seen[0].headers["content-length"] == str(128 * 65536)
        small = await client.request("PUT", f"{server.url}/small", {}, b"")
        assert small.body == b"" and server.seen[-1].headers["content-length"] == "0"
        assert client.connections_made == 1


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_status_headers_and_answers_that_end_the_connection(served):
    replies = {
        "/missing": answer(404, b'{"error": "no"}', {"Content-Type": "application/json",
                                                      "X-TFServe-Model-Version": "3"}),
        "/close": answer(200, b"bye", {"Connection": "close"}),
        "/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        "/empty": b"HTTP/1.1 204 No Content\r\n\r\n",
    }
    server = await served(lambda seen: replies[seen.target])
    with contextlib.closing(EngineClient()) as client:
        missing = await client.request("GET", f"{server.url}/missing")
        assert (missing.status, missing.body) == (404, b'{"error": "no"}')
        assert missing.header("X-TFServe-Model-Version") == "3"
        assert (await client.request("GET", f"{server.url}/chunked")).body == b"abcde"
        assert (await client.request("DELETE", f"{server.url}/empty")).status == 204
        assert client.connections_made == 1
        assert (await client.request("GET", f"{server.url}/close")).body == b"bye"
        assert client.idle_connections("127.0.0.1", server.port) == 0
        await client.request("GET", f"{server.url}/missing")
        assert client.connections_made == 2

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    raw = await asyncio.start_server(until_close, "127.0.0.1", 0)
    with contextlib.closing(EngineClient()) as client:
        response = await client.request("GET", f"http://127.0.0.1:{raw.sockets[0].getsockname()[1]}/")
        assert (response.status, response.body) == (200, b"all of it")
        raw.close()


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_no_answer_in_time_is_a_timeout_and_the_connection_is_dropped(served):
    server = await served(lambda seen: "hang" if seen.target == "/slow" else echo(seen))
    with contextlib.closing(EngineClient(timeout=0.3)) as client:
        await client.request("GET", f"{server.url}/fast")
        with pytest.raises(TimeoutError):
            await client.request("GET", f"{server.url}/slow")
        assert client.idle_connections("127.0.0.1", server.port) == 0
        assert (await client.request("GET", f"{server.url}/fast")).status == 200
        assert client.connections_made == 2


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_nothing_that_would_split_the_request_is_sent(served):
    server = await served()
    with contextlib.closing(EngineClient()) as client:
        with pytest.raises(ValueError, match="header"):
            await client.request("GET", f"{server.url}/a", {"X-Route": "a\r\nX-Injected: 1"})
        with pytest.raises(ValueError, match="request line"):
            await client.request("GET", f"{server.url}/a b")
        with pytest.raises(ValueError, match="http://"):
            await client.request("GET", "https://example.invalid/")
        assert server.seen == []


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_closing_the_client_fails_what_is_in_flight_and_what_comes_after(served):
    server = await served(lambda seen: "hang" if seen.target == "/slow" else echo(seen))
    client = EngineClient()
    await client.request("GET", f"{server.url}/warm")
    in_flight = asyncio.ensure_future(client.request("GET", f"{server.url}/slow"))
    while len(server.seen) < 2:
        await asyncio.sleep(0.01)
    client.close()
    with pytest.raises(EngineUnavailable):
        await in_flight
    with pytest.raises(EngineUnavailable, match="closed"):
        await client.request("GET", f"{server.url}/warm")
    assert [s.target for s in server.seen] == ["/warm", "/slow"] and client.connections_made == 1


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_requests_beyond_the_connection_limit_wait_for_a_connection(served):
    server = await served(lambda seen: (0.05, echo(seen)))
    with contextlib.closing(EngineClient(max_connections_per_host=2)) as client:
        answers = await asyncio.gather(*(client.request("POST", f"{server.url}/{n}", {}, str(n).encode())
                                         for n in range(7)))
        assert [a.body for a in answers] == [str(n).encode() for n in range(7)]
        assert server.connections == client.connections_made == 2
        assert client.open_connections("127.0.0.1", server.port) == 2
        # A closed connection gives its place up: the next requests open a new one.
        server.close_idle_connections()
        for _ in range(50):
            if client.open_connections("127.0.0.1", server.port) == 0:
                break
            await asyncio.sleep(0.01)
        assert client.open_connections("127.0.0.1", server.port) == 0
        answers = await asyncio.gather(*(client.request("GET", f"{server.url}/again") for _ in range(3)))
        assert {a.status for a in answers} == {200} and client.connections_made == 4

    # Refused connections give their places back too.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with contextlib.closing(EngineClient(max_connections_per_host=1)) as client:
        for _ in range(3):
            with pytest.raises(EngineUnavailable):
                await client.request("GET", f"http://127.0.0.1:{port}/")
        assert client.open_connections("127.0.0.1", port) == 0
