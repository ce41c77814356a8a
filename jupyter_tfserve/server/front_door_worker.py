"""A REST front-door process: accepts on the engine's port, parses HTTP and JSON, and hands tensors to the engine.

Started by the engine (``--rest_front_processes``), one per core it can spare. Each binds the
REST port with ``SO_REUSEPORT``, so the kernel spreads new connections across them, and takes
from each connection the requests the engine's own direct path takes: an owner's (or an open
engine's) ``POST .../models/<name>[...]:predict|classify|regress`` over HTTP/1.1 with a small
``Content-Length`` body. For :predict it parses and decodes the body here, with the signatures
the engine gave it for that model, and sends the decoded tensors; the engine runs them through
the same request path (its batch scheduler sees every request) and sends the output tensors back,
which are encoded here. Anything else on a connection (a share token, a GET, a body too large, a
head this framing does not take) is handed over: the socket itself and every byte read from that
request on go to the engine, which serves the connection from there on as if it had accepted it.

This module must not import TensorFlow or the engine: a front door starts in a fraction of a
second and holds no model.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import struct
import sys
import time
from typing import Any

import httptools
from tornado import httputil

from ..engine.codecs.decode_workers import decode_body
from ..engine.codecs.json_encode import encode_json, encode_predict_response
from ..engine.errors import ServingError
from ..wire import ENGINE_SECRET_HEADER, ROUTE_KEY_HEADER, bearer_token
from .auth import secret_matches
from .frames import FrameProtocol
from .http_front import request_head
from .rest_wire import Dates, ModelPath, answer_bytes, call_from_head, log_refusal

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
# Reading pauses while this much of a connection's bytes wait (pipelined requests, a body still arriving).
BUFFERED_BYTES = 1 << 20
HANDOFF_CHUNK_BYTES = 60_000  # well under a Unix datagram's limit
HANDOFF_HEADER = struct.Struct("<I")  # total bytes handed over with the connection


class _Head:
    """httptools' callbacks for one request head."""

    __slots__ = ("complete", "headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


def parse_head(head: bytes) -> tuple[httputil.RequestStartLine, httputil.HTTPHeaders] | None:
    """The start line and headers of a complete request head, as the engine's HTTP layer reads them; None if
    llhttp finds anything wrong with it (the engine then reads it again and answers in its own words)."""
    fields = _Head()
    parser = httptools.HttpRequestParser(fields)
    try:
        parser.feed_data(head)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None
    if not fields.complete:
        return None
    return request_head(parser, fields.url, fields.headers)


class _Call:
    __slots__ = ("close", "model", "route_key", "started", "summary", "verb")

    def __init__(self, verb: str, model: ModelPath, route_key: str | None, summary: str, close: bool) -> None:
        self.verb, self.model, self.route_key, self.summary, self.close = verb, model, route_key, summary, close
        self.started = time.perf_counter()


class FrontDoorWorker:
    """What a front door shares across its connections: the engine channel, the admission rule, signatures."""

    def __init__(self, config: dict[str, Any], channel: FrameProtocol, handoff: socket.socket) -> None:
        self.secret: str = config["secret"] or ""
        self.require_auth: bool = config["require_auth"]
        self.max_body_bytes: int = config["max_body_bytes"]
        self.reserved_paths: tuple[str, ...] = tuple(config["reserved_paths"])
        self.idle_seconds: float = config["idle_seconds"]
        self.channel = channel
        self.handoff = handoff
        self.dates = Dates()
        self.ids = itertools.count()
        self.waiting: dict[int, asyncio.Future] = {}
        self.signatures: dict[ModelPath, tuple[dict, Any]] = {}
        self.fetching: dict[ModelPath, asyncio.Future] = {}

    # -- from the engine ---------------------------------------------------------------------

    def on_message(self, message: tuple) -> None:
        kind = message[0]
        if kind == "answer":
            future = self.waiting.pop(message[1], None)
            if future is not None and not future.done():
                future.set_result(message[2])
        elif kind == "signatures":
            _, model, signatures, limits = message
            self.signatures[model] = (signatures, limits)
            future = self.fetching.pop(model, None)
            if future is not None and not future.done():
                future.set_result(None)

    # -- admission ---------------------------------------------------------------------------

    def admit(self, start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders,
              peer: str) -> _Call | None:
        """A call this process answers, or None: the connection goes to the engine from this request on."""
        call = call_from_head(start_line, headers, self.max_body_bytes, self.reserved_paths)
        if call is None or not self._is_owner(headers):
            return None
        verb, model = call
        close = (headers.get("Connection") or "").lower() == "close"
        return _Call(verb, model, headers.get(ROUTE_KEY_HEADER), f"POST {start_line.path} ({peer})", close)

    def _is_owner(self, headers: httputil.HTTPHeaders) -> bool:
        """The engine's ``Authenticator.authenticate`` for the owner; a share token is the engine's to judge."""
        if secret_matches(self.secret, headers.get(ENGINE_SECRET_HEADER)):
            return True
        return bearer_token(headers.get("Authorization")) is None and not self.require_auth

    # -- a call --------------------------------------------------------------------------------

    async def answer(self, call: _Call, body: bytes) -> bytes:
        try:
            status, version, payload = await self._answer(call, body)
        except Exception:
            log.exception("Uncaught exception in %s", call.verb)
            status, version, payload = 500, None, encode_json({"error": "Internal Server Error"})
        if status >= 400:
            log_refusal(status, call.summary, call.started)
        return answer_bytes(status, version, payload, call.close, self.dates)

    async def _answer(self, call: _Call, body: bytes) -> tuple[int, str | None, bytes]:
        decoded = None
        if call.verb == "predict":
            signatures, limits = await self._signatures(call.model)
            try:
                decoded = decode_body(body, signatures, limits)
            except ServingError as error:  # the body as a whole: answered before the engine, as inline
                return error.code.http_status, None, encode_json({"error": error.message})
        call_id = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.waiting[call_id] = future
        self.channel.send(("call", call_id, call.verb, call.model, call.route_key, body, decoded))
        status, version, outputs, row_format, payload, stale = await future
        if stale:
            self.signatures.pop(call.model, None)
        if outputs is not None:
            try:
                payload = encode_predict_response(outputs, row_format)
            except ServingError as error:
                return error.code.http_status, None, encode_json({"error": error.message})
        return status, version, payload

    async def _signatures(self, model: ModelPath) -> tuple[dict, Any]:
        known = self.signatures.get(model)
        if known is not None:
            return known
        future = self.fetching.get(model)
        if future is None:
            future = self.fetching[model] = asyncio.get_running_loop().create_future()
            self.channel.send(("signatures", model))
        await future
        return self.signatures[model]

    # -- hand-off ----------------------------------------------------------------------------

    def hand_off(self, sock: socket.socket, data: bytes) -> None:
        """The connection, and the bytes read from it that are not answered yet, to the engine."""
        fd = os.dup(sock.fileno())
        try:
            first = HANDOFF_HEADER.pack(len(data)) + data[:HANDOFF_CHUNK_BYTES]
            socket.send_fds(self.handoff, [first], [fd])
            for start in range(HANDOFF_CHUNK_BYTES, len(data), HANDOFF_CHUNK_BYTES):
                self.handoff.sendall(data[start:start + HANDOFF_CHUNK_BYTES])
        finally:
            os.close(fd)


class _Connection(asyncio.Protocol):
    """One client connection: calls answered in order, one at a time, until one is the engine's to answer."""

    def __init__(self, worker: FrontDoorWorker) -> None:
        self.worker = worker
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.buffer = bytearray()
        self.busy = False
        self.paused = False
        self.leaving = False  # handed over (or about to be, once the last answer is written)
        self.closed = False
        self.idle: asyncio.TimerHandle | None = None
        self.answering: asyncio.Future | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else "0.0.0.0"
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.leaving or self.closed:
            return
        if len(self.buffer) > BUFFERED_BYTES and not self.paused:
            self.paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        if not self.busy:
            self._next()

    def _next(self) -> None:
        buffer = self.buffer
        while not self.busy and not self.closed:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEADER_BYTES or buffer.count(b"\n") != buffer.count(b"\r\n"):
                    self._leave()
                elif self.paused:
                    self.paused = False
                    self.transport.resume_reading()  # type: ignore[union-attr]
                return
            head = bytes(buffer[:end + 4])
            if head.count(b"\n") != head.count(b"\r\n"):  # a bare LF: the engine's parser judges it
                self._leave()
                return
            parsed = parse_head(head)
            call = self.worker.admit(*parsed, self.peer) if parsed is not None else None
            if call is None:
                self._leave()
                return
            total = end + 4 + int(parsed[1]["Content-Length"])  # type: ignore[index]
            if len(buffer) < total:
                if self.paused:
                    self.paused = False
                    self.transport.resume_reading()  # type: ignore[union-attr]
                return
            body = bytes(buffer[end + 4:total])
            del buffer[:total]
            if self.idle is not None:
                self.idle.cancel()
                self.idle = None
            self.busy = True
            self.answering = asyncio.ensure_future(self._answer(call, body))

    async def _answer(self, call: _Call, body: bytes) -> None:
        data = await self.worker.answer(call, body)
        self.busy = False
        if self.closed:
            return
        self.transport.write(data)  # type: ignore[union-attr]
        if call.close:
            self.closed = True
            self.transport.close()  # type: ignore[union-attr]
            return
        if not self.buffer:
            self._arm_idle()
        self._next()

    def _leave(self) -> None:
        """Hand the connection over once what was written to it has gone out (the engine writes next)."""
        self.leaving = True
        transport = self.transport
        assert transport is not None
        transport.pause_reading()
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        if transport.get_write_buffer_size():
            transport.set_write_buffer_limits(high=0, low=0)  # resume_writing once it is all written
            return
        self._hand_over()

    def resume_writing(self) -> None:
        if self.leaving and not self.closed:
            self._hand_over()

    def _hand_over(self) -> None:
        transport = self.transport
        assert transport is not None
        self.closed = True
        try:
            self.worker.hand_off(transport.get_extra_info("socket"), bytes(self.buffer))
        except OSError as error:
            log.warning("could not hand a connection to the engine: %s", error)
            transport.abort()
            return
        transport.close()  # closes this process's descriptor only; the engine's stays open

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.idle is not None:
            self.idle.cancel()

    def _arm_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(self.worker.idle_seconds, self._idle_expired)

    def _idle_expired(self) -> None:
        self.idle = None
        if not self.busy and not self.leaving and not self.closed:
            self.closed = True
            self.transport.close()  # type: ignore[union-attr]


def reuseport_socket(family: int, address: Any) -> socket.socket:
    """A TCP socket bound to ``address`` in its port's SO_REUSEPORT group (IPv6 ones v6-only, as tornado's)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def listening_socket(family: int, address: Any) -> socket.socket:
    """A socket on the engine's REST address, in the port's SO_REUSEPORT group, listening."""
    sock = reuseport_socket(family, address)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve(call_fd: int, handoff_fd: int) -> None:
    loop = asyncio.get_running_loop()
    configured: asyncio.Future = loop.create_future()
    gone: asyncio.Future = loop.create_future()
    worker: FrontDoorWorker | None = None

    def on_message(message: tuple) -> None:
        if worker is not None:
            worker.on_message(message)
        elif message[0] == "config" and not configured.done():
            configured.set_result(message[1])

    def on_lost() -> None:
        if not gone.done():
            gone.set_result(None)

    _, channel = await loop.connect_accepted_socket(lambda: FrameProtocol(on_message, on_lost),
                                                    socket.socket(fileno=call_fd))
    config = await configured
    logging.basicConfig(level=config["log_level"], stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    handoff = socket.socket(fileno=handoff_fd)
    handoff.setblocking(True)
    worker = FrontDoorWorker(config, channel, handoff)
    servers = []
    for family, address in config["addresses"]:
        servers.append(await loop.create_server(lambda: _Connection(worker), sock=listening_socket(family, address)))
    channel.send(("ready", os.getpid()))
    await gone  # the engine closed the channel (it stops, or it is gone)
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m jupyter_tfserve.server.front_door_worker CALL_FD HANDOFF_FD`` (the engine starts it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the engine's terminal is the engine's to handle
    call_fd, handoff_fd = (int(arg) for arg in (argv if argv is not None else sys.argv[1:]))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(call_fd, handoff_fd))


if __name__ == "__main__":
    main()
