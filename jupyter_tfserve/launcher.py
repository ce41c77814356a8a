"""Start the engine and make sure that what answers is the engine before telling it anything.

The Jupyter extension's supervisor and a kernel's private engine both start
``jupyter tfserve serve`` through this module; it imports only the standard
library and :mod:`jupyter_tfserve.wire`, so neither the Jupyter server nor a
kernel loads numpy, TensorFlow or TF Serving's protos to start the engine.

Why it is more than ``Popen``: picking a free port, closing it and letting the
engine bind it seconds later leaves a window in which another local user can bind
it first, and whoever answers ``/healthz`` there would then receive the owner's
requests, the engine secret and teammates' share tokens. So:

- the engine binds its own ports (the system picks them: no window) and reports
  them as one JSON line on an inherited pipe (``--report_ports_fd``), which only
  the process that started it holds;
- the secret reaches the engine on another inherited pipe (``--engine_secret_fd``),
  never in its environment, where a model's ops could read it; the environment
  itself is an allow-list of what TensorFlow and the engine need
  (:func:`engine_environment`), so Jupyter's tokens stay behind;
- before anything is sent to a port, the engine proves it knows the secret: the
  starter sends a random challenge to ``/tfserve-engine/identity`` and checks an
  HMAC of it and of the address and port it connected to (so a listener relaying
  the challenge to the real engine's other port gets a proof that does not match);
  the secret itself never travels in the check;
- management traffic stays on 127.0.0.1, whatever the REST host;
- the engine's log and every file written here are owner-only (0600, folders
  0700), created that way rather than chmod-ed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import os
import secrets
import select
import socket
import stat
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .wire import ENGINE_SECRET_ENV

log = logging.getLogger(__name__)

IDENTITY_PATH = "/tfserve-engine/identity"
# On the management port: is this share token good for this model and verb? (The Jupyter proxy asks
# before it reads a request's body.)
TOKEN_CHECK_PATH = "/tfserve-engine/token-check"
MANAGEMENT_HOST = "127.0.0.1"
IDENTITY_TIMEOUT_SECONDS = 5.0
_MAX_REPORT_BYTES = 4096
_MAX_IDENTITY_ANSWER_BYTES = 4096

# What the engine keeps of its starter's environment. Everything else (JUPYTERHUB_API_TOKEN, JPY_*,
# the user's own secrets) stays behind: a SavedModel is code, and its ops can read the environment.
# Object-storage credentials pass because the engine's source reads s3://, gs:// and hdfs:// paths
# with them; anything else a model needs is set with the extension's ``engine_environment``.
ENVIRONMENT_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
    "LD_LIBRARY_PATH", "LD_PRELOAD", "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_CONFIG_DIR", "JUPYTER_PATH",
    "JUPYTER_PLATFORM_DIRS", "JUPYTER_PREFER_ENV_PATH",
})
ENVIRONMENT_PREFIXES = (
    "LC_", "TF_", "CUDA_", "NVIDIA_", "XLA_", "OMP_", "KMP_", "MKL_", "OPENBLAS_", "MALLOC_", "PYTHON", "XDG_",
    "AWS_", "GOOGLE_", "AZURE_", "HADOOP_", "HDFS_", "FSSPEC_", "S3_", "GCS_",
)


class EngineLaunchError(RuntimeError):
    """The engine did not start, did not report its ports, or could not prove who it is."""


@dataclass
class EngineSettings:
    """How to start the engine: its ports (0: the engine picks), hosts, config file and extra flags."""

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
    # Set in the engine's environment on top of the allow-list (the user's explicit choice).
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EnginePorts:
    """What the engine reported once it had bound its ports (0: that port is off)."""

    pid: int
    rest_port: int
    grpc_port: int
    management_port: int


def connect_host(host: str) -> str:
    """Where to reach a server bound to ``host`` from this machine (a wildcard means loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def url_host(host: str) -> str:
    """``host`` as it goes in a URL (IPv6 addresses in brackets)."""
    return f"[{host}]" if ":" in host else host


def engine_environment(environ: Mapping[str, str] | None = None,
                       extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The engine's environment: the allow-listed part of ``environ`` (default: ours), then ``extra``."""
    source = os.environ if environ is None else environ
    env = {name: value for name, value in source.items()
           if name in ENVIRONMENT_NAMES or name.startswith(ENVIRONMENT_PREFIXES)}
    env.pop(ENGINE_SECRET_ENV, None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra or {})
    return env


def engine_command(settings: EngineSettings, *, secret_fd: int, report_fd: int) -> list[str]:
    """The engine's command line. The secret is not on it (other local users can read ``ps``)."""
    picked = [name for name, port in (("rest", settings.rest_port), ("grpc", settings.grpc_port),
                                      ("management", settings.management_port)) if not port]
    return [
        sys.executable, "-m", "jupyter_tfserve", "serve",
        f"--rest_api_host={settings.host}", f"--rest_api_port={settings.rest_port}",
        f"--grpc_host={settings.host}", f"--port={settings.grpc_port}",
        f"--management_port={settings.management_port}",
        *([f"--pick_ports={','.join(picked)}"] if picked else []),
        f"--engine_secret_fd={secret_fd}", f"--report_ports_fd={report_fd}",
        f"--model_config_file={settings.config_file}", "--model_config_file_poll_wait_seconds=1",
        "--require_auth",
        *([f"--state_db={settings.state_db}"] if settings.state_db else []),
        *([f"--model_repository_root={settings.model_repository_root}"] if settings.model_repository_root else []),
        # One flag per folder: a comma in a folder's name must not split it.
        *(f"--allowed_model_path={path}" for path in settings.allowed_model_paths),
        *settings.extra_args,
    ]


# -- the proof of identity (both sides) ----------------------------------------------------------------


def identity_proof(secret: str, address: str, port: int, challenge: str) -> str:
    """HMAC-SHA256 of the challenge and of the address and port the challenger connected to."""
    message = f"jupyter-tfserve engine identity\n{address}\n{port}\n{challenge}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def local_address(address: str) -> str:
    """A socket's own address as a challenger wrote it (an IPv4 client of a dual-stack socket)."""
    return address[len("::ffff:"):] if address.startswith("::ffff:") and "." in address else address


def check_identity(host: str, port: int, secret: str, timeout: float = IDENTITY_TIMEOUT_SECONDS) -> None:
    """Raise :class:`EngineLaunchError` unless what listens at ``host:port`` knows ``secret``.

    The secret is not sent: the listener gets a random challenge and must answer
    its HMAC. The whole exchange is bounded by ``timeout`` (a listener that
    trickles its answer is not waited for).
    """
    deadline = time.monotonic() + timeout
    try:
        address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]
    except OSError as error:
        raise EngineLaunchError(f"cannot resolve {host}: {error}") from None
    challenge = secrets.token_hex(16)
    connection = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        connection.request("GET", f"{IDENTITY_PATH}?challenge={challenge}")
        response = connection.getresponse()
        body = b""
        while len(body) <= _MAX_IDENTITY_ANSWER_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EngineLaunchError(f"{address}:{port} did not answer its identity check in time")
            if connection.sock is not None:
                connection.sock.settimeout(remaining)
            chunk = response.read1(1024)
            if not chunk:
                break
            body += chunk
        status = response.status
    except (OSError, http.client.HTTPException) as error:
        raise EngineLaunchError(f"{address}:{port} did not answer its identity check: {error!r}") from None
    finally:
        connection.close()
    try:
        proof = json.loads(body)["proof"] if status == 200 else None
    except (ValueError, KeyError, TypeError):
        proof = None
    expected = identity_proof(secret, address, port, challenge)
    if not isinstance(proof, str) or not hmac.compare_digest(proof.encode(), expected.encode()):
        raise EngineLaunchError(f"what listens on {address}:{port} is not the engine this process started "
                                f"(HTTP {status}, no valid proof of its secret)")


# -- the port report (both sides) ------------------------------------------------------------------------


def ports_report(ports: EnginePorts) -> bytes:
    """The line the engine writes on ``--report_ports_fd`` once its ports are bound."""
    return json.dumps({"pid": ports.pid, "rest_port": ports.rest_port, "grpc_port": ports.grpc_port,
                       "management_port": ports.management_port}).encode() + b"\n"


def parse_ports_report(line: bytes) -> EnginePorts:
    try:
        fields = json.loads(line)
        ports = EnginePorts(**{name: int(fields[name]) for name in
                               ("pid", "rest_port", "grpc_port", "management_port")})
    except (ValueError, KeyError, TypeError):
        raise EngineLaunchError(f"the engine's port report is malformed: {line[:200]!r}") from None
    if not all(0 <= port < 65536 for port in (ports.rest_port, ports.grpc_port, ports.management_port)):
        raise EngineLaunchError(f"the engine's port report is malformed: {line[:200]!r}")
    return ports


# -- owner-only files -----------------------------------------------------------------------------------


def private_directory(path: Path) -> Path:
    """``path`` as a folder only its owner (us) can enter: created 0700, tightened if it was looser.

    A folder of someone else's is refused: they could swap the files in it.
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise EngineLaunchError(f"{path} belongs to another user (uid {info.st_uid}); not using it")
    if stat.S_IMODE(info.st_mode) & 0o077:
        path.chmod(stat.S_IMODE(info.st_mode) & 0o700)
    return path


def write_private_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, the file 0600 from its first byte (no window to read it)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


def open_private_log(path: Path) -> int:
    """``path`` opened for appending, 0600 (an older, looser log is tightened); never through a symlink."""
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        info = os.fstat(descriptor)
        if info.st_uid != os.getuid() or not stat.S_ISREG(info.st_mode):
            raise EngineLaunchError(f"{path} is not a file of ours; not logging to it")
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.fchmod(descriptor, 0o600)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def log_tail(path: Path | None, limit: int = 2000) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - limit))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


# -- one start ----------------------------------------------------------------------------------------------


class EngineLaunch:
    """One start of the engine: its fresh secret, command line, environment, pipes and log.

    Start the child with :attr:`command`, :attr:`env`, :attr:`pass_fds` and
    :attr:`stdout` (``subprocess.Popen`` or ``asyncio.create_subprocess_exec``), call
    :meth:`spawned`, then :meth:`read_ports` (or :meth:`read_ports_async`) and
    :meth:`verify` before sending the engine anything. A new secret for every
    start: one that leaked from a previous engine opens nothing.
    """

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.secret = secrets.token_urlsafe(32)
        self._fds: list[int] = []
        try:
            self._secret_read, secret_write = self._pipe()
            # The whole secret fits in the pipe's buffer: written now, it waits for the engine.
            os.write(secret_write, self.secret.encode() + b"\n")
            self._close(secret_write)
            self._report_read, self._report_write = self._pipe()
            self._log = (open_private_log(settings.log_file) if settings.log_file
                         else os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC))
            self._fds.append(self._log)
        except BaseException:
            self.close()
            raise
        self.command = engine_command(settings, secret_fd=self._secret_read, report_fd=self._report_write)
        self.env = engine_environment(extra=settings.extra_env)
        self._buffer = b""

    def _pipe(self) -> tuple[int, int]:
        read, write = os.pipe()
        self._fds += [read, write]
        return read, write

    def _close(self, descriptor: int) -> None:
        if descriptor in self._fds:
            self._fds.remove(descriptor)
            os.close(descriptor)

    @property
    def pass_fds(self) -> tuple[int, int]:
        return (self._secret_read, self._report_write)

    @property
    def stdout(self) -> int:
        """Where the engine's output goes: its log (or nowhere)."""
        return self._log

    def spawned(self) -> None:
        """The child has its copies: close ours, so the report pipe ends when the engine does."""
        for descriptor in (self._secret_read, self._report_write, self._log):
            self._close(descriptor)

    def close(self) -> None:
        for descriptor in list(self._fds):
            self._close(descriptor)

    def _feed(self, chunk: bytes) -> EnginePorts | None:
        if not chunk:
            raise EngineLaunchError("the engine exited before it reported its ports"
                                    + (f"; its log ends:\n{log_tail(self.settings.log_file)}"
                                       if self.settings.log_file else ""))
        self._buffer += chunk
        line, newline, _ = self._buffer.partition(b"\n")
        if newline:
            return parse_ports_report(line)
        if len(self._buffer) > _MAX_REPORT_BYTES:
            raise EngineLaunchError("the engine's port report is too long")
        return None

    def read_ports(self, timeout: float) -> EnginePorts:
        """Block until the engine reports its ports, exits, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the engine did not report its ports within {timeout:.0f} s")
            readable, _, _ = select.select([self._report_read], [], [], remaining)
            if readable:
                ports = self._feed(os.read(self._report_read, _MAX_REPORT_BYTES))
                if ports is not None:
                    self._close(self._report_read)
                    return ports

    async def read_ports_async(self) -> EnginePorts:
        """The same on the event loop (cancellable); it ends when the engine reports or exits."""
        loop = asyncio.get_running_loop()
        while True:
            readable = loop.create_future()
            loop.add_reader(self._report_read, readable.set_result, None)
            try:
                await readable
            finally:
                loop.remove_reader(self._report_read)
            ports = self._feed(os.read(self._report_read, _MAX_REPORT_BYTES))
            if ports is not None:
                self._close(self._report_read)
                return ports

    def verify(self, ports: EnginePorts, timeout: float = IDENTITY_TIMEOUT_SECONDS) -> None:
        """Check that the engine's REST and management ports answer with proof of this start's secret."""
        verify_engine(self.settings.host, ports, self.secret, timeout)


def verify_engine(host: str, ports: EnginePorts, secret: str, timeout: float = IDENTITY_TIMEOUT_SECONDS) -> None:
    """Raise :class:`EngineLaunchError` unless every HTTP port in ``ports`` proves it knows ``secret``."""
    if ports.rest_port:
        check_identity(connect_host(host), ports.rest_port, secret, timeout)
    if ports.management_port:
        check_identity(MANAGEMENT_HOST, ports.management_port, secret, timeout)
