"""A real ``jupyter server`` process with the extension, for tests that restart it or run two."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import requests

from tests.helpers.server import ChildProcess, free_port


def extension_config(state_dir: Path, server: dict | None = None, **extension) -> dict:
    """A ``jp_server_config`` with the extension on, its state in ``state_dir`` and ``extension``'s traits."""
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_tfserve": True}, **(server or {})},
        "TFServeExtension": {"state_dir": str(state_dir), **extension},
    }


class JupyterServerProcess(ChildProcess):
    """One Jupyter server (its own port, token and tfserve state dir) running until stop()."""

    what = "jupyter server"
    wait_timeout = 120.0
    stop_timeout = 30.0

    def __init__(self, state_dir: Path, repository: Path, log_path: Path, root_dir: Path) -> None:
        self.port = free_port()
        self.token = secrets.token_hex(16)
        command = [
            sys.executable, "-m", "jupyter_server", f"--ServerApp.port={self.port}", "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={self.token}", "--ServerApp.open_browser=False",
            f"--ServerApp.root_dir={root_dir}", f"--TFServeExtension.state_dir={state_dir}",
            f"--TFServeExtension.model_repository_root={repository}",
            *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        ]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "JUPYTER_RUNTIME_DIR": str(root_dir / "runtime"),
               "JUPYTER_CONFIG_DIR": str(root_dir / "config")}
        self._spawn(command, log_path, env, log_mode="ab")
        self.owner = requests.Session()
        self.owner.headers["Authorization"] = f"token {self.token}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def wait_for_engine(self) -> None:
        self.wait_until(lambda: self.owner.get(self.url + "tfserve/api/engine", timeout=10).json()["state"]
                        == "running", what="the engine to run")

    def stop(self) -> None:
        self.owner.close()
        self._terminate()
