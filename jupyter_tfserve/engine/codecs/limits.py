"""How much one request may decode to: the limits every codec checks before it allocates."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

try:  # an accelerator for the common request (one dense float tensor); everything works without it
    import simdjson
except ImportError:  # pragma: no cover - pysimdjson is a dependency, but has no wheel on some platforms
    simdjson = None

from ..errors import ServingError, resource_exhausted

# -- how much one request may decode to ------------------------------------------------------------

DEFAULT_MAX_DECODED_BYTES = 4 << 30
DEFAULT_DECODED_FLOOR_BYTES = 64 << 20
# The most a dense encoding needs per byte on the wire: an int64 of 0 is one byte of varint.
DECODED_BYTES_PER_WIRE_BYTE = 8


@dataclass(frozen=True)
class DecodeLimits:
    """How many bytes of tensors one request may decode to; checked before anything is allocated.

    A request states its own sizes: a TensorProto's shape (by TensorFlow's padding rule, one
    ``float_val`` with a shape of 2**29 is a 2 GiB array), a JSON list's length. Without a limit,
    whoever may call predict chooses how much memory the engine allocates. Any request may decode to
    ``floor_bytes`` (a zeros tensor sent as its shape alone is legitimate), a larger one to
    ``DECODED_BYTES_PER_WIRE_BYTE`` times its size on the wire, and none to more than ``max_bytes``.
    """

    max_bytes: int = DEFAULT_MAX_DECODED_BYTES
    floor_bytes: int = DEFAULT_DECODED_FLOOR_BYTES

    def limit_for(self, wire_bytes: int) -> int:
        """The decoded bytes allowed to a request of ``wire_bytes``."""
        return min(self.max_bytes, max(self.floor_bytes, DECODED_BYTES_PER_WIRE_BYTE * wire_bytes))


_DEFAULT_LIMITS = DecodeLimits()


class DecodeBudget:
    """One request's decoded bytes so far, against its :class:`DecodeLimits`.

    Decoders call :meth:`take` with an array's size *before* allocating it. The request's wire size
    may be given as a callable: a protobuf message's ``ByteSize`` costs a serialization, so it is
    asked only once a request decodes to more than the floor.
    """

    __slots__ = ("_limit", "_quotes", "_wire", "body", "limits", "used")

    def __init__(self, limits: DecodeLimits | None = None, wire_bytes: int | Callable[[], int] = 0,
                 body: bytes | None = None) -> None:
        self.limits = limits or _DEFAULT_LIMITS
        self._wire = wire_bytes
        self._limit: int | None = None
        self.used = 0
        # A REST body's text: its count of '"' proves, for most bodies, that no tensor holds a JSON
        # string (see decode_predict_request), which spares numeric inputs a look at every value's type.
        self.body = body
        self._quotes: int | None = None

    @property
    def quotes(self) -> int:
        if self._quotes is None:
            self._quotes = self.body.count(b'"') if self.body is not None else 1 << 62
        return self._quotes

    @property
    def wire_bytes(self) -> int:
        if callable(self._wire):
            self._wire = int(self._wire())
        return self._wire

    @property
    def limit(self) -> int:
        if self._limit is None:
            self._limit = self.limits.limit_for(self.wire_bytes)
        return self._limit

    def take(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` more; RESOURCE_EXHAUSTED (nothing allocated yet) when over the limit."""
        self.used += nbytes
        limits = self.limits
        if self.used <= limits.floor_bytes and self.used <= limits.max_bytes:
            return
        if self.used > self.limit:
            raise resource_exhausted(
                f"{what} would bring the request's tensors to {self.used} bytes, more than the {self.limit} bytes "
                f"this server decodes for a request of {self.wire_bytes} bytes (any request may decode to "
                f"{limits.floor_bytes} bytes, a larger one to {DECODED_BYTES_PER_WIRE_BYTE} times its size, none to "
                f"more than {limits.max_bytes}: --max_decoded_request_bytes)")


def out_of_memory(what: str) -> ServingError:
    """MemoryError as the client's answer: never UNKNOWN, never counted as OK."""
    return resource_exhausted(f"{what}: the server ran out of memory decoding the request")


