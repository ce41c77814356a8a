"""The engine SIGKILLed under load comes back within 10 s with its models, share tokens and splits.

A real ``jupyter server`` process with the extension (tests/helpers/jupyter.py) supervises a
real engine. Teammates' traffic goes through a share token while the engine is killed: the
supervisor must restart it, and the restarted engine must read back the model config, the
token and the A/B split from its state folder, with no help from the owner.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
import requests

from jupyter_tfserve.extension import supervisor as supervisor_module
from jupyter_tfserve.extension.supervisor import EngineSettings, EngineSupervisor
from tests.helpers.jupyter import JupyterServerProcess
from tests.helpers.models import write_tf1_half_plus

log = logging.getLogger(__name__)

RECOVERY_LIMIT_SECONDS = 10.0
MAX_REQUESTS = 300
MAX_TRAFFIC_SECONDS = 20.0
CLIENTS = 2
# Answers of the two versions to {"instances": [2.0]}: x/2 + 2 and x/2 + 3.
EXPECTED = {"1": 3.0, "2": 4.0}


@dataclass(frozen=True)
class Result:
    sent: float
    answered: float
    status: int  # 0: no HTTP answer at all
    version: str
    error: str = ""


@dataclass
class Traffic:
    """What the teammates' clients saw, request by request."""

    results: list[Result] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def sent(self) -> int:
        with self.lock:
            return len(self.results)

    def snapshot(self) -> list[Result]:
        with self.lock:
            return list(self.results)


def _client(url: str, token: str, traffic: Traffic, deadline: float) -> None:
    """Send predictions one after another until told to stop, the deadline or the request cap."""
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {token}"
        while not traffic.stop.is_set() and time.monotonic() < deadline and traffic.sent() < MAX_REQUESTS:
            sent = time.monotonic()
            status, version, error = 0, "", ""
            try:
                response = session.post(url, json={"instances": [2.0]}, timeout=15)
                status = response.status_code
                version = response.headers.get("X-TFServe-Model-Version", "")
                if status == 200 and response.json() != {"predictions": [EXPECTED.get(version)]}:
                    with traffic.lock:
                        traffic.wrong.append(f"version {version}: {response.text}")
                elif status != 200:
                    error = response.text
            except requests.RequestException as failure:
                error = repr(failure)
            with traffic.lock:
                traffic.results.append(Result(sent, time.monotonic(), status, version, error))
            if status != 200:
                time.sleep(0.05)  # a failing server is not hammered in a tight loop


def _restart_timeline(engine_log: str, killed_wall: float) -> str:
    """The parts of a restart, from the new engine's own log: when it began loading TensorFlow (its first
    C++ log line, which stamps epoch seconds), opened its REST port, and had its last version AVAILABLE."""
    found: dict[str, float] = {}
    for line in engine_log.splitlines():
        native = re.match(r"[IWE]\d{4} \d\d:\d\d:(\d+\.\d+) ", line)
        if native:
            stamp, what = float(native.group(1)), "loading TensorFlow"
        elif "REST API at" in line or ": AVAILABLE" in line:
            try:
                stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            except ValueError:
                continue
            what = "REST port open" if "REST API at" in line else "last version AVAILABLE"
        else:
            continue
        if stamp >= killed_wall and (what not in found or what == "last version AVAILABLE"):
            found[what] = stamp - killed_wall
    return ", ".join(f"{what} after {seconds:.1f} s" for what, seconds in found.items()) or "no restart logged"


@pytest.mark.timeout(300)
def test_engine_killed_under_load_is_back_within_10_seconds_with_tokens_and_split(tmp_path):
    repository = tmp_path / "repo"
    write_tf1_half_plus(repository / "ab", 1, b=2.0)
    write_tf1_half_plus(repository / "ab", 2, b=3.0)
    jupyter = JupyterServerProcess(tmp_path / "state", repository, tmp_path / "jupyter.log", tmp_path)
    try:
        jupyter.wait_for_engine()
        api = jupyter.url + "tfserve/api/"
        loaded = jupyter.owner.post(api + "models", json={"name": "ab", "base_path": "ab", "version_policy": "all",
                                                          "wait_seconds": 60}, timeout=90)
        assert loaded.status_code == 201, loaded.text
        routed = jupyter.owner.put(api + "models/ab/routing", json={"split": {"1": 50, "2": 50}}, timeout=30)
        assert routed.status_code == 200, routed.text
        created = jupyter.owner.post(api + "tokens", json={"model": "ab", "verbs": ["predict"]}, timeout=30)
        assert created.status_code == 201, created.text
        token = created.json()["token"]
        before = jupyter.owner.get(api + "engine", timeout=30).json()
        assert before["state"] == "running" and before["restarts"] == 0, before

        traffic = Traffic()
        deadline = time.monotonic() + MAX_TRAFFIC_SECONDS
        url = jupyter.url + "tfserve/v1/models/ab:predict"
        clients = [threading.Thread(target=_client, args=(url, token, traffic, deadline), daemon=True)
                   for _ in range(CLIENTS)]
        for client in clients:
            client.start()
        warm_until = time.monotonic() + 2
        while time.monotonic() < warm_until and traffic.sent() < MAX_REQUESTS // 4:
            time.sleep(0.05)
        os.kill(before["pid"], signal.SIGKILL)
        killed, killed_wall = time.monotonic(), time.time()

        # Back: the first answer to a request sent after the kill (a request already in flight may
        # have been answered by the old engine an instant before it died).
        def first_answer_after_kill() -> Result | None:
            return next((r for r in traffic.snapshot() if r.sent >= killed and r.status == 200), None)

        while first_answer_after_kill() is None and time.monotonic() < killed + 30 \
                and traffic.sent() < MAX_REQUESTS:
            time.sleep(0.05)
        back = first_answer_after_kill()
        back_at = back.answered if back is not None else float("inf")
        recovered_after = back_at - killed
        # A little traffic on the restarted engine, to see the split still applies.
        settle_until = time.monotonic() + 3
        while time.monotonic() < settle_until and traffic.sent() < MAX_REQUESTS:
            time.sleep(0.05)
        traffic.stop.set()
        for client in clients:
            client.join(timeout=20)

        results = traffic.snapshot()
        failed = [r for r in results if r.status != 200]
        after = Counter(r.version for r in results if r.sent >= back_at and r.status == 200)
        log.info("engine back %.2f s after SIGKILL; %d requests (%d before the kill), %d failed (%s); versions "
                 "after the restart: %s", recovered_after, len(results), sum(r.sent < killed for r in results),
                 len(failed), dict(Counter(r.status for r in failed)), dict(after))

        engine_log = (tmp_path / "state" / "engine.log").read_text(errors="replace")
        log.info("restarted engine: %s", _restart_timeline(engine_log, killed_wall))
        assert recovered_after <= RECOVERY_LIMIT_SECONDS, (
            f"the engine answered {recovered_after:.1f} s after SIGKILL ({_restart_timeline(engine_log, killed_wall)})"
            f"; its log:\n{engine_log[-4000:]}")
        assert not traffic.wrong, traffic.wrong[:5]
        assert len(results) <= MAX_REQUESTS + CLIENTS
        # The proxy holds requests while the engine restarts; only those caught in flight by the kill,
        # or sent before the supervisor saw the exit, may fail: as a 503 in TF Serving's error format.
        assert len(failed) <= 2 * CLIENTS, f"{len(failed)} of {len(results)} requests failed: {failed[:10]}"
        for result in failed:
            assert result.status == 503 and json.loads(result.error).keys() == {"error"}, result
            assert killed - 1 <= result.sent < back_at, f"a request failed outside the outage: {result}"
        engine = jupyter.owner.get(api + "engine", timeout=30).json()
        assert engine["state"] == "running" and engine["restarts"] == 1, engine
        assert engine["last_exit"] == "was killed by SIGKILL" and engine["pid"] != before["pid"]
        described = jupyter.owner.get(api + "models/ab", timeout=30).json()
        assert described["routing"]["split"] == {"1": 50.0, "2": 50.0}, described["routing"]
        assert set(after) == {"1", "2"}, f"the restarted engine no longer splits ab: {dict(after)}"
        listed = jupyter.owner.get(api + "tokens", timeout=30).json()["tokens"]
        assert [entry["revoked_at"] for entry in listed if entry["id"] == created.json()["id"]] == [None]
    finally:
        jupyter.stop()


class _FakeEngine:
    """A process that runs until :meth:`die` (the supervisor only waits on it)."""

    def __init__(self) -> None:
        self.pid = 0
        self.returncode: int | None = None
        self._exited = asyncio.Event()

    async def wait(self) -> int:
        await self._exited.wait()
        return self.returncode  # type: ignore[return-value]

    def die(self) -> None:
        self.returncode = -signal.SIGKILL
        self._exited.set()


class _Supervisor(EngineSupervisor):
    """The supervisor's restart loop around fake engines: when each was started."""

    def __init__(self) -> None:
        super().__init__(EngineSettings(config_file=Path("unused.config")))
        self.started: list[float] = []

    async def _spawn(self) -> None:
        self.process = _FakeEngine()  # type: ignore[assignment]
        self.started.append(time.monotonic())
        self.state = "running"


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_crash_after_a_stable_run_restarts_without_the_crash_loop_backoff(monkeypatch):
    # The backoff grows while the engine crash-loops, and starts over once an engine has run a while:
    # a Jupyter session's fifth crash in a week is restarted as fast as its first (it waited 10 s).
    monkeypatch.setattr(supervisor_module, "RESTART_BACKOFF_SECONDS", (0.05, 0.4, 0.8, 1.6))
    monkeypatch.setattr(supervisor_module, "STABLE_RUN_SECONDS", 0.6)
    supervisor = _Supervisor()
    await supervisor._spawn()
    watch = asyncio.get_running_loop().create_task(supervisor._watch_forever())
    try:
        delays = []
        for ran_for in (0.0, 0.0, 0.0, 0.8, 0.0):  # three quick crashes, a stable run, one quick crash
            await asyncio.sleep(ran_for)
            spawned = len(supervisor.started)
            supervisor.process.die()
            died = time.monotonic()
            while len(supervisor.started) == spawned:
                await asyncio.sleep(0.01)
            delays.append(supervisor.started[-1] - died)
        expected = [0.05, 0.4, 0.8, 0.05, 0.4]
        assert all(abs(delay - want) < 0.15 for delay, want in zip(delays, expected, strict=True)), delays
        assert supervisor.restarts == 5
    finally:
        supervisor._stopping = True
        watch.cancel()
