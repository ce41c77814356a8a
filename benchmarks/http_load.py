"""A bounded closed-loop HTTP load generator (own process) that keeps answers apart by status.

wrk reports one latency distribution for all answers; under overload we need the
503s' latency on its own (are refusals quick?) and every other outcome counted.

Usage: python benchmarks/http_load.py URL BODY_FILE CONCURRENCY SECONDS [MAX_REQUESTS]
Prints one JSON line: per status (and "error" for failed connections) the count and p50/p99 in ms.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import aiohttp
import numpy as np


async def main(url: str, body_file: str, concurrency: int, seconds: float, max_requests: int) -> None:
    body = Path(body_file).read_bytes()
    latencies: dict[str, list[float]] = defaultdict(list)
    sent = 0
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal sent
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                start = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        outcome = str(response.status)
                except (aiohttp.ClientError, TimeoutError):
                    outcome = "error"
                latencies[outcome].append(time.perf_counter() - start)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    report = {"seconds": elapsed, "by_status": {}}
    for outcome, values in sorted(latencies.items()):
        milliseconds = np.array(values) * 1000
        report["by_status"][outcome] = {"count": len(values), "p50_ms": float(np.percentile(milliseconds, 50)),
                                        "p99_ms": float(np.percentile(milliseconds, 99))}
    print(json.dumps(report))


if __name__ == "__main__":
    url, body_file, concurrency, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    max_requests = int(sys.argv[5]) if len(sys.argv) > 5 else 1_000_000
    asyncio.run(main(url, body_file, concurrency, seconds, max_requests))
