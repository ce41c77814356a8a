"""An engine of the kernel's own, for kernels no Jupyter server with the extension started.

Plain IPython, VS Code and scripts have no ``tfserve/`` endpoint to talk to, so the
client starts the engine itself, detached so that it outlives the kernel, and records
it in an info file that the next kernel reuses, as ``%tensorboard`` does. Two of
``%tensorboard``'s problems are avoided on purpose:

- stale entries: an entry is trusted only if its process is alive *and* its
  management API answers to the secret recorded with it; otherwise it is removed and
  a new engine is started (under a lock, so two kernels never start two engines);
- world-readable files: the folder is 0700 and the file 0600, created that way rather
  than chmod-ed afterwards, because the file holds the engine's secret.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import requests
from jupyter_core.paths import jupyter_data_dir, jupyter_runtime_dir

from ..extension.supervisor import EngineSettings, engine_command, free_port
from ..wire import ENGINE_SECRET_ENV, ENGINE_SECRET_HEADER

log = logging.getLogger(__name__)

INFO_FILE_NAME = "tfserve-private-engine.json"
STATE_DIR_ENV = "TFSERVE_PRIVATE_STATE_DIR"
STARTUP_TIMEOUT_SECONDS = 120


@dataclass
class PrivateEngineInfo:
    """What the info file records: enough to reach the engine and to prove it is ours."""

    pid: int
    rest_port: int
    grpc_port: int
    management_port: int
    secret: str
    state_dir: str
    model_repository_root: str
    started_at: float

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def headers(self) -> dict[str, str]:
        return {ENGINE_SECRET_HEADER: self.secret}


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or Path(jupyter_data_dir()) / "tfserve-private")


def info_file_path() -> Path:
    return Path(jupyter_runtime_dir()) / INFO_FILE_NAME


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _write_owner_only(path: Path, text: str) -> None:
    """Created 0600 from the start (no window in which another user could read the secret), then renamed."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now holds that pid
        return False
    return True


def _answers(info: PrivateEngineInfo, timeout: float = 2.0) -> bool:
    try:
        response = requests.get(f"{info.management_url}/api/models", headers=info.headers, timeout=timeout)
    except requests.RequestException:
        return False
    return response.status_code == 200


@contextlib.contextmanager
def _locked(path: Path):
    """One kernel at a time decides whether to start an engine."""
    _private_dir(path.parent)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_info(path: Path | None = None) -> PrivateEngineInfo | None:
    path = path or info_file_path()
    try:
        if path.stat().st_mode & 0o077:
            log.warning("ignoring %s: readable by other users", path)
            return None
        return PrivateEngineInfo(**json.loads(path.read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def find_private_engine(path: Path | None = None) -> PrivateEngineInfo | None:
    """The recorded engine if it is alive and answers to its secret; a stale entry is removed."""
    path = path or info_file_path()
    info = read_info(path)
    if info is None:
        return None
    if _alive(info.pid) and _answers(info):
        return info
    log.info("removing the stale private engine entry %s (pid %d)", path, info.pid)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return None


def ensure_private_engine(state_dir: Path | None = None, progress=None) -> PrivateEngineInfo:
    """Reuse the recorded engine, or start one (same state dir: its models come back)."""
    path = info_file_path()
    with _locked(path):
        info = find_private_engine(path)
        if info is not None:
            return info
        return _start(path, state_dir or default_state_dir(), progress)


def _start(path: Path, state_dir: Path, progress=None) -> PrivateEngineInfo:
    state = _private_dir(state_dir)
    root = _private_dir(state / "models")
    config_file = state / "models.config"
    if not config_file.exists():
        config_file.write_text("model_config_list {\n}\n")
    settings = EngineSettings(config_file=config_file, state_db=state / "state.sqlite", model_repository_root=root,
                              log_file=state / "engine.log")
    info = PrivateEngineInfo(pid=0, rest_port=free_port(), grpc_port=free_port(), management_port=free_port(),
                             secret=secrets.token_urlsafe(32), state_dir=str(state), model_repository_root=str(root),
                             started_at=time.time())
    command = engine_command(settings, info.rest_port, info.grpc_port, info.management_port)
    env = {**os.environ, ENGINE_SECRET_ENV: info.secret,
           "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    with open(settings.log_file, "ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True)
    info.pid = process.pid
    log.info("started a private tfserve engine (pid %d): REST %s, state in %s", info.pid, info.rest_url, state)
    if progress is not None:
        progress(f"starting a private tfserve engine (pid {info.pid})")
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = settings.log_file.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the private tfserve engine exited with status {process.returncode}:\n{tail}")
        if _answers(info, timeout=1):
            _write_owner_only(path, json.dumps(asdict(info)))
            return info
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the private tfserve engine did not answer within {STARTUP_TIMEOUT_SECONDS} s "
                       f"(log: {settings.log_file})")


def stop_private_engine() -> bool:
    """Stop the recorded engine (SIGTERM, then SIGKILL) and remove its entry; False if there was none."""
    path = info_file_path()
    with _locked(path):
        info = read_info(path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if info is None or not _alive(info.pid) or not _answers(info):
            return False
        os.kill(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _alive(info.pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(info.pid, os.WNOHANG)
            time.sleep(0.1)
        if _alive(info.pid):
            os.kill(info.pid, signal.SIGKILL)
        return True
