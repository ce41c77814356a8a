"""The engine's side of ``--rest_front_processes``: starts the front doors, runs their calls, adopts their hand-offs.

One event loop parses HTTP and JSON for every REST call; with front-door processes
(:mod:`.front_door_worker`) that work moves to as many other cores, and the engine's loop keeps
what only it can do: the request path into the engine (the batch scheduler sees every request
from every door), the model's run, and the connections the front doors hand over. The engine
holds the REST port bound but not listening, so that it stays reserved and only the front doors,
listening in the same ``SO_REUSEPORT`` group, accept; it reports the port only once every front
door is listening, and starts a new one when one exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from typing import Any

from ..engine.codecs.json_encode import encode_json
from ..engine.engine import Target
from ..engine.errors import ServingError
from ..wire import ENGINE_SECRET_ENV
from .auth import OWNER
from .frames import FrameProtocol
from .front_door_worker import HANDOFF_CHUNK_BYTES, HANDOFF_HEADER, reuseport_socket
from .http_front import FrontDoor
from .model_call import CallSettings, answer_call, likely_signatures, predict_decoded, with_timeout

log = logging.getLogger(__name__)

READY_SECONDS = 60.0
RESTART_PAUSE_SECONDS = 1.0  # after a front door that lived less than this, before the next start


def reserved_sockets(port: int, host: str) -> list[socket.socket]:
    """The REST address bound in a ``SO_REUSEPORT`` group and not listening: the front doors listen on it.

    As ``tornado.netutil.bind_sockets``: every address ``host`` resolves to, IPv6 ones v6-only, and
    port 0 picked once by the system and then used for the rest.
    """
    sockets: list[socket.socket] = []
    infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    seen = set()
    for family, _kind, _proto, _, address in infos:
        if (family, address) in seen:
            continue
        seen.add((family, address))
        if port == 0 and sockets:
            address = (address[0], sockets[0].getsockname()[1], *address[2:])
        try:
            sockets.append(reuseport_socket(family, address))
        except OSError:
            for bound in sockets:
                bound.close()
            raise
    return sockets


class _FrontDoorProcess:
    """One front door: its process, the call channel and the hand-off socket."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.process: asyncio.subprocess.Process | None = None
        self.channel: FrameProtocol | None = None
        self.handoff: socket.socket | None = None
        self.ready: asyncio.Future | None = None
        self.lost: asyncio.Future | None = None
        self.started = 0.0
        self.receiving: list[Any] | None = None  # a hand-off in pieces: [fd, total, chunks, received]


class FrontProcesses:
    """``count`` front-door processes in front of the engine's REST application."""

    def __init__(self, settings: CallSettings, front_door: FrontDoor, count: int, *, secret: str | None,
                 require_auth: bool, max_body_bytes: int, reserved_paths: tuple[str, ...],
                 idle_seconds: float) -> None:
        self.settings = settings
        self.front_door = front_door
        self.count = count
        self.config = {"secret": secret, "require_auth": require_auth, "max_body_bytes": max_body_bytes,
                       "reserved_paths": reserved_paths, "idle_seconds": idle_seconds,
                       "log_level": logging.getLogger().getEffectiveLevel(), "addresses": []}
        metrics = settings.engine.metrics
        self.calls_counted = metrics.rest_front_process_calls
        self.handoffs_counted = metrics.rest_front_process_handoffs
        self.doors: list[_FrontDoorProcess] = []
        self.tasks: set[asyncio.Future] = set()
        self.stopping = False

    async def start(self, sockets: list[socket.socket]) -> None:
        self.config["addresses"] = [(sock.family, sock.getsockname()) for sock in sockets]
        self.doors = [_FrontDoorProcess(number) for number in range(self.count)]
        for door in self.doors:
            await self._start(door)
        for door in self.doors:
            assert door.ready is not None
            try:
                await asyncio.wait_for(asyncio.shield(door.ready), READY_SECONDS)
            except TimeoutError:
                raise RuntimeError(f"REST front door {door.number} did not start in {READY_SECONDS:.0f} s") from None
        log.info("%d REST front-door processes accept on the REST port", self.count)

    async def _start(self, door: _FrontDoorProcess) -> None:
        loop = asyncio.get_running_loop()
        calls, their_calls = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        handoff, their_handoff = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {key: value for key, value in os.environ.items() if key != ENGINE_SECRET_ENV}
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        fds = (their_calls.fileno(), their_handoff.fileno())
        try:
            door.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "jupyter_tfserve.server.front_door_worker", *map(str, fds),
                pass_fds=fds, env=env, stdin=asyncio.subprocess.DEVNULL)
        finally:
            their_calls.close()
            their_handoff.close()
        door.started = time.monotonic()
        door.ready = loop.create_future()
        door.lost = loop.create_future()
        _, door.channel = await loop.connect_accepted_socket(
            lambda: FrameProtocol(lambda message: self._on_message(door, message), lambda: self._lost(door)), calls)
        door.channel.send(("config", self.config))
        handoff.setblocking(False)
        door.handoff = handoff
        loop.add_reader(handoff.fileno(), self._receive_handoff, door)
        log.info("started REST front door %d (pid %d)", door.number, door.process.pid)

    # -- messages from a front door ---------------------------------------------------------

    def _on_message(self, door: _FrontDoorProcess, message: tuple) -> None:
        kind = message[0]
        if kind == "call":
            self._spawn(self._call(door, message))
        elif kind == "signatures":
            self._spawn(self._signatures(door, message[1]))
        elif kind == "ready" and door.ready is not None and not door.ready.done():
            door.ready.set_result(message[1])

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _call(self, door: _FrontDoorProcess, message: tuple) -> None:
        _, call_id, verb, (name, version, label), route_key, body, decoded = message
        self.calls_counted.inc()
        target = Target(name, version, label)
        settings = self.settings
        if decoded is None:
            status, answered_by, payload = await answer_call(settings, verb, target, body, route_key, OWNER)
            reply = (status, answered_by, None, False, payload, False)
        else:
            try:
                answer, stale = await with_timeout(settings, predict_decoded(settings, target, decoded, body,
                                                                             route_key))
                reply = (200, str(answer.version), answer.outputs, answer.row_format, None, stale)
            except ServingError as error:
                stale = decoded.signature is None  # decoded for no model: it may be there now
                reply = (error.code.http_status, None, None, False, encode_json({"error": error.message}), stale)
            except Exception:
                log.exception("Uncaught exception in %s", verb)
                reply = (500, None, None, False, encode_json({"error": "Internal Server Error"}), True)
        if door.channel is not None:
            door.channel.send(("answer", call_id, reply))

    async def _signatures(self, door: _FrontDoorProcess, model: tuple) -> None:
        signatures = await likely_signatures(self.settings.engine, Target(*model))
        if door.channel is not None:
            door.channel.send(("signatures", model, signatures, self.settings.decode_limits))

    # -- connections handed over ------------------------------------------------------------

    def _receive_handoff(self, door: _FrontDoorProcess) -> None:
        handoff = door.handoff
        assert handoff is not None
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(handoff, HANDOFF_HEADER.size + HANDOFF_CHUNK_BYTES, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.warning("front door %d: hand-off channel failed: %s", door.number, error)
                self._stop_receiving(door)
                return
            if not data and not fds:
                self._stop_receiving(door)
                return
            if fds:
                self._drop_partial(door)
                (total,) = HANDOFF_HEADER.unpack_from(data)
                chunk = data[HANDOFF_HEADER.size:]
                door.receiving = [fds[0], total, [chunk], len(chunk)]
            elif door.receiving is not None:
                door.receiving[2].append(data)
                door.receiving[3] += len(data)
            receiving = door.receiving
            if receiving is not None and receiving[3] >= receiving[1]:
                door.receiving = None
                self._adopt(receiving[0], b"".join(receiving[2]))

    def _adopt(self, fd: int, preread: bytes) -> None:
        try:
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
        except OSError as error:
            os.close(fd)
            log.warning("a handed-over connection could not be adopted: %s", error)
            return
        self.handoffs_counted.inc()
        self._spawn(self.front_door.adopt(sock, preread))

    def _drop_partial(self, door: _FrontDoorProcess) -> None:
        if door.receiving is not None:
            with contextlib.suppress(OSError):
                os.close(door.receiving[0])
            door.receiving = None

    def _stop_receiving(self, door: _FrontDoorProcess) -> None:
        if door.handoff is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(door.handoff.fileno())
            door.handoff.close()
            door.handoff = None
        self._drop_partial(door)

    # -- lifetime ----------------------------------------------------------------------------

    def _lost(self, door: _FrontDoorProcess) -> None:
        door.channel = None
        if door.lost is not None and not door.lost.done():
            door.lost.set_result(None)
        if not self.stopping:
            self._spawn(self._restart(door))

    async def _restart(self, door: _FrontDoorProcess) -> None:
        assert door.process is not None
        code = await door.process.wait()
        self._stop_receiving(door)
        if self.stopping:
            return
        log.warning("REST front door %d (pid %d) exited with %s; starting another", door.number,
                    door.process.pid, code)
        if time.monotonic() - door.started < RESTART_PAUSE_SECONDS:
            await asyncio.sleep(RESTART_PAUSE_SECONDS)
        if not self.stopping:
            await self._start(door)

    async def stop(self) -> None:
        """Close every channel (a front door exits when its channel closes) and wait for the processes."""
        self.stopping = True
        for door in self.doors:
            if door.channel is not None and door.channel.transport is not None:
                door.channel.transport.close()
        for door in self.doors:
            if door.process is None:
                continue
            try:
                await asyncio.wait_for(door.process.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    door.process.kill()
                await door.process.wait()
            self._stop_receiving(door)
