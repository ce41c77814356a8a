"""A real ``jupyter server`` process with the extension, for tests that restart it or run two."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.helpers.server import REPO, free_port


class JupyterServerProcess:
    """One Jupyter server (its own port, token and tfserve state dir) running until stop()."""

    def __init__(self, state_dir: Path, repository: Path, log_path: Path, root_dir: Path) -> None:
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.log_path = log_path
        command = [
            sys.executable, "-m", "jupyter_server", f"--ServerApp.port={self.port}", "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={self.token}", "--ServerApp.open_browser=False",
            f"--ServerApp.root_dir={root_dir}", f"--TFServeExtension.state_dir={state_dir}",
            f"--TFServeExtension.model_repository_root={repository}",
            *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        ]
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "JUPYTER_RUNTIME_DIR": str(root_dir / "runtime"),
               "JUPYTER_CONFIG_DIR": str(root_dir / "config")}
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        self.owner = requests.Session()
        self.owner.headers["Authorization"] = f"token {self.token}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_until(self, condition, timeout: float = 120, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"jupyter server exited ({self.process.returncode}) waiting for {what}:\n"
                                     + self.log_text()[-4000:])
            try:
                if condition():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; log:\n" + self.log_text()[-4000:])

    def wait_for_engine(self) -> None:
        self.wait_until(lambda: self.owner.get(self.url + "tfserve/api/engine", timeout=10).json()["state"]
                        == "running", what="the engine to run")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.owner.close()
        self._log.close()
