"""Run the engine as a child process of the Jupyter server, and bring it back if it dies.

A separate process keeps a model that exhausts memory or crashes TensorFlow away
from the user's Jupyter server and its unsaved work, and keeps serving load off
the notebook's event loop. The supervisor talks to the engine only through its
command line, the pipes :mod:`jupyter_tfserve.launcher` gives it, and the ports the
engine itself reported and proved to own; nothing is sent to a port before that.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from ..launcher import (
    MANAGEMENT_HOST,
    EngineLaunch,
    EngineLaunchError,
    EngineSettings,
    connect_host,
    url_host,
)
from ..wire import ENGINE_SECRET_HEADER

__all__ = ["EngineSettings", "EngineSupervisor"]

log = logging.getLogger(__name__)

RESTART_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# An engine that ran this long before it died was not crash-looping: its restart starts the backoff
# over (else the fifth crash of a week-long Jupyter session would wait 10 s, every later one 30 s).
STABLE_RUN_SECONDS = 60.0


class EngineSupervisor:
    """Starts the engine, waits until it has proven who it is, restarts it with backoff, stops it."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        # The ports and secret of the engine now running: known only from its own report, and the
        # secret is new at every start (one leaked from a dead engine opens nothing).
        self.rest_port: int | None = None
        self.grpc_port: int | None = None
        self.management_port: int | None = None
        self.secret = ""
        self.process: asyncio.subprocess.Process | None = None
        self.state = "stopped"
        self.restarts = 0
        self.last_exit: str = ""
        self._watch: asyncio.Task | None = None
        self._identify: asyncio.Task | None = None
        self._stopping = False
        self._ready = asyncio.Event()

    @property
    def rest_url(self) -> str:
        return f"http://{url_host(connect_host(self.settings.host))}:{self.rest_port}"

    @property
    def management_url(self) -> str:
        return f"http://{MANAGEMENT_HOST}:{self.management_port}"

    @property
    def secret_headers(self) -> dict[str, str]:
        return {ENGINE_SECRET_HEADER: self.secret}

    @property
    def running(self) -> bool:
        """The engine has proven who it is and has not exited since."""
        return self.state == "running" and self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        """Start the engine and its watcher; returns once the engine has proven who it is (or raises)."""
        self._stopping = False
        await self._spawn()
        self._watch = asyncio.get_running_loop().create_task(self._watch_forever())
        await self.wait_ready(self.settings.startup_timeout)

    async def _spawn(self) -> None:
        self.state = "starting"
        self._ready.clear()
        launch = EngineLaunch(self.settings)
        try:
            self.process = await asyncio.create_subprocess_exec(
                *launch.command, stdin=asyncio.subprocess.DEVNULL, stdout=launch.stdout,
                stderr=asyncio.subprocess.STDOUT, env=launch.env, pass_fds=launch.pass_fds, start_new_session=True,
            )
        except BaseException:
            launch.close()
            raise
        launch.spawned()
        log.info("tfserve engine started (pid %d); waiting for it to report its ports", self.process.pid)
        self._identify = asyncio.get_running_loop().create_task(self._identify_engine(launch, self.process))

    async def _identify_engine(self, launch: EngineLaunch, process: asyncio.subprocess.Process) -> None:
        """Take the ports from the engine's own report, then have each prove it knows the secret."""
        try:
            ports = await launch.read_ports_async()
            await asyncio.to_thread(launch.verify, ports)
        except EngineLaunchError as error:
            log.error("tfserve engine (pid %d): %s", process.pid, error)
            if process.returncode is None:
                process.kill()  # the watcher starts another
            return
        finally:
            launch.close()
        if process is not self.process or self._stopping:
            return
        self.rest_port, self.grpc_port, self.management_port = ports.rest_port, ports.grpc_port, ports.management_port
        self.secret = launch.secret
        self.state = "running"
        self._ready.set()
        log.info("tfserve engine (pid %d) answers: REST %s, gRPC %s:%d", process.pid, self.rest_url,
                 self.settings.host, self.grpc_port)

    async def wait_ready(self, timeout: float) -> None:
        """Wait until a started engine has proven who it is (a restart in progress included)."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            where = f" (log: {self.settings.log_file})" if self.settings.log_file else ""
            raise TimeoutError(f"the tfserve engine did not start within {timeout:.0f} s{where}") from None

    async def _watch_forever(self) -> None:
        backoff = 0
        while not self._stopping:
            process = self.process
            if process is None:
                return
            started = time.monotonic()
            code = await process.wait()
            self._ready.clear()
            if self._stopping:
                return
            self.last_exit = _describe_exit(code)
            if time.monotonic() - started >= STABLE_RUN_SECONDS:
                backoff = 0
            delay = RESTART_BACKOFF_SECONDS[min(backoff, len(RESTART_BACKOFF_SECONDS) - 1)]
            backoff += 1
            self.restarts += 1
            self.state = "restarting"
            log.error("tfserve engine %s; restarting in %.1f s (restart %d)", self.last_exit, delay, self.restarts)
            await asyncio.sleep(delay)
            if self._stopping:
                return
            # Readiness is the identify task's (it ends when the engine reports or exits); this loop
            # only has to notice the next exit.
            await self._spawn()

    async def stop(self) -> None:
        self._stopping = True
        self.state = "stopped"
        self._ready.clear()
        for task in (self._watch, self._identify):
            if task is not None:
                task.cancel()
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()
        log.info("tfserve engine stopped")


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
