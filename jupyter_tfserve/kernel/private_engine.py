"""An engine of the kernel's own, for kernels no Jupyter server with the extension started.

Plain IPython, VS Code and scripts have no ``tfserve/`` endpoint to talk to, so the
client starts the engine itself, detached so that it outlives the kernel, and records
it in an info file that the next kernel reuses, as ``%tensorboard`` does. Two of
``%tensorboard``'s problems are avoided on purpose:

- stale entries: an entry is trusted only if its process is alive *and* its
  management API answers to the secret recorded with it; otherwise it is removed and
  a new engine is started (under a lock, so two kernels never start two engines);
- world-readable files: the folder is 0700 and the file 0600, created that way rather
  than chmod-ed afterwards, because the file holds the engine's secret; and a file
  is read only if it is ours (another user who can write the folder could plant
  one pointing at their own listener), never through a symbolic link.

An entry's engine is trusted only once each of its ports has proven it knows the
secret without being sent it (:func:`jupyter_tfserve.launcher.check_identity`): a
dead engine's port taken over by someone else learns nothing from the check.
The engine is started by :mod:`jupyter_tfserve.launcher`, as the Jupyter extension
starts its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import stat
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from jupyter_core.paths import jupyter_data_dir, jupyter_runtime_dir

from ..launcher import (
    EngineLaunch,
    EngineLaunchError,
    EnginePorts,
    EngineSettings,
    private_directory,
    verify_engine,
    write_private_text,
)
from ..wire import ENGINE_SECRET_HEADER

log = logging.getLogger(__name__)

INFO_FILE_NAME = "tfserve-private-engine.json"
STATE_DIR_ENV = "TFSERVE_PRIVATE_STATE_DIR"
STARTUP_TIMEOUT_SECONDS = 120
MAX_INFO_BYTES = 64 * 1024


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

    @property
    def ports(self) -> EnginePorts:
        return EnginePorts(pid=self.pid, rest_port=self.rest_port, grpc_port=self.grpc_port,
                           management_port=self.management_port)


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or Path(jupyter_data_dir()) / "tfserve-private")


def info_file_path() -> Path:
    return Path(jupyter_runtime_dir()) / INFO_FILE_NAME


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now holds that pid
        return False
    return True


def _answers(info: PrivateEngineInfo, timeout: float = 2.0) -> bool:
    """Whether the recorded ports prove they know the recorded secret (which is not sent)."""
    try:
        verify_engine("127.0.0.1", info.ports, info.secret, timeout)
    except EngineLaunchError as error:
        log.info("the recorded private engine does not answer as itself: %s", error)
        return False
    return True


@contextlib.contextmanager
def _locked(path: Path):
    """One kernel at a time decides whether to start an engine."""
    private_directory(path.parent)
    descriptor = os.open(path.with_suffix(".lock"), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def read_info(path: Path | None = None) -> PrivateEngineInfo | None:
    """The recorded entry, if it is a regular file of ours that no one else can read."""
    path = path or info_file_path()
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as error:  # ELOOP: a symbolic link
        log.warning("ignoring %s: %s", path, error.strerror)
        return None
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            log.warning("ignoring %s: not a file of this user's", path)
            return None
        if info.st_mode & 0o077:
            log.warning("ignoring %s: readable by other users", path)
            return None
        text = handle.read(MAX_INFO_BYTES)
    try:
        return PrivateEngineInfo(**json.loads(text))
    except (ValueError, TypeError):
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
    state = private_directory(state_dir)
    root = private_directory(state / "models")
    config_file = state / "models.config"
    if not config_file.exists():
        write_private_text(config_file, "model_config_list {\n}\n")
    settings = EngineSettings(config_file=config_file, state_db=state / "state.sqlite", model_repository_root=root,
                              log_file=state / "engine.log")
    launch = EngineLaunch(settings)
    try:
        process = subprocess.Popen(launch.command, stdout=launch.stdout, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=launch.env, pass_fds=launch.pass_fds,
                                   start_new_session=True)
        launch.spawned()
        log.info("started a private tfserve engine (pid %d), state in %s", process.pid, state)
        if progress is not None:
            progress(f"starting a private tfserve engine (pid {process.pid})")
        try:
            ports = launch.read_ports(STARTUP_TIMEOUT_SECONDS)
            launch.verify(ports)
        except (EngineLaunchError, TimeoutError) as error:
            if process.poll() is None:
                process.kill()
                process.wait()
            raise RuntimeError(f"the private tfserve engine did not start: {error} (log: {settings.log_file})"
                               ) from None
    finally:
        launch.close()
    info = PrivateEngineInfo(pid=process.pid, rest_port=ports.rest_port, grpc_port=ports.grpc_port,
                             management_port=ports.management_port, secret=launch.secret, state_dir=str(state),
                             model_repository_root=str(root), started_at=time.time())
    write_private_text(path, json.dumps(asdict(info)))
    log.info("the private tfserve engine (pid %d) answers: REST %s", info.pid, info.rest_url)
    return info


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
