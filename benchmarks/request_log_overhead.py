"""What request logging at rate 1.0 costs a request, against logging off, on the engine's request path.

Usage: .venv/bin/python benchmarks/request_log_overhead.py [--requests 3000] [--rounds 3] [--rows 8]
       [--concurrency 8]

Builds a TF1 half_plus_two SavedModel in a temporary directory and drives ``Engine.predict``
in this process (the path REST and gRPC share, without the HTTP or gRPC framing, so the
overhead shows at its largest relative size) with ``--concurrency`` asyncio tasks. Runs
alternate off / on (a config reload switches ``logging_config``) for ``--rounds`` rounds of
``--requests`` requests each, and prints the median throughput of each, their ratio, the
cost per request in microseconds, and how many records were written and dropped (a dropped
record is work not done, so drops are reported next to the ratio). Bounded: at most
2 x rounds x requests predicts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
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
from tests.helpers.models import write_tf1_half_plus  # noqa: E402

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


def _records(path: Path):
    from jupyter_tfserve.engine.request_log_tfrecord import read_records

    return read_records(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    result = asyncio.run(main_async(args))
    sys.stdout.write(
        f"logging off: {result['off_rps']:.0f} req/s; rate 1.0: {result['on_rps']:.0f} req/s; "
        f"throughput ratio {result['ratio']:.3f} ({(1 - result['ratio']) * 100:+.1f}% cost); "
        f"{result['overhead_us']:.1f} us per request; records written {result['written']}/{result['expected']}, "
        f"dropped {result['dropped']}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
