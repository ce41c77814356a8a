"""What request logging at rate 1.0 costs a request, against logging off, on the engine's request path.

Usage: .venv/bin/python benchmarks/request_log_overhead.py [--requests 3000] [--rounds 3] [--rows 8]
       [--concurrency 8] [--phase in-process|http|both] [--http-rounds 5] [--seconds 3]

Builds a TF1 half_plus_two SavedModel in a temporary directory and drives ``Engine.predict``
in this process (the path REST and gRPC share, without the HTTP or gRPC framing, so the
overhead shows at its largest relative size) with ``--concurrency`` asyncio tasks. Runs
alternate off / on (a config reload switches ``logging_config``) for ``--rounds`` rounds of
``--requests`` requests each, and prints the median throughput of each, their ratio, the
cost per request in microseconds, and how many records were written and dropped (a dropped
record is work not done, so drops are reported next to the ratio). Bounded: at most
2 x rounds x requests predicts.

The ``http`` phase measures what a client sees: the real server (``jupyter tfserve serve``, its
own process) driven over REST by wrk (``/usr/bin/wrk``, ``post.lua``) with the same model, body
and concurrency, logging switched off / on (rate 1.0) through the management API between runs,
alternating for ``--http-rounds`` rounds of ``--seconds`` each. It prints the median req/s of
each, their ratio (the issue's target: >= 0.95), and the server's CPU time per request (user +
system from ``/proc/PID/stat``, over each run), which is less noisy than throughput on a shared
machine. Bounded: 2 x http-rounds runs of a few seconds each, plus a one-second warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from google.protobuf import text_format  # noqa: E402

from jupyter_tfserve.engine.config import ModelServerConfig  # noqa: E402
from jupyter_tfserve.engine.engine import Engine, Target  # noqa: E402
from jupyter_tfserve.wire import ENGINE_SECRET_ENV, ENGINE_SECRET_HEADER  # noqa: E402
from tests.helpers.models import write_tf1_half_plus  # noqa: E402
from tests.helpers.server import free_port  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serving_benchmark import process_cpu_seconds, stop_process_group  # noqa: E402

log = logging.getLogger("request_log_overhead")


def make_config(base: Path, prefix: Path | None) -> ModelServerConfig:
    logging_config = "" if prefix is None else (
        f'logging_config {{ log_collector_config {{ type: "file" filename_prefix: "{prefix}" }} '
        "sampling_config { sampling_rate: 1.0 } }")
    config = ModelServerConfig()
    text_format.Parse(f'model_config_list {{ config {{ name: "m" base_path: "{base}" {logging_config} }} }}', config)
    return config


async def run_round(engine: Engine, requests: int, concurrency: int, rows: int) -> float:
    """Requests per second of one round."""
    x = np.arange(rows, dtype=np.float32).reshape(rows, 1)
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await engine.predict(Target("m"), lambda signature: {"x": x.copy()})

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests / (time.perf_counter() - started)


async def main_async(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "m"
        write_tf1_half_plus(base, 1)
        prefix = Path(tmp) / "logs" / "m"
        engine = Engine()
        await engine.start(make_config(base, None))
        await engine.manager.wait_until_settled(60)
        await run_round(engine, min(500, args.requests), args.concurrency, args.rows)  # warm up
        off, on = [], []
        for _ in range(args.rounds):
            await engine.reload_config(make_config(base, None))
            off.append(await run_round(engine, args.requests, args.concurrency, args.rows))
            await engine.reload_config(make_config(base, prefix))
            on.append(await run_round(engine, args.requests, args.concurrency, args.rows))
        engine.request_log.flush()
        dropped = engine.request_log.dropped("m")
        await engine.stop()
        written = sum(1 for path in prefix.parent.glob("m*") for _ in _records(path))
    off_rps, on_rps = statistics.median(off), statistics.median(on)
    return {"off_rps": off_rps, "on_rps": on_rps, "ratio": on_rps / off_rps,
            "overhead_us": (1 / on_rps - 1 / off_rps) * 1e6, "written": written, "dropped": dropped,
            "expected": args.rounds * args.requests}


# -- over HTTP, the real server --------------------------------------------------------------------


class ServerProcess:
    """``jupyter tfserve serve`` with a management port, in its own session (so it is stopped with its children)."""

    def __init__(self, config: Path, directory: Path) -> None:
        import requests

        self.secret = secrets.token_hex(16)
        self.rest, self.management = free_port(), free_port()
        self.log = open(directory / "server.log", "wb")  # noqa: SIM115
        command = [sys.executable, "-m", "jupyter_tfserve", "serve", f"--rest_api_port={self.rest}",
                   f"--port={free_port()}", f"--management_port={self.management}",
                   f"--model_config_file={config}", "--log_level=WARNING"]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO,
                                        start_new_session=True, env={**os.environ, ENGINE_SECRET_ENV: self.secret,
                                                                     "TF_CPP_MIN_LOG_LEVEL": "2"})
        self.session = requests.Session()
        self.session.headers[ENGINE_SECRET_HEADER] = self.secret
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited; see {directory / 'server.log'}")
            with contextlib.suppress(requests.RequestException):
                states = self.session.get(f"http://127.0.0.1:{self.rest}/v1/models/m", timeout=1).json()
                if [s["state"] for s in states.get("model_version_status", [])] == ["AVAILABLE"]:
                    return
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"the server did not serve m within 120 s; see {directory / 'server.log'}")

    def set_logging(self, rate: float) -> dict:
        response = self.session.put(f"http://127.0.0.1:{self.management}/api/models/m/logging",
                                    json={"sampling_rate": rate}, timeout=30)
        response.raise_for_status()
        return response.json()

    def describe(self) -> dict:
        response = self.session.get(f"http://127.0.0.1:{self.management}/api/models/m", timeout=30)
        response.raise_for_status()
        return response.json()

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        stop_process_group(self.process)
        self.log.close()


def run_wrk(url: str, body_file: Path, concurrency: int, seconds: float) -> dict:
    """One bounded wrk run (``post.lua`` prints one JSON line)."""
    command = ["wrk", f"-t{min(2, concurrency)}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s",
               "--timeout", "10s", "-s", str(HERE / "post.lua"), url]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60,
                              env={**os.environ, "WRK_BODY_FILE": str(body_file)})
    line = next((line for line in finished.stdout.splitlines() if line.startswith("{")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {finished.stdout[-1000:]} {finished.stderr[-1000:]}")
    return json.loads(line)


def http_phase(args: argparse.Namespace) -> dict:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    with tempfile.TemporaryDirectory(prefix="tfserve-logbench-") as tmp:
        directory = Path(tmp)
        write_tf1_half_plus(directory / "m", 1)
        config = directory / "models.config"
        config.write_text(f'model_config_list {{ config {{ name: "m" base_path: "{directory / "m"}" }} }}\n')
        body = directory / "body.json"
        body.write_text(json.dumps({"instances": [[float(i)] for i in range(args.rows)]}))
        server = ServerProcess(config, directory)
        url = f"http://127.0.0.1:{server.rest}/v1/models/m:predict"
        try:
            run_wrk(url, body, args.concurrency, 1)  # warm up: connections, caches, the first requests
            runs: dict[str, list[dict]] = {"off": [], "on": []}
            for _ in range(args.http_rounds):
                for mode, rate in (("off", 0.0), ("on", 1.0)):
                    server.set_logging(rate)
                    cpu = server.cpu_seconds()
                    result = run_wrk(url, body, args.concurrency, args.seconds)
                    result["cpu_s"] = server.cpu_seconds() - cpu
                    runs[mode].append(result)
            server.set_logging(0.0)  # flushes and closes the last file
            logging_state = server.describe().get("logging")
        finally:
            server.stop()
        written = sum(1 for path in directory.rglob("m-*.tfrecord") for _ in _records(path))
    summary = {}
    for mode, results in runs.items():
        rps = [r["requests"] / (r["duration_us"] / 1e6) for r in results]
        cpu_us = [r["cpu_s"] / r["requests"] * 1e6 for r in results]
        summary[mode] = {"rps": statistics.median(rps), "rps_runs": rps, "cpu_us": statistics.median(cpu_us),
                         "cpu_us_runs": cpu_us, "p50_ms": statistics.median(r["p50_us"] / 1000 for r in results),
                         "errors": sum(r["non2xx"] + r["socket_errors"] for r in results),
                         "requests": sum(r["requests"] for r in results)}
    # paired ratios: each "on" run against the "off" run just before it, so a slow moment hits both
    pairs = [on / off for off, on in zip(summary["off"]["rps_runs"], summary["on"]["rps_runs"], strict=True)]
    return {**summary, "ratio": summary["on"]["rps"] / summary["off"]["rps"], "paired_ratios": pairs,
            "written": written, "logged_requests": summary["on"]["requests"], "after": logging_state}


def _records(path: Path):
    from jupyter_tfserve.engine.request_log_tfrecord import read_records

    return read_records(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--phase", choices=("in-process", "http", "both"), default="both")
    parser.add_argument("--http-rounds", type=int, default=5, help="off/on pairs of wrk runs (http phase)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each wrk run (http phase)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.phase in ("in-process", "both"):
        result = asyncio.run(main_async(args))
        sys.stdout.write(
            f"in-process: logging off: {result['off_rps']:.0f} req/s; rate 1.0: {result['on_rps']:.0f} req/s; "
            f"throughput ratio {result['ratio']:.3f} ({(1 - result['ratio']) * 100:+.1f}% cost); "
            f"{result['overhead_us']:.1f} us per request; records written {result['written']}/"
            f"{result['expected']}, dropped {result['dropped']}\n")
    if args.phase in ("http", "both"):
        http = http_phase(args)
        off, on = http["off"], http["on"]
        sys.stdout.write(
            f"http (wrk -c{args.concurrency}, {args.http_rounds} x {args.seconds:g} s each, alternating): "
            f"logging off: {off['rps']:.0f} req/s, server CPU {off['cpu_us']:.0f} us/request, p50 "
            f"{off['p50_ms']:.2f} ms; rate 1.0: {on['rps']:.0f} req/s, server CPU {on['cpu_us']:.0f} us/request, "
            f"p50 {on['p50_ms']:.2f} ms\n"
            f"  throughput ratio {http['ratio']:.3f} ({(1 - http['ratio']) * 100:+.1f}% cost; paired runs "
            f"{', '.join(f'{r:.3f}' for r in http['paired_ratios'])}); CPU per request "
            f"{on['cpu_us'] / off['cpu_us']:.3f}x ({on['cpu_us'] - off['cpu_us']:+.0f} us); "
            f"records written {http['written']}/{http['logged_requests']}; errors {off['errors'] + on['errors']}\n"
            f"  req/s off {', '.join(f'{r:.0f}' for r in off['rps_runs'])}; "
            f"on {', '.join(f'{r:.0f}' for r in on['rps_runs'])}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
