"""Start the real ``jupyter tfserve serve`` process on 127.0.0.1 and talk to it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ChildProcess:
    """A process under test writing to a log file: wait for a condition on it, read its log, stop it."""

    what = "server"
    wait_timeout = 60.0
    stop_timeout = 20.0

    def _spawn(self, command: Sequence[str], log_path: Path, env: dict[str, str], log_mode: str = "wb") -> None:
        self.log_path = log_path
        self._log = open(log_path, log_mode)  # noqa: SIM115 - closed in _terminate()
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env=env)

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_until(self, condition: Callable[[], bool], timeout: float | None = None,
                   what: str = "condition") -> None:
        timeout = self.wait_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.what} exited with {self.process.returncode} while waiting for "
                                     f"{what}:\n" + self.log_text()[-4000:])
            try:
                if condition():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; {self.what} log:\n"
                             + self.log_text()[-4000:])

    def _terminate(self) -> int:
        """SIGTERM, then SIGKILL if it lingers; closes the log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()
        return self.process.returncode


class ServerProcess(ChildProcess):
    """One engine process with its own ports and log file."""

    def __init__(self, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.grpc_port = free_port()
        self.rest_port = free_port()
        command = [
            sys.executable, "-m", "jupyter_tfserve", "serve",
            f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}",
            "--file_system_poll_wait_seconds=0.2", *args,
        ]
        self._spawn(command, log_path, {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})
        self.session = requests.Session()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.session.get(self.url + path, timeout=30, **kwargs)

    def post(self, path: str, body=None, **kwargs) -> requests.Response:
        if body is not None and not isinstance(body, (bytes, str)):
            kwargs["json"] = body
        elif body is not None:
            kwargs["data"] = body
        return self.session.post(self.url + path, timeout=30, **kwargs)

    def states(self, model: str) -> dict[int, str]:
        response = self.get(f"/v1/models/{model}")
        if response.status_code != 200:
            return {}
        return {int(s["version"]): s["state"] for s in response.json()["model_version_status"]}

    def wait_for_state(self, model: str, version: int, state: str = "AVAILABLE", timeout: float = 60) -> None:
        self.wait_until(lambda: self.states(model).get(version) == state, timeout,
                        f"{model} version {version} to be {state}")

    def wait_for_versions(self, model: str, available: set[int], timeout: float = 60) -> None:
        """Wait until exactly ``available`` are AVAILABLE for ``model``."""
        def check() -> bool:
            states = self.states(model)
            return {v for v, s in states.items() if s == "AVAILABLE"} == available
        self.wait_until(check, timeout, f"{model} to have exactly versions {sorted(available)} AVAILABLE")

    def wait_for_port(self, timeout: float = 60) -> None:
        self.wait_until(lambda: self.get("/healthz").status_code == 200, timeout, "the REST port")

    def stop(self) -> int:
        self.session.close()
        return self._terminate()


def run_cli(args: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``python -m jupyter_tfserve ARGS`` to completion (for commands that must exit)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "jupyter_tfserve", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


def write_models_config(path: Path, base_paths: dict[str, Path | str]) -> Path:
    """A ModelServerConfig text proto serving each named model from its base path (default policy)."""
    path.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{name}" base_path: "{base}" }}\n' for name, base in base_paths.items()) + "}\n")
    return path


def write_monitoring_config(path: Path, metrics_path: str = "/monitoring/prometheus/metrics") -> Path:
    """A MonitoringConfig text proto turning the Prometheus endpoint on at ``metrics_path``."""
    path.write_text(f'prometheus_config {{ enable: true, path: "{metrics_path}" }}')
    return path
