"""The engine proves who it is before its starter tells it anything; nothing leaks to its neighbours.

The attacks: another local process listening where the engine was expected (it binds
the port first, or takes a dead engine's port, and answers 200 to everything,
``/healthz`` included); one relaying the identity challenge to the real engine's other
port; an info file planted or pointing at such a listener; the engine's environment
read by a model's ops; the management port reached from the network when REST is
shared on 0.0.0.0; the engine's log read by other users.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import http.server
import json
import os
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from jupyter_tfserve import launcher
from jupyter_tfserve.extension.supervisor import EngineSupervisor
from jupyter_tfserve.kernel import private_engine
from jupyter_tfserve.launcher import (
    EngineLaunch,
    EngineLaunchError,
    EnginePorts,
    EngineSettings,
    check_identity,
    engine_environment,
)
from jupyter_tfserve.wire import ENGINE_SECRET_ENV, ENGINE_SECRET_HEADER

SECRET = "s3cret-" + "x" * 36


class Rogue:
    """A listener that answers 200 to everything (a JSON 'proof' included) and records what it was sent."""

    def __init__(self, port: int = 0, relay_to: int | None = None) -> None:
        self.requests: list[dict] = []
        rogue = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                rogue.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                       "body": body})
                if relay_to is not None:  # hand the question to the real engine, return its answer
                    connection = http.client.HTTPConnection("127.0.0.1", relay_to, timeout=5)
                    connection.request(self.command, self.path)
                    answer = connection.getresponse().read()
                    connection.close()
                else:
                    answer = json.dumps({"proof": "0" * 64, "models": [], "status": "ok"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def saw(self, text: str) -> bool:
        """Whether ``text`` was in anything it was sent (paths, headers, bodies)."""
        return any(text in json.dumps({**r, "body": r["body"].decode(errors="replace")}) for r in self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def rogue():
    listener = Rogue()
    yield listener
    listener.close()


@contextlib.contextmanager
def identity_server(secret: str):
    """The engine's own identity endpoint (server/supervision.py) on a port of its own, in a thread."""
    import tornado.httpserver
    import tornado.netutil
    import tornado.web

    from jupyter_tfserve.server.supervision import add_identity_route

    ready = threading.Event()
    state: dict = {}

    def run() -> None:
        async def main() -> None:
            app = tornado.web.Application([])
            add_identity_route(app, secret)
            server = tornado.httpserver.HTTPServer(app)
            [sock] = tornado.netutil.bind_sockets(0, "127.0.0.1")
            server.add_sockets([sock])
            state["port"], state["stop"] = sock.getsockname()[1], asyncio.Event()
            state["loop"] = asyncio.get_running_loop()
            ready.set()
            await state["stop"].wait()
            server.stop()

        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield state["port"]
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(10)


# -- the identity check ---------------------------------------------------------------------------------


def test_a_listener_answering_everything_is_not_taken_for_the_engine(rogue):
    # Before: the supervisor's wait_ready took any 200 on /healthz as the engine.
    with pytest.raises(EngineLaunchError, match="not the engine"):
        check_identity("127.0.0.1", rogue.port, SECRET)
    assert rogue.requests, "the check did ask"
    assert not rogue.saw(SECRET) and not rogue.saw(ENGINE_SECRET_HEADER), "the check must not send the secret"


def test_the_engine_proves_it_and_a_relayed_challenge_proves_nothing():
    with identity_server(SECRET) as engine_port:
        check_identity("127.0.0.1", engine_port, SECRET)
        with pytest.raises(EngineLaunchError):
            check_identity("127.0.0.1", engine_port, "another secret")
        # A rogue on another port hands our challenge to the real engine and returns its answer:
        # the proof is bound to the port it was asked on, so it does not match.
        relay = Rogue(relay_to=engine_port)
        try:
            with pytest.raises(EngineLaunchError, match="not the engine"):
                check_identity("127.0.0.1", relay.port, SECRET)
            assert relay.requests
        finally:
            relay.close()


def test_a_port_nobody_listens_on_fails_the_check_quickly():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(EngineLaunchError):
        check_identity("127.0.0.1", port, SECRET, timeout=2)
    assert time.monotonic() - started < 3


# -- the private engine's info file -------------------------------------------------------------------


@pytest.fixture
def runtime(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    (tmp_path / "runtime").mkdir(mode=0o700)
    return tmp_path / "runtime"


def _entry(pid: int, port: int, **extra) -> dict:
    return {"pid": pid, "rest_port": port, "grpc_port": port, "management_port": port, "secret": SECRET,
            "state_dir": "/nowhere", "model_repository_root": "/nowhere", "started_at": 0.0, **extra}


def test_an_entry_whose_port_a_rogue_holds_gets_no_secret(runtime, rogue):
    # The recorded engine "lives" (this test's pid) but its port is the rogue's: before, the kernel
    # asked GET /api/models with the secret header, got 200, and went on sending it everything.
    path = private_engine.info_file_path()
    launcher.write_private_text(path, json.dumps(_entry(os.getpid(), rogue.port)))
    assert private_engine.find_private_engine() is None
    assert not rogue.saw(SECRET), "the secret went to the rogue"
    assert not path.exists(), "the untrustworthy entry is removed"


def test_an_entry_that_is_a_link_or_not_ours_is_ignored(runtime, tmp_path):
    path = private_engine.info_file_path()
    target = tmp_path / "elsewhere.json"
    launcher.write_private_text(target, json.dumps(_entry(os.getpid(), 1)))
    path.symlink_to(target)
    assert private_engine.read_info() is None, "an entry reached through a symbolic link is ignored"
    path.unlink()
    launcher.write_private_text(path, json.dumps(_entry(os.getpid(), 1)))
    assert private_engine.read_info() is not None
    if os.geteuid() != 0:
        pytest.skip("making a file another user's needs root")
    os.chown(path, 65534, 65534)  # nobody's: a file planted by another user with write access to the folder
    assert private_engine.read_info() is None, "an entry owned by another user is ignored"


# -- what the engine inherits and writes ------------------------------------------------------------------


def test_the_command_line_carries_no_secret_and_one_flag_per_allowed_folder(tmp_path):
    settings = EngineSettings(config_file=tmp_path / "models.config", grpc_port=8500,
                              allowed_model_paths=["/data/models, v2", "/other"])
    launch = EngineLaunch(settings)
    try:
        assert launch.secret not in " ".join(launch.command)
        assert "--allowed_model_path=/data/models, v2" in launch.command
        assert "--allowed_model_path=/other" in launch.command
        assert "--pick_ports=rest,management" in launch.command and "--port=8500" in launch.command
        assert ENGINE_SECRET_ENV not in launch.env
    finally:
        launch.close()


def test_the_engine_environment_is_an_allow_list():
    given = {"PATH": "/bin", "HOME": "/home/me", "LANG": "C.UTF-8", "LC_ALL": "C", "TMPDIR": "/tmp",
             "TF_FORCE_GPU_ALLOW_GROWTH": "true", "CUDA_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": "2",
             "PYTHONPATH": "/src", "JUPYTER_DATA_DIR": "/d", "AWS_PROFILE": "p",
             "JUPYTERHUB_API_TOKEN": "hub-token", ENGINE_SECRET_ENV: "hand-secret", "JPY_SESSION_NAME": "nb",
             "GITHUB_TOKEN": "gh", "MY_PASSWORD": "pw", "TFSERVE_PRIVATE_STATE_DIR": "/s"}
    env = engine_environment(given, extra={"MODEL_DIR": "/models"})
    assert set(env) == {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TF_FORCE_GPU_ALLOW_GROWTH",
                        "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "PYTHONPATH", "JUPYTER_DATA_DIR",
                        "AWS_PROFILE", "TF_CPP_MIN_LOG_LEVEL", "MODEL_DIR"}
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "2"


def test_files_and_folders_are_owner_only(tmp_path):
    log_path = tmp_path / "engine.log"
    log_path.write_text("an old log\n")
    log_path.chmod(0o644)
    os.close(launcher.open_private_log(log_path))
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600, "an old world-readable log is tightened"
    os.close(launcher.open_private_log(tmp_path / "new.log"))
    assert stat.S_IMODE((tmp_path / "new.log").stat().st_mode) == 0o600
    (tmp_path / "link.log").symlink_to(tmp_path / "victim")
    with pytest.raises(OSError):
        launcher.open_private_log(tmp_path / "link.log")
    assert not (tmp_path / "victim").exists()
    launcher.write_private_text(tmp_path / "models.config", "model_config_list {\n}\n")
    assert stat.S_IMODE((tmp_path / "models.config").stat().st_mode) == 0o600
    folder = tmp_path / "state"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    launcher.private_directory(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


# -- a real engine ------------------------------------------------------------------------------------------


def _listening(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp writes them) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as handle:
            for line in list(handle)[1:]:
                local, state = line.split()[1], line.split()[3]
                address, _, hexport = local.rpartition(":")
                if state == "0A" and int(hexport, 16) == port:
                    found.add(address)
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")
@pytest.mark.timeout(180)
def test_a_launched_engine_reports_its_ports_proves_itself_and_leaks_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hub-token-the-engine-must-not-see")
    monkeypatch.setenv(ENGINE_SECRET_ENV, "a-secret-left-over-in-jupyters-environment")
    (tmp_path / "models.config").write_text("model_config_list {\n}\n")
    settings = EngineSettings(config_file=tmp_path / "models.config", host="0.0.0.0",
                              state_db=tmp_path / "state.sqlite", log_file=tmp_path / "engine.log")
    launch = EngineLaunch(settings)
    process = subprocess.Popen(launch.command, stdout=launch.stdout, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=launch.env, pass_fds=launch.pass_fds,
                               start_new_session=True)
    try:
        launch.spawned()
        ports = launch.read_ports(120)
        assert ports.pid == process.pid and all((ports.rest_port, ports.grpc_port, ports.management_port))
        launch.verify(ports)
        with pytest.raises(EngineLaunchError):
            launcher.verify_engine("0.0.0.0", ports, "not the secret")

        environ = Path(f"/proc/{process.pid}/environ").read_bytes()
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        for leaked in (b"hub-token-the-engine-must-not-see", b"a-secret-left-over", launch.secret.encode()):
            assert leaked not in environ and leaked not in cmdline, leaked
        assert b"JUPYTERHUB_API_TOKEN" not in environ and ENGINE_SECRET_ENV.encode() not in environ

        # REST is shared on 0.0.0.0 as asked; the management API stays on 127.0.0.1 only.
        assert _listening(ports.rest_port) == {"00000000"}
        assert _listening(ports.management_port) == {"0100007F"}

        import requests

        models = f"http://127.0.0.1:{ports.management_port}/api/models"
        assert requests.get(models, headers={ENGINE_SECRET_HEADER: launch.secret}, timeout=10).status_code == 200
        assert requests.get(models, timeout=10).status_code == 401
        assert stat.S_IMODE((tmp_path / "engine.log").stat().st_mode) == 0o600
    finally:
        launch.close()
        process.terminate()
        process.wait(30)


@pytest.mark.timeout(180)
def test_the_supervisor_sends_nothing_to_a_listener_holding_its_port(tmp_path, rogue):
    # The race of old (free_port(), closed, bound by the engine seconds later) lost to a rogue, made
    # certain: the rogue holds the REST port the engine is told to bind. Before, wait_ready took the
    # rogue's /healthz as the engine and the proxy sent it the secret and teammates' tokens.
    (tmp_path / "models.config").write_text("model_config_list {\n}\n")
    settings = EngineSettings(config_file=tmp_path / "models.config", rest_port=rogue.port,
                              state_db=tmp_path / "state.sqlite", log_file=tmp_path / "engine.log",
                              startup_timeout=25)
    supervisor = EngineSupervisor(settings)

    async def attempt() -> None:
        try:
            with pytest.raises(TimeoutError):
                await supervisor.start()
            assert supervisor.state != "running" and not supervisor.running
        finally:
            await supervisor.stop()

    asyncio.run(attempt())
    assert rogue.requests == [], "nothing at all goes to a port the engine did not report"
    assert "cannot listen on" in (tmp_path / "engine.log").read_text()


@pytest.mark.timeout(180)
def test_the_supervisor_takes_the_engines_own_ports_and_a_fresh_secret_at_each_start(tmp_path):
    (tmp_path / "models.config").write_text("model_config_list {\n}\n")
    settings = EngineSettings(config_file=tmp_path / "models.config", state_db=tmp_path / "state.sqlite",
                              log_file=tmp_path / "engine.log")
    supervisor = EngineSupervisor(settings)

    async def run() -> tuple[str, str]:
        try:
            await supervisor.start()
            first = EnginePorts(supervisor.process.pid, supervisor.rest_port, supervisor.grpc_port,
                                supervisor.management_port)
            first_secret = supervisor.secret
            supervisor.process.kill()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (supervisor.process.pid == first.pid or not supervisor.running):
                await asyncio.sleep(0.1)
            assert supervisor.running and supervisor.restarts == 1
            second = EnginePorts(supervisor.process.pid, supervisor.rest_port, supervisor.grpc_port,
                                 supervisor.management_port)
            assert second.rest_port and second.management_port
            await asyncio.to_thread(launcher.verify_engine, "127.0.0.1", second, supervisor.secret)
            return first_secret, supervisor.secret
        finally:
            await supervisor.stop()

    first_secret, second_secret = asyncio.run(run())
    assert first_secret != second_secret, "a secret seen by a dead engine opens nothing on its successor"
    assert stat.S_IMODE((tmp_path / "engine.log").stat().st_mode) == 0o600
