"""The price of the Jupyter door: p50 latency through ``{base_url}tfserve/v1`` against the engine's own port.

Usage: .venv/bin/python benchmarks/extension_overhead.py [--seconds 5]
Starts a real Jupyter server with the extension, loads half_plus_two through the management
API, creates a share token, then drives both doors with the same token, body and wrk
settings at concurrency 1 and 16, in one run. Prints p50/p99 of each, the extra p50 of the
Jupyter path and its throughput as a share of the engine port's; writes
benchmarks/results/extension_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from serving_benchmark import run_wrk  # noqa: E402

from tests.helpers.jupyter import JupyterServerProcess  # noqa: E402
from tests.helpers.models import write_tf1_half_plus  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5, help="length of each measured wrk run")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: run ./dev.sh bench, or apt-get install wrk")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_tf1_half_plus(root / "repo" / "hp", 1)
        body = root / "body.json"
        body.write_text('{"instances": [1.0, 2.0, 5.0]}')
        print("starting Jupyter with the extension ...", flush=True)
        jupyter = JupyterServerProcess(root / "state", root / "repo", root / "jupyter.log", root)
        try:
            jupyter.wait_for_engine()
            api = jupyter.url + "tfserve/api/"
            loaded = jupyter.owner.post(api + "models", json={"name": "hp", "base_path": "hp", "wait_seconds": 60},
                                        timeout=90)
            loaded.raise_for_status()
            token = jupyter.owner.post(api + "tokens", json={"model": "hp"}, timeout=30).json()["token"]
            engine_port = jupyter.owner.get(api + "engine", timeout=30).json()["rest_port"]
            doors = {
                "engine port": f"http://127.0.0.1:{engine_port}/v1/models/hp:predict",
                "jupyter tfserve/v1": jupyter.url + "tfserve/v1/models/hp:predict",
            }
            headers = {"Authorization": f"Bearer {token}"}
            results = []
            for concurrency in (1, 16):
                for door, url in doors.items():
                    run_wrk(url, body, concurrency, 1, headers)  # warm up connections and caches
                    load = run_wrk(url, body, concurrency, args.seconds, headers)
                    if load["errors"]:
                        raise SystemExit(f"{load['errors']} failed requests through {door}")
                    results.append({"door": door, "concurrency": concurrency, **load,
                                    "requests_per_second": load["requests"] / load["seconds"]})
                    print(f"{door:>20}  c={concurrency:<3} {load['requests'] / load['seconds']:8.0f} req/s  "
                          f"p50 {load['p50_ms']:6.2f} ms  p99 {load['p99_ms']:6.2f} ms", flush=True)
        finally:
            jupyter.stop()
    overhead = {}
    for concurrency in (1, 16):
        by_door = {r["door"]: r for r in results if r["concurrency"] == concurrency}
        jupyter, engine = by_door["jupyter tfserve/v1"], by_door["engine port"]
        extra = jupyter["p50_ms"] - engine["p50_ms"]
        ratio = jupyter["p50_ms"] / engine["p50_ms"]
        throughput = jupyter["requests_per_second"] / engine["requests_per_second"]
        overhead[concurrency] = {"extra_p50_ms": extra, "p50_ratio": ratio, "throughput_ratio": throughput}
        print(f"concurrency {concurrency}: tfserve/v1 adds {extra:.2f} ms at p50 ({ratio:.2f} x the engine port); "
              f"its throughput is {throughput:.2f} x the engine port's")
    out = HERE / "results" / "extension_overhead.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"runs": results, "overhead": overhead}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
