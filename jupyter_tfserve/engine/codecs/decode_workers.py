"""Large REST :predict bodies parsed and decoded in worker processes, so JSON parsing never stops the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

try:  # an accelerator for the common request (one dense float tensor); everything works without it
    import simdjson
except ImportError:  # pragma: no cover - pysimdjson is a dependency, but has no wheel on some platforms
    simdjson = None

from ..errors import ServingError, resource_exhausted
from ..signature import (
    DEFAULT_SIGNATURE,
    SignatureSpec,
)
from .json_body import parse_predict_body, request_signature_name
from .json_predict import decode_predict_request
from .limits import DecodeBudget, DecodeLimits, out_of_memory

log = logging.getLogger(__name__)

# -- large REST bodies, decoded in worker processes ------------------------------------------------

# From this size on, a :predict body is parsed and decoded in a worker process. Parsing JSON is C code
# that holds the GIL from start to end (orjson: about 1.3 s for 40 MB here, simdjson 0.8 s), so a thread
# would not let the event loop run: /healthz, the management API and every other request would wait.
# Below it, the worst body costs the loop a few tens of milliseconds.
WORKER_MIN_BYTES = 256 * 1024
_WORKER_STEP = 1 << 14
_PIPE_STEP = 1 << 20
_FRAME = struct.Struct("<QQ")


@dataclass
class DecodedBody:
    """What a worker made of a :predict body: the inputs for the signature it names, or why not.

    ``error`` is a decoding error, which the engine reports (and counts) as the answer; errors in the
    body as a whole (bad JSON, a signature name that is not a string) are raised by
    :meth:`DecodeWorkers.decode` instead, as the inline path raises them before calling the engine.
    ``signature`` is None when the servable has no signature of that name (the engine says so).
    """

    signature_name: str
    signature: SignatureSpec | None = None
    inputs: dict[str, Any] | None = None
    row_format: bool = False
    error: ServingError | None = None


class _PackedStrings:
    """An object array of bytes as one blob and its lengths: unpickling millions of bytes objects would hold
    the GIL for seconds in one call, so the engine rebuilds them a slice at a time (:func:`_unpack_inputs`)."""

    __slots__ = ("blob", "lengths", "shape")

    def __init__(self, array: np.ndarray) -> None:
        flat = array.reshape(-1).tolist()
        self.blob = b"".join(flat)
        self.lengths = np.fromiter(map(len, flat), dtype=np.int64, count=len(flat))
        self.shape = array.shape

    def __reduce__(self) -> tuple:
        return (_packed_strings, (pickle.PickleBuffer(self.blob), self.lengths, self.shape))


def _packed_strings(blob: Any, lengths: np.ndarray, shape: tuple[int, ...]) -> _PackedStrings:
    packed = _PackedStrings.__new__(_PackedStrings)
    packed.blob, packed.lengths, packed.shape = blob, lengths, shape
    return packed


def decode_body(body: bytes, signatures: Mapping[str, SignatureSpec], limits: DecodeLimits) -> DecodedBody:
    """Parse and decode a :predict body for the signature it names, as the inline path would (worker side)."""
    request = parse_predict_body(body)
    name = request_signature_name(request)
    signature = signatures.get(name or DEFAULT_SIGNATURE)
    decoded = DecodedBody(name, signature)
    if signature is None:
        return decoded
    try:
        decoded.inputs, decoded.row_format = decode_predict_request(request, signature,
                                                                    DecodeBudget(limits, len(body), body))
    except ServingError as error:
        decoded.error = error
    return decoded


def decode_worker_main() -> None:
    """A decoding worker's loop: a body and its servable's signatures in, a :class:`DecodedBody` out.

    Frames on stdin and stdout are (length of a pickle, number or length of raw buffers) and then
    the bytes; arrays travel as pickle protocol 5's out-of-band buffers, copied once. The worker
    volunteers first for the OOM killer, so that a body that outgrows memory ends the worker, which
    the engine replaces, and not the engine.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the engine's terminal is the engine's to handle
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text("1000")
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = source.read(_FRAME.size)
        if len(header) < _FRAME.size:
            return  # the engine is gone
        meta_size, body_size = _FRAME.unpack(header)
        signatures, limits = pickle.loads(source.read(meta_size))
        body = source.read(body_size)
        try:
            result: Any = decode_body(body, signatures, limits)
            if result.inputs is not None:
                result.inputs = {key: _PackedStrings(array) if array.dtype == object else np.ascontiguousarray(array)
                                 for key, array in result.inputs.items()}
        except ServingError as error:
            result = error
        except MemoryError:
            result = out_of_memory("The :predict request")
        del body
        buffers: list[pickle.PickleBuffer] = []
        meta = pickle.dumps(result, protocol=5, buffer_callback=buffers.append)
        raws = [buffer.raw() for buffer in buffers]
        sink.write(_FRAME.pack(len(meta), len(raws)))
        sink.write(meta)
        for raw in raws:
            sink.write(struct.pack("<Q", raw.nbytes))
            sink.write(raw)
        sink.flush()


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def decode(self, body: bytes, signatures: Mapping[str, SignatureSpec], limits: DecodeLimits) -> Any:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        meta = pickle.dumps((dict(signatures), limits), protocol=5)
        stdin.write(_FRAME.pack(len(meta), len(body)))
        stdin.write(meta)
        view = memoryview(body)
        for start in range(0, len(view), _PIPE_STEP):  # the transport copies what it cannot write at once
            stdin.write(view[start:start + _PIPE_STEP])
            await stdin.drain()
        await stdin.drain()
        meta_size, count = _FRAME.unpack(await stdout.readexactly(_FRAME.size))
        meta = await stdout.readexactly(meta_size)
        buffers = []
        for _ in range(count):
            (size,) = struct.unpack("<Q", await stdout.readexactly(8))
            buffers.append(await stdout.readexactly(size))
        return pickle.loads(meta, buffers=buffers)

    def kill(self) -> None:
        """Kill the process, and collect it on the loop, so that its pipes close while the loop runs."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        collect = asyncio.get_running_loop().create_task(self.process.wait())
        _collecting.add(collect)
        collect.add_done_callback(_collecting.discard)


_collecting: set[asyncio.Task] = set()


class DecodeWorkers:
    """Worker processes that parse and decode large :predict bodies off the engine's event loop.

    Started on first use, at most ``max_workers`` at once (a body waits for a free one); a worker
    that dies (out of memory) or whose request is cancelled (timeout) is killed and replaced by a
    fresh one at the next large body. Workers get the engine's environment without ``drop_env``
    (the engine secret) and exit when the engine does (their stdin closes).
    """

    def __init__(self, limits: DecodeLimits | None = None, max_workers: int = 2,
                 drop_env: Sequence[str] = ()) -> None:
        self.limits = limits or DecodeLimits()
        self.max_workers = max(1, max_workers)
        self._drop_env = tuple(drop_env)
        self._idle: list[_Worker] = []
        self._slots: asyncio.Semaphore | None = None
        self.started = 0

    async def decode(self, body: bytes, signatures: Mapping[str, SignatureSpec]) -> DecodedBody:
        """The body decoded for the signature it names among ``signatures`` (ServingError for a bad body)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_workers)
        async with self._slots:
            worker = self._idle.pop() if self._idle else await self._start()
            try:
                result = await worker.decode(body, signatures, self.limits)
            except (asyncio.IncompleteReadError, ConnectionError):
                worker.kill()
                code = await worker.process.wait()
                log.warning("a decoding worker exited with %s on a body of %d bytes", code, len(body))
                raise resource_exhausted(f"The :predict request: the process decoding it stopped (exit status "
                                         f"{code}), most likely out of memory") from None
            except BaseException:
                worker.kill()
                raise
            self._idle.append(worker)
        if isinstance(result, ServingError):
            raise result
        if result.inputs is not None:
            result.inputs = await _unpack_inputs(result.inputs)
        return result

    async def _start(self) -> _Worker:
        env = {key: value for key, value in os.environ.items() if key not in self._drop_env}
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from jupyter_tfserve.engine.codecs.decode_workers import decode_worker_main; "
                                  "decode_worker_main()",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, limit=1 << 20,
        )
        self.started += 1
        log.info("started decoding worker %d (pid %d) for large request bodies", self.started, process.pid)
        return _Worker(process)

    async def aclose(self) -> None:
        """Stop the idle workers and wait for them (busy ones are killed as their requests end)."""
        while self._idle:
            worker = self._idle.pop()
            worker.kill()
            await worker.process.wait()


async def _unpack_inputs(inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """Arrays from a worker, strings rebuilt a slice at a time so that the event loop runs in between."""
    for key, value in inputs.items():
        if not isinstance(value, _PackedStrings):
            continue
        count = len(value.lengths)
        blob = value.blob if isinstance(value.blob, bytes) else bytes(value.blob)
        array = np.empty(count, dtype=object)
        start = 0
        for first in range(0, count, _WORKER_STEP):
            last = min(first + _WORKER_STEP, count)
            pieces = []
            for end in (np.cumsum(value.lengths[first:last]) + start).tolist():
                pieces.append(blob[start:end])
                start = end
            array[first:last] = pieces
            await asyncio.sleep(0)
        inputs[key] = array.reshape(value.shape)
    return inputs
