"""The REST port's HTTP/1.1 layer: httptools' C parser on an asyncio protocol, in front of tornado's Application.

Tornado's own connection (``HTTP1Connection`` over ``IOStream``) reads headers through a regex
search on a Python buffer, splits them in Python, and runs a coroutine, several futures and a
``sleep(0)`` per request: measured on this machine, that is most of what a no-op tornado
request costs. Here a connection is one ``asyncio.Protocol``; llhttp (through httptools) parses
in C, and bytes go to the transport without a stream buffer in between.

Everything above the wire stays tornado's: the same Application routes the request, the same
``RequestHandler`` code writes the same status line and headers, and the contract a handler
relies on (``headers_received`` before the body, its prepare finished before any
``data_received``, ``set_max_body_size`` from ``prepare``, the answer possibly written before the
body is read) is kept as ``tornado.http1connection`` keeps it, so the body limits, the early
refusals and the error bodies of the REST handlers do not change.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from typing import Any

import httptools
import orjson
from tornado import httputil

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024  # tornado's default max_header_size
IDLE_CONNECTION_SECONDS = 300.0
# A body that arrives before the handler is ready for it (its prepare has not run yet) is held up to
# this much; past it, reading pauses until the handler takes it.
_EARLY_BODY_BYTES = 256 * 1024


class _Context:
    """What tornado's HTTPServerRequest reads from ``connection.context``."""

    __slots__ = ("address", "protocol", "remote_ip")

    def __init__(self, peer: Any) -> None:
        self.address = peer
        self.remote_ip = peer[0] if isinstance(peer, tuple) and peer else "0.0.0.0"
        self.protocol = "http"

    def __str__(self) -> str:
        return str(self.remote_ip)


def request_head(parser: httptools.HttpRequestParser, url: bytes, header_items: list[tuple[bytes, bytes]]
                 ) -> tuple[httputil.RequestStartLine, httputil.HTTPHeaders]:
    """The start line and headers llhttp read, as tornado's handlers see them (latin-1, as tornado decodes)."""
    headers = httputil.HTTPHeaders()
    for name, value in header_items:
        headers.add(name.decode("latin1"), value.decode("latin1"))
    return httputil.RequestStartLine(parser.get_method().decode("latin1"), url.decode("latin1"),
                                     "HTTP/" + parser.get_http_version()), headers


def _done_future() -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def _can_keep_alive(start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders) -> bool:
    """tornado's ``HTTP1Connection._can_keep_alive``, so clients see the same connection reuse."""
    connection = headers.get("Connection")
    connection = connection.lower() if connection is not None else None
    if start_line.version == "HTTP/1.1":
        return connection != "close"
    if ("Content-Length" in headers or "Transfer-Encoding" in headers
            or start_line.method in ("HEAD", "GET")):
        return connection == "keep-alive"
    return False


class _Exchange:
    """One request and its answer: tornado's ``HTTPConnection`` as a handler sees it."""

    def __init__(self, conn: _Connection, start_line: httputil.RequestStartLine,
                 headers: httputil.HTTPHeaders, content_length: int | None) -> None:
        self.conn = conn
        self.context = conn.context
        self.sockname = conn.sockname
        self.start_line = start_line
        self.headers = headers
        self.content_length = content_length
        self.max_body_size = conn.server.max_body_size
        self.disconnect_on_finish = not _can_keep_alive(start_line, headers)
        self.delegate: httputil.HTTPMessageDelegate | None = None
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self.received = 0
        self.prepared = False
        self.blocked = False  # a data_received future is running
        self.read_complete = False
        self.read_finished = False
        self.headers_written = False
        self.write_finished = False
        self.chunking = False
        self.expected_remaining: int | None = None
        self.close_callback: Any = None
        self.direct: Any = None  # a DirectCall: this exchange runs without tornado's RequestHandler
        self.answering: asyncio.Future | None = None

    # -- reading (driven by the connection's parser) ------------------------------------------

    def begin(self) -> None:
        direct = self.conn.server.direct
        if direct is not None:
            self.direct = direct.admit(self.start_line, self.headers, self.context.remote_ip)
            if self.direct is not None:
                self.prepared = True
                self._pump()
                return
        self.delegate = self.conn.server.delegate.start_request(self.conn, self)
        try:
            prepared = self.delegate.headers_received(self.start_line, self.headers)
        except Exception:
            log.error("Uncaught exception in %s %s", self.start_line.method, self.start_line.path, exc_info=True)
            self.conn.abort()
            return
        if prepared is None:
            self._prepared()
        else:
            asyncio.ensure_future(prepared).add_done_callback(self._prepared_done)

    def _prepared_done(self, future: asyncio.Future) -> None:
        if future.cancelled() or future.exception() is not None:
            if not future.cancelled():
                log.error("Uncaught exception in %s", self.start_line.path, exc_info=future.exception())
            self.conn.abort()
            return
        self._prepared()

    def _prepared(self) -> None:
        if self.conn.closed:
            return
        self.prepared = True
        if (self.content_length is not None and self.content_length > self.max_body_size) or (
                self.received > self.max_body_size):
            self.conn.bad_request("Content-Length too long", answered=self.write_finished or self.headers_written)
            return
        if self.headers.get("Expect") == "100-continue" and not self.write_finished:
            self.conn.transport.write(b"HTTP/1.1 100 (Continue)\r\n\r\n")
        self.conn.resume()
        self._pump()

    def body(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.max_body_size and self.prepared:
            self.conn.bad_request("body too large", answered=self.write_finished or self.headers_written)
            return
        if self.write_finished:
            return  # answered already: the rest of the body is read and dropped, as tornado does
        self.pending.append(chunk)
        self.pending_bytes += len(chunk)
        if self.prepared and not self.blocked:
            self._pump()
        elif self.pending_bytes > _EARLY_BODY_BYTES:
            self.conn.pause()

    def complete(self) -> None:
        self.read_complete = True
        if self.prepared and not self.blocked:
            self._pump()

    def _pump(self) -> None:
        if self.direct is not None:
            if self.read_complete and not self.read_finished:
                self.read_finished = True
                body = b"".join(self.pending)
                self.pending.clear()
                self.answering = asyncio.ensure_future(self._answer_directly(body))
            return
        delegate = self.delegate
        assert delegate is not None
        while self.pending:
            chunk = self.pending.popleft()
            self.pending_bytes -= len(chunk)
            if self.write_finished:
                continue
            try:
                waiting = delegate.data_received(chunk)
            except Exception:
                log.error("Uncaught exception reading %s", self.start_line.path, exc_info=True)
                self.conn.abort()
                return
            if waiting is not None:
                future = asyncio.ensure_future(waiting)
                if not future.done():
                    self.blocked = True
                    self.conn.pause()
                    future.add_done_callback(self._unblocked)
                    return
        if self.read_complete and not self.read_finished:
            self.read_finished = True
            if not self.write_finished:
                try:
                    delegate.finish()
                except Exception:
                    log.error("Uncaught exception in %s", self.start_line.path, exc_info=True)
                    self.conn.abort()
                    return
            if self.write_finished:
                self.conn.exchange_done(self)
        else:
            self.conn.resume()

    async def _answer_directly(self, body: bytes) -> None:
        data = await self.direct.answer(body, self.disconnect_on_finish)
        self.headers_written = True
        self.conn.write(data)
        self.write_finished = True
        if self.disconnect_on_finish:
            self.conn.close_after_write()
        else:
            self.conn.exchange_done(self)

    def _unblocked(self, future: asyncio.Future) -> None:
        self.blocked = False
        if future.cancelled() or future.exception() is not None:
            self.conn.abort()
            return
        if not self.conn.closed:
            self._pump()

    def connection_lost(self) -> None:
        if self.close_callback is not None:
            callback, self.close_callback = self.close_callback, None
            callback()
        if self.delegate is not None and not self.read_finished:
            try:
                self.delegate.on_connection_close()
            except Exception:
                log.debug("on_connection_close failed", exc_info=True)

    # -- tornado's HTTPConnection interface ---------------------------------------------------

    def set_close_callback(self, callback: Any) -> None:
        self.close_callback = callback

    def set_max_body_size(self, max_body_size: int) -> None:
        self.max_body_size = max_body_size

    def set_body_timeout(self, timeout: float) -> None:
        """Bodies have no separate timeout here; the idle timeout covers a stalled client."""

    def detach(self) -> Any:
        raise NotImplementedError("the REST front door does not hand its sockets over")

    def write_headers(self, start_line: httputil.ResponseStartLine, headers: httputil.HTTPHeaders,
                      chunk: bytes | None = None) -> asyncio.Future:
        request = self.start_line
        self.headers_written = True
        code = start_line.code
        self.chunking = (request.version == "HTTP/1.1" and request.method != "HEAD"
                         and code not in (204, 304) and not 100 <= code < 200 and "Content-Length" not in headers)
        if request.version == "HTTP/1.1" and self.disconnect_on_finish:
            headers["Connection"] = "close"
        if request.version == "HTTP/1.0" and self.headers.get("Connection", "").lower() == "keep-alive":
            headers["Connection"] = "Keep-Alive"
        if self.chunking:
            headers["Transfer-Encoding"] = "chunked"
        if request.method == "HEAD" or code == 304:
            self.expected_remaining = 0
        elif "Content-Length" in headers:
            self.expected_remaining = int(headers["Content-Length"])
        lines = [f"HTTP/1.1 {code} {start_line.reason}"]
        lines.extend(f"{name}: {value}" for name, value in headers.get_all())
        for line in lines:
            if "\r" in line or "\n" in line:
                raise ValueError(f"Illegal characters (CR or LF) in header: {line!r}")
        data = "\r\n".join(lines).encode("latin1") + b"\r\n\r\n"
        if chunk:
            data += self._format(chunk)
        return self.conn.write(data)

    def _format(self, chunk: bytes) -> bytes:
        if self.expected_remaining is not None:
            self.expected_remaining -= len(chunk)
            if self.expected_remaining < 0:
                self.conn.abort()
                raise httputil.HTTPOutputError("Tried to write more data than Content-Length")
        if self.chunking and chunk:
            return b"%x\r\n%b\r\n" % (len(chunk), chunk)
        return chunk

    def write(self, chunk: bytes) -> asyncio.Future:
        return self.conn.write(self._format(chunk))

    def finish(self) -> None:
        if self.expected_remaining is not None and self.expected_remaining != 0 and not self.conn.closed:
            self.conn.abort()
            raise httputil.HTTPOutputError(f"Tried to write {self.expected_remaining} bytes less than Content-Length")
        if self.chunking:
            self.conn.write(b"0\r\n\r\n")
        self.write_finished = True
        self.close_callback = None
        if not self.read_finished:
            # Answered before the whole body was read: the rest is dropped and the connection closed
            # once the answer is out (the next request's start cannot be found in an unread body).
            self.disconnect_on_finish = True
            self.pending.clear()
        if self.disconnect_on_finish:
            self.conn.close_after_write()
        elif self.read_finished:
            self.conn.exchange_done(self)


class _Connection(asyncio.Protocol):
    """One TCP connection: parses requests, runs them one at a time in order (pipelining included)."""

    def __init__(self, server: FrontDoor, preread: bytes = b"") -> None:
        self.server = server
        self.preread = preread  # what a front-door process read from this connection before handing it over
        self.transport: asyncio.Transport | None = None
        self.context: _Context | None = None
        self.sockname: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        self.broken: str | None = None  # why the bytes after the requests in hand could not be parsed
        self.paused = False
        self.write_paused: asyncio.Future | None = None
        self.active: _Exchange | None = None
        self.parsing: _Exchange | None = None
        self.queue: deque[_Exchange] = deque()
        self.url = b""
        self.header_items: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.idle: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  (uvloop's is not an asyncio.Transport subclass)
        self.context = _Context(transport.get_extra_info("peername"))
        self.sockname = transport.get_extra_info("sockname")
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.connections.add(self)
        self._arm_idle()
        if self.preread:
            preread, self.preread = self.preread, b""
            self.data_received(preread)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._malformed("upgrade is not served here")
        except httptools.HttpParserError as error:
            self._malformed(f"malformed HTTP: {error}")

    def _malformed(self, reason: str) -> None:
        """Bytes that are no request: answered 400 once the requests before them are answered, as tornado does."""
        active = self.active
        if active is not None and not active.write_finished:
            self.broken = reason
            self.pause()
        else:
            self.bad_request(reason, answered=active is not None and active.headers_written)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self.idle is not None:
            self.idle.cancel()
        if self.write_paused is not None and not self.write_paused.done():
            self.write_paused.set_result(None)
        for exchange in (self.active, *self.queue):
            if exchange is not None and not exchange.write_finished:
                exchange.connection_lost()
        self.queue.clear()
        self.active = self.parsing = None

    def pause_writing(self) -> None:
        if self.write_paused is None or self.write_paused.done():
            self.write_paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.write_paused is not None and not self.write_paused.done():
            self.write_paused.set_result(None)

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.header_items = []
        self.header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_items.append((name, value))
        self._count_header_bytes(len(name) + len(value) + 4)

    def _count_header_bytes(self, size: int) -> None:
        self.header_bytes += size
        if self.header_bytes > MAX_HEADER_BYTES:
            raise httptools.HttpParserError("headers too large")

    def on_headers_complete(self) -> None:
        start_line, headers = request_head(self.parser, self.url, self.header_items)
        length = headers.get("Content-Length")
        content_length = None
        if length is not None:
            if not length.isdigit():  # llhttp refused the rest; a repeated equal value is joined with ","
                values = {part.strip() for part in length.split(",")}
                if len(values) != 1 or not next(iter(values)).isdigit():
                    raise httptools.HttpParserError(f"bad Content-Length {length!r}")
                headers["Content-Length"] = length = values.pop()
            content_length = int(length)
        exchange = _Exchange(self, start_line, headers, content_length)
        self.parsing = exchange
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        if self.active is None:
            self.active = exchange
            exchange.begin()
        else:
            self.queue.append(exchange)
            self.pause()  # one request read ahead at most

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing.body(body)

    def on_message_complete(self) -> None:
        exchange, self.parsing = self.parsing, None
        if exchange is not None:
            exchange.complete()

    # -- used by exchanges --------------------------------------------------------------------

    def write(self, data: bytes) -> asyncio.Future:
        if self.closed or self.transport is None:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(ConnectionResetError("connection closed"))
            future.exception()
            return future
        self.transport.write(data)
        if self.write_paused is not None and not self.write_paused.done():
            return self.write_paused
        return _done_future()

    def exchange_done(self, exchange: _Exchange) -> None:
        if exchange is not self.active:
            return
        self.active = None
        if self.broken is not None and not self.queue:
            self.bad_request(self.broken, answered=False)
            return
        if self.queue:
            # Started on the next turn of the loop, not inside the answering handler's finish().
            self.active = self.queue.popleft()
            asyncio.get_running_loop().call_soon(self._begin, self.active)
        else:
            self._arm_idle()
            self.resume()

    def _begin(self, exchange: _Exchange) -> None:
        if not self.closed:
            exchange.begin()
            if not self.queue:
                self.resume()

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and not self.closed and not self.queue and self.broken is None:
            active = self.active
            held = active is not None and not active.prepared and active.pending_bytes > _EARLY_BODY_BYTES
            if active is not None and (active.blocked or held):
                return
            self.paused = False
            assert self.transport is not None
            self.transport.resume_reading()

    def bad_request(self, reason: str, *, answered: bool) -> None:
        """A message that cannot be read: 400 in TF Serving's error format (unless an answer has begun), then close."""
        log.info("Malformed HTTP message from %s: %s", self.context, reason)
        if self.transport is not None and not self.closed and not answered:
            body = orjson.dumps({"error": f"Malformed HTTP request: {reason}"})
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(body), body))
        self.close_after_write()

    def close_after_write(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()  # flushes what is buffered, then closes
        self.closed = True

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.closed = True

    def _arm_idle(self) -> None:
        """From the end of one exchange, the next request's headers must be in within the idle time (as tornado's
        ``idle_connection_timeout`` is its header timeout): armed once per exchange, not per packet."""
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(self.server.idle_seconds, self._idle_expired)

    def _idle_expired(self) -> None:
        self.idle = None
        if self.active is None and self.parsing is None:
            self.close_after_write()


class FrontDoor:
    """An HTTP/1.1 server for a tornado ``Application`` (any ``HTTPServerConnectionDelegate``)."""

    def __init__(self, delegate: httputil.HTTPServerConnectionDelegate, *, max_body_size: int,
                 idle_seconds: float = IDLE_CONNECTION_SECONDS, direct: Any = None) -> None:
        """``direct``: a :class:`~.model_call.DirectModelCalls`, for the requests it admits from their head."""
        self.delegate = delegate
        self.direct = direct
        self.max_body_size = max_body_size
        self.idle_seconds = idle_seconds
        self.connections: set[_Connection] = set()
        self._servers: list[asyncio.AbstractServer] = []

    async def add_sockets(self, sockets: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        for sock in sockets:
            server = await loop.create_server(lambda: _Connection(self), sock=sock, backlog=1024)
            self._servers.append(server)

    async def adopt(self, sock: socket.socket, preread: bytes) -> None:
        """Serve a connection accepted elsewhere (a front-door process), from the first byte it did not answer."""
        await asyncio.get_running_loop().connect_accepted_socket(lambda: _Connection(self, preread), sock)

    def stop(self) -> None:
        """Stop accepting; connections in flight finish their exchange and are closed."""
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            if conn.active is None:
                conn.close_after_write()
            else:
                conn.active.disconnect_on_finish = True


def listening_address(request: httputil.HTTPServerRequest) -> tuple:
    """The listening socket's address for a request on either HTTP layer (tornado's or this one)."""
    connection = request.connection
    sockname = getattr(connection, "sockname", None)
    if sockname is not None:
        return sockname
    return connection.stream.socket.getsockname()  # type: ignore[union-attr]
