"""The first ``%tfserve export`` in a fresh kernel: the whole cell against the export it reports.

Usage: .venv/bin/python benchmarks/first_export.py [--runs 3]
Starts a real Jupyter server with the extension; per run, a fresh kernel started by the
server (as JupyterLab starts one) builds a small Keras model, loads the extension, then
runs ``%tfserve export``. Prints the cell's wall time, the export's own printed duration
and the difference (finding the server, the client, the curl line: issue 18 wants it
<= 1 s); writes benchmarks/results/first_export.json.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.helpers.jupyter import JupyterServerProcess  # noqa: E402
from tests.helpers.kernel import ServerKernel  # noqa: E402

SETUP = ("import keras\n"
         "model = keras.Sequential([keras.Input((64,), name='pixels'), keras.layers.Dense(32, activation='relu'),"
         " keras.layers.Dense(10)])\n"
         "%load_ext jupyter_tfserve")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="fresh kernels, one first export each")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "repo").mkdir()
        print("starting Jupyter with the extension ...", flush=True)
        jupyter = JupyterServerProcess(root / "state", root / "repo", root / "jupyter.log", root)
        try:
            jupyter.wait_for_engine()
            for run in range(args.runs):
                with ServerKernel(jupyter) as kernel:
                    setup = kernel.execute(SETUP)
                    if setup.error:
                        raise SystemExit(f"setup failed: {setup.error}")
                    started = time.perf_counter()
                    exported = kernel.execute(f"%tfserve export model first{run}")
                    wall = time.perf_counter() - started
                printed = re.findall(r"\((\d+\.\d) s\)", exported.stdout)
                if exported.error or exported.stderr or len(printed) != 1:
                    raise SystemExit(f"export failed: {exported.error or exported.stderr or exported.stdout}")
                export_s = float(printed[0])
                runs.append({"cell_s": wall, "export_s": export_s, "beyond_export_s": wall - export_s})
                print(f"run {run + 1}: cell {wall:.2f} s, export {export_s:.1f} s, beyond the export "
                      f"{wall - export_s:.2f} s", flush=True)
        finally:
            jupyter.stop()
    median = statistics.median(r["beyond_export_s"] for r in runs)
    print(f"median time beyond the export: {median:.2f} s over {len(runs)} fresh kernels")
    out = HERE / "results" / "first_export.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"runs": runs, "median_beyond_export_s": median}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
