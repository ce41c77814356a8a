"""A real Jupyter server with the extension (one per module), and clients of it or of a private engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from jupyter_tfserve.kernel import private_engine
from jupyter_tfserve.kernel.client import TFServeClient, connect
from tests.helpers.jupyter import JupyterServerProcess
from tests.helpers.models import write_tf1_half_plus


@pytest.fixture(scope="module")
def jupyter_home(tmp_path_factory) -> Path:
    """Runtime, data and config dirs of its own, so no test sees the user's servers or engines."""
    home = tmp_path_factory.mktemp("jupyter-home")
    for name in ("runtime", "data", "config"):
        (home / name).mkdir()
    return home


@pytest.fixture(scope="module")
def jupyter_env(jupyter_home, monkeypatch_module) -> dict[str, str]:
    env = {"JUPYTER_RUNTIME_DIR": str(jupyter_home / "runtime"), "JUPYTER_DATA_DIR": str(jupyter_home / "data"),
           "JUPYTER_CONFIG_DIR": str(jupyter_home / "config")}
    for key, value in env.items():
        monkeypatch_module.setenv(key, value)
    monkeypatch_module.delenv("JPY_PARENT_PID", raising=False)
    return env


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def repository(jupyter_home) -> Path:
    """The model repository root of the server: half_plus_two version 1 (x/2 + 2) is there to load."""
    root = jupyter_home / "models"
    write_tf1_half_plus(root / "half_plus_two", 1)
    return root


@pytest.fixture(scope="module")
def jupyter_server(jupyter_home, jupyter_env, repository):
    """``jupyter server`` with the extension and its engine running; its kernels find it by JPY_PARENT_PID."""
    server = JupyterServerProcess(jupyter_home / "tfserve-state", repository, jupyter_home / "jupyter.log",
                                  jupyter_home)
    try:
        server.wait_for_engine()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(jupyter_server) -> TFServeClient:
    """A client of the Jupyter server, as a script outside it would make one (explicit URL and token)."""
    return connect(jupyter_server.url, jupyter_server.token)


@pytest.fixture
def private_client(tmp_path, monkeypatch):
    """A client with a private engine of its own (no Jupyter server), stopped at the end."""
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("JPY_PARENT_PID", raising=False)
    monkeypatch.setenv(private_engine.STATE_DIR_ENV, str(tmp_path / "private-state"))
    client = connect(private=True)
    try:
        yield client
    finally:
        private_engine.stop_private_engine()

