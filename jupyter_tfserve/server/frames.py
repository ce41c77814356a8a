"""Pickled messages between the engine and its front-door processes, over one Unix stream socket.

A frame is a 4-byte length and a pickle (protocol 5, buffers in band: the tensors a front door
sends are under 256 KiB, where a second copy costs less than the bookkeeping of out-of-band
buffers). Both ends are the same program started by the same user, so unpickling is no wider a
door than the process itself; the socket pair is created by the engine and inherited, never named.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import struct
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("<I")
MAX_FRAME_BYTES = 64 << 20


class FrameProtocol(asyncio.Protocol):
    """Calls ``on_message`` with each message in order; ``send`` writes one.

    Messages sent in one turn of the event loop go out in one write: a batch's answers complete
    together, and a system call per answer was a fifth of the engine's loop under load.
    """

    def __init__(self, on_message: Callable[[Any], None], on_lost: Callable[[], None] | None = None) -> None:
        self.on_message = on_message
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.outgoing: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, message: Any) -> None:
        if self.closed or self.transport is None:
            return
        data = pickle.dumps(message, protocol=5)
        if not self.outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self.outgoing += (_LENGTH.pack(len(data)), data)

    def _flush(self) -> None:
        outgoing, self.outgoing = self.outgoing, []
        if not self.closed and self.transport is not None:
            self.transport.write(b"".join(outgoing))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        start = 0
        end = len(buffer)
        while end - start >= 4:
            (size,) = _LENGTH.unpack_from(buffer, start)
            if size > MAX_FRAME_BYTES:
                log.error("a front-door message of %d bytes: closing the channel", size)
                self.transport.close()  # type: ignore[union-attr]
                return
            if end - start - 4 < size:
                break
            message = pickle.loads(bytes(buffer[start + 4:start + 4 + size]))
            start += 4 + size
            try:
                self.on_message(message)
            except Exception:
                log.exception("a front-door message could not be handled")
        del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.on_lost is not None:
            self.on_lost()
