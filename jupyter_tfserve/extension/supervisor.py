"""Run the engine as a child process of the Jupyter server, and bring it back if it dies.

A separate process keeps a model that exhausts memory or crashes TensorFlow away
from the user's Jupyter server and its unsaved work, and keeps serving load off
the notebook's event loop. The supervisor talks to the engine only through its
command line and its REST port.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from ..wire import ENGINE_SECRET_ENV, ENGINE_SECRET_HEADER

log = logging.getLogger(__name__)

RESTART_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def engine_command(settings: EngineSettings, rest_port: int, grpc_port: int, management_port: int) -> list[str]:
    """The engine's command line; the secret is not on it (it goes in the environment)."""
    return [
        sys.executable, "-m", "jupyter_tfserve", "serve",
        f"--rest_api_host={settings.host}", f"--rest_api_port={rest_port}",
        f"--grpc_host={settings.host}", f"--port={grpc_port}",
        f"--model_config_file={settings.config_file}", "--model_config_file_poll_wait_seconds=1",
        "--require_auth", f"--management_port={management_port}",
        *([f"--state_db={settings.state_db}"] if settings.state_db else []),
        *([f"--model_repository_root={settings.model_repository_root}"] if settings.model_repository_root else []),
        *([f"--allowed_model_paths={','.join(settings.allowed_model_paths)}"] if settings.allowed_model_paths else []),
        *settings.extra_args,
    ]


@dataclass
class EngineSettings:
    """How to start the engine: its ports, hosts, config file and extra flags."""

    config_file: Path
    host: str = "127.0.0.1"
    rest_port: int = 0
    grpc_port: int = 0
    management_port: int = 0
    state_db: Path | None = None
    model_repository_root: Path | None = None
    allowed_model_paths: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)
    log_file: Path | None = None
    startup_timeout: float = 120.0


class EngineSupervisor:
    """Starts the engine, waits until it answers, restarts it with backoff, stops it."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.rest_port = settings.rest_port or free_port(settings.host)
        self.grpc_port = settings.grpc_port or free_port(settings.host)
        self.management_port = settings.management_port or free_port("127.0.0.1")
        # Only this process and the engine it starts know the secret: it travels in the
        # environment (not the command line, which other local users can read in ps).
        self.secret = secrets.token_urlsafe(32)
        self.process: asyncio.subprocess.Process | None = None
        self.state = "stopped"
        self.restarts = 0
        self.last_exit: str = ""
        self._watch: asyncio.Task | None = None
        self._stopping = False
        self._ready = asyncio.Event()

    @property
    def rest_url(self) -> str:
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "") else self.settings.host
        return f"http://{host}:{self.rest_port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def secret_headers(self) -> dict[str, str]:
        return {ENGINE_SECRET_HEADER: self.secret}

    def command(self) -> list[str]:
        return engine_command(self.settings, self.rest_port, self.grpc_port, self.management_port)

    async def start(self) -> None:
        """Start the engine and its watcher; returns once the engine answers (or raises)."""
        self._stopping = False
        await self._spawn()
        self._watch = asyncio.get_running_loop().create_task(self._watch_forever())
        await self.wait_ready(self.settings.startup_timeout)

    async def _spawn(self) -> None:
        self.state = "starting"
        self._ready.clear()
        output = open(self.settings.log_file, "ab") if self.settings.log_file else asyncio.subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
               ENGINE_SECRET_ENV: self.secret}
        self.process = await asyncio.create_subprocess_exec(
            *self.command(), stdout=output, stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True
        )
        if output is not asyncio.subprocess.DEVNULL:
            output.close()
        log.info("tfserve engine started (pid %d): REST %s, gRPC %s:%d", self.process.pid, self.rest_url,
                 self.settings.host, self.grpc_port)

    async def wait_ready(self, timeout: float) -> None:
        client = AsyncHTTPClient()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.returncode is not None:
                await asyncio.sleep(0.1)
                continue
            try:
                await client.fetch(f"{self.rest_url}/healthz", request_timeout=2)
                self.state = "running"
                self._ready.set()
                return
            except (HTTPClientError, OSError):
                await asyncio.sleep(0.1)
        raise TimeoutError(f"the tfserve engine did not answer on {self.rest_url} within {timeout:.0f} s")

    async def _watch_forever(self) -> None:
        while not self._stopping:
            process = self.process
            if process is None:
                return
            code = await process.wait()
            if self._stopping:
                return
            self.last_exit = _describe_exit(code)
            delay = RESTART_BACKOFF_SECONDS[min(self.restarts, len(RESTART_BACKOFF_SECONDS) - 1)]
            self.restarts += 1
            self.state = "restarting"
            log.error("tfserve engine %s; restarting in %.1f s (restart %d)", self.last_exit, delay, self.restarts)
            await asyncio.sleep(delay)
            if self._stopping:
                return
            await self._spawn()
            try:
                await self.wait_ready(self.settings.startup_timeout)
            except TimeoutError as error:
                log.error("%s", error)

    async def stop(self) -> None:
        self._stopping = True
        self.state = "stopped"
        if self._watch is not None:
            self._watch.cancel()
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
