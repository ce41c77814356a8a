"""A lean keep-alive HTTP/1.1 client for the Jupyter extension's calls to its own engine.

Why not aiohttp: every request through ``{base_url}tfserve/v1`` is forwarded to the
engine on the Jupyter server's one event loop, and profiling that path under load
showed aiohttp's per-request machinery (request and response objects, the
connector's bookkeeping, its stream reader and several event-loop hops) at about a
quarter of the Jupyter process's CPU per forwarded predict. The peer here is not the
open web: it is our own engine on 127.0.0.1 (or the address it was told to bind),
speaking HTTP/1.1 with ``Content-Length`` answers. So this client does only what
that needs: one socket write per request (head and small body together), llhttp
(``httptools``, already the engine's own parser) to read the answer straight from
``data_received``, and a stack of idle connections per (host, port).

Its rules:

- Connections are kept alive and reused, most recently used first; one idle longer
  than ``idle_seconds``, one the engine answered with ``Connection: close``, and one
  that saw any error or timeout are closed, never reused. At most
  ``max_connections_per_host`` are open at once; further requests queue for one.
- A request has ``timeout`` seconds to be answered in full, checked by one timer for
  all requests in flight (about once a second), not a timer per request.
- One retry, and only one case for it: a connection taken from the idle pool that
  turns out closed before any byte of the answer arrived (the engine restarted, or
  closed it while idle). The request is then sent once more, on a new connection (or,
  at the connection limit, one a finished exchange hands over), and not again. A new
  connection that fails is not retried: the caller answers 503.
- Request bodies are sent with ``Content-Length``, as the caller's chunks (no join).
  Answers may be delimited by ``Content-Length``, chunked, or the connection's close.
- Not for: TLS, proxies, ``HEAD``, ``Expect: 100-continue``, upgrades, pipelining.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import httptools

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 300.0
IDLE_SECONDS = 30.0  # well under the engine's own idle timeout (300 s), so it rarely closes one first
MAX_IDLE_PER_HOST = 64
MAX_CONNECTIONS_PER_HOST = 256  # more requests at once wait for a connection (aiohttp's limit here was 256)
# A body up to this size goes out in the same write as the head (one copy of a small body, one syscall).
COALESCE_BYTES = 16 * 1024
_BAD_TARGET = re.compile(r"[\s\x00-\x1f\x7f]")
_BAD_HEADER = re.compile(r"[\r\n\x00]")
_NO_BODY_STATUSES = frozenset({204, 304})

Body = bytes | bytearray | memoryview
Origin = tuple[str, int]


class EngineUnavailable(ConnectionError):
    """The engine could not be reached, or the connection ended before its answer was complete."""


class _ClosedBeforeAnswer(EngineUnavailable):
    """The connection closed before any byte of the answer: safe to send again if it had been idle."""


@dataclass(slots=True)
class EngineResponse:
    """One answer: its status, its headers (names in lower case; repeats joined by ", ") and its body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


@functools.lru_cache(maxsize=64)
def _origin(url: str) -> tuple[str, int, str, int]:
    """``http://host:port/...`` → (host, port, Host header value, where the target starts)."""
    if not url.startswith("http://"):
        raise ValueError(f"Only http:// URLs are supported, not {url!r}")
    slash = url.find("/", 7)
    netloc = url[7:] if slash < 0 else url[7:slash]
    if netloc.startswith("["):  # [IPv6]:port
        host, _, rest = netloc[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = netloc.partition(":")
    if not host or (port_text and not port_text.isdigit()):
        raise ValueError(f"Not a host and port: {url!r}")
    return host, int(port_text or 80), netloc, len(url) if slash < 0 else slash


def _request_head(method: str, target: str, host_header: str, headers: Mapping[str, str] | None,
                  length: int | None) -> bytes:
    if _BAD_TARGET.search(target) or _BAD_TARGET.search(method):
        raise ValueError(f"Refusing to send a request line with whitespace or control characters: {target!r}")
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host_header}\r\n"]
    if headers:
        for name, value in headers.items():
            if _BAD_HEADER.search(name) or _BAD_HEADER.search(value) or ":" in name:
                raise ValueError(f"Refusing to send header {name!r} with a line break or NUL in it")
            lines.append(f"{name}: {value}\r\n")
    if length is not None:
        lines.append(f"Content-Length: {length}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


class _Connection(asyncio.Protocol):
    """One keep-alive connection: at most one exchange at a time, its answer parsed as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.deadline = 0.0  # loop time by which the exchange in flight must be answered
        self.on_lost: Callable[[], None] | None = None  # the pool's bookkeeping, called once when it closes
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[EngineResponse] | None = None
        self._received = False
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._headers_done = False
        self._delimited = True

    # --- used by EngineClient

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def exchange(self, head: bytes, body: Sequence[Body]) -> asyncio.Future[EngineResponse]:
        """Send one request; the future is its answer (or EngineUnavailable)."""
        assert self.transport is not None and self._waiter is None
        waiter: asyncio.Future[EngineResponse] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._received = False
        self._headers_done = False
        write = self.transport.write
        if len(body) == 1 and len(body[0]) <= COALESCE_BYTES:
            write(head + body[0])
        else:
            write(head)
            for chunk in body:
                if chunk:
                    write(chunk)
        return waiter

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def time_out(self, seconds: float) -> None:
        self._fail(TimeoutError(f"the engine did not answer within {seconds:g} s"))
        self.abort()

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: this connection is out of step
            log.debug("tfserve engine client: %d unexpected bytes on an idle connection", len(data))
            self.abort()
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(EngineUnavailable(f"the engine's answer could not be parsed: {error}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost()
        if self._waiter is None or self._waiter.done():
            return
        if not self._received:
            self._fail(_ClosedBeforeAnswer(f"the engine closed the connection before answering"
                                           f"{f': {exc}' if exc else ''}"))
        elif self._headers_done and not self._delimited:  # the body ran until the close
            self._complete(keep_alive=False)
        else:
            self._fail(EngineUnavailable("the engine closed the connection in the middle of its answer"
                                         f"{f': {exc}' if exc else ''}"))

    # --- httptools callbacks (they must not raise)

    def on_message_begin(self) -> None:
        self._headers = {}
        self._body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        self._headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = True
        self._delimited = ("content-length" in self._headers or self._status in _NO_BODY_STATUSES
                           or "chunked" in self._headers.get("transfer-encoding", "").lower())

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:  # an interim answer; the real one follows on the same connection
            self._headers_done = False
            return
        self._complete(keep_alive=self._parser.should_keep_alive())

    # ---

    def _complete(self, keep_alive: bool) -> None:
        waiter, self._waiter = self._waiter, None
        body = self._body
        response = EngineResponse(self._status, self._headers, body[0] if len(body) == 1 else b"".join(body))
        self._body = []
        if not keep_alive:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def _fail(self, error: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


class EngineClient:
    """Requests to the engine over pooled keep-alive HTTP/1.1 connections (see the module docstring).

    At most ``max_connections_per_host`` connections are open to one (host, port); requests
    beyond that wait for one. Use it from one event loop (the Jupyter server's);
    :meth:`close` when done.
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_SECONDS, idle_seconds: float = IDLE_SECONDS,
                 max_idle_per_host: int = MAX_IDLE_PER_HOST,
                 max_connections_per_host: int = MAX_CONNECTIONS_PER_HOST) -> None:
        self.timeout = timeout
        self.idle_seconds = idle_seconds
        self.max_idle_per_host = max_idle_per_host
        self.max_connections_per_host = max_connections_per_host
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._busy: set[_Connection] = set()
        # Connections open or being opened, per origin, and requests waiting for one.
        self._open: dict[Origin, int] = {}
        self._queued: dict[Origin, deque[asyncio.Future[_Connection | None]]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_seconds = min(1.0, timeout / 4)
        self.connections_made = 0  # for tests and logs: how many TCP connections were opened
        self._closed = False

    async def request(self, method: str, url: str, headers: Mapping[str, str] | None = None,
                      body: Body | Sequence[Body] | None = None) -> EngineResponse:
        """Send ``method url`` with ``headers`` and ``body`` (bytes, or a sequence of chunks sent in order).

        A body, even an empty one, goes with its ``Content-Length``; ``None`` sends none.
        Raises EngineUnavailable (nothing listens or accepts within ``timeout`` seconds, or the
        connection ended early), TimeoutError (no complete answer within ``timeout`` seconds of
        sending, checked about once a second, or no free connection within ``timeout``),
        ValueError (a URL or header this client will not send).
        """
        if self._closed:
            raise EngineUnavailable("the client to the engine is closed (the extension is stopping)")
        if method == "HEAD":
            raise ValueError("HEAD is not supported: its answer has a length but no body")
        host, port, host_header, start = _origin(url)
        chunks: Sequence[Body] = () if body is None else (body,) if isinstance(body, Body) else body
        length = None if body is None else sum(len(chunk) for chunk in chunks)
        head = _request_head(method, url[start:] or "/", host_header, headers, length)
        key = (host, port)
        loop = asyncio.get_running_loop()
        connection, reused = await self._acquire(key, take_idle=True)
        while True:
            self._busy.add(connection)
            # Bounded by the sweep (one timer for all exchanges), not a timer per request.
            connection.deadline = loop.time() + self.timeout
            if self._sweep is None:
                self._sweep = loop.call_later(self._sweep_seconds, self._time_out_overdue)
            try:
                response = await connection.exchange(head, chunks)
            except _ClosedBeforeAnswer:
                connection.abort()
                if not reused or self._closed:
                    raise
                log.debug("tfserve engine client: an idle connection to %s:%d was closed; sending again on a new "
                          "one", host, port)
                self._busy.discard(connection)
                connection, _ = await self._acquire(key, take_idle=False)
                reused = False  # the one retry: whatever this connection does, it is not sent again
                continue
            except BaseException:  # a timeout, a cancellation, a broken answer: never reuse it
                connection.abort()
                raise
            finally:
                self._busy.discard(connection)
            self._release(key, connection)
            return response

    def close(self) -> None:
        """Close every connection, idle or in use (an exchange in flight fails with EngineUnavailable).

        Later requests fail with EngineUnavailable too.
        """
        self._closed = True
        for stack in self._idle.values():
            for connection in stack:
                connection.abort()
        self._idle.clear()
        for connection in list(self._busy):
            connection.abort()
        self._busy.clear()
        for queue in self._queued.values():
            for waiter in queue:
                if not waiter.done():
                    waiter.set_exception(EngineUnavailable("the client to the engine was closed"))
        self._queued.clear()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def idle_connections(self, host: str, port: int) -> int:
        """How many usable idle connections to (host, port) the pool holds."""
        return sum(connection.usable for connection in self._idle.get((host, port), ()))

    def open_connections(self, host: str, port: int) -> int:
        """How many connections to (host, port) are open or being opened."""
        return self._open.get((host, port), 0)

    # --- the pool

    async def _acquire(self, key: Origin, take_idle: bool) -> tuple[_Connection, bool]:
        """A connection for one exchange, and whether it had served one before."""
        if take_idle:
            connection = self._take_idle(key)
            if connection is not None:
                return connection, True
        if self._open.get(key, 0) < self.max_connections_per_host:
            self._open[key] = self._open.get(key, 0) + 1  # this slot is ours until the connection closes
        else:
            handed = await self._wait_for_turn(key)
            if handed is not None:
                return handed, True
        return await self._connect(key), False

    async def _wait_for_turn(self, key: Origin) -> _Connection | None:
        """Queue for a connection to ``key``: one handed over by a finished exchange, or None (a free slot)."""
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        self._queued.setdefault(key, deque()).append(waiter)
        try:
            async with asyncio.timeout(self.timeout):
                return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()  # given to us just as we gave up: pass it on
                if handed is None:
                    self._free_slot(key)
                else:
                    self._release(key, handed)
            else:
                waiter.cancel()
            raise

    def _free_slot(self, key: Origin) -> None:
        """A connection to ``key`` closed (or failed to open): its slot goes to the first waiter, if any."""
        queue = self._queued.get(key)
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        left = self._open.get(key, 0) - 1
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)

    def _take_idle(self, key: Origin) -> _Connection | None:
        stack = self._idle.get(key)
        if not stack:
            return None
        oldest_allowed = time.monotonic() - self.idle_seconds
        while stack:
            connection = stack.pop()
            if connection.usable and connection.idle_since >= oldest_allowed:
                return connection
            connection.abort()
        return None

    def _release(self, key: Origin, connection: _Connection) -> None:
        """After a complete exchange: to the first waiting request, else to the idle pool, else closed."""
        if not connection.usable or self._closed:
            connection.abort()
            return
        queue = self._queued.get(key)
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        stack = self._idle.get(key)
        if stack is None:
            stack = self._idle[key] = deque()
        now = time.monotonic()
        while stack and (not stack[0].usable or stack[0].idle_since < now - self.idle_seconds):
            stack.popleft().abort()  # the least recently used end: closed or idle too long
        if len(stack) >= self.max_idle_per_host:
            connection.abort()
            return
        connection.idle_since = now
        stack.append(connection)

    async def _connect(self, key: Origin) -> _Connection:
        """Open a connection in a slot the caller holds (given back if this fails)."""
        host, port = key
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                _, connection = await loop.create_connection(_Connection, host, port)
        except BaseException as error:
            self._free_slot(key)
            if isinstance(error, OSError):  # refused, unreachable, or no answer to the SYN in time
                raise EngineUnavailable(f"cannot connect to the engine at {host}:{port}: {error}") from error
            raise
        self.connections_made += 1
        connection.on_lost = lambda: self._free_slot(key)
        if self._closed:
            connection.abort()
            raise EngineUnavailable("the client to the engine was closed")
        return connection

    def _time_out_overdue(self) -> None:
        """Every ``_sweep_seconds`` while exchanges are in flight: fail those past their deadline."""
        self._sweep = None
        if not self._busy:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        for connection in [c for c in self._busy if c.deadline <= now]:
            connection.time_out(self.timeout)
        self._sweep = loop.call_later(self._sweep_seconds, self._time_out_overdue)
