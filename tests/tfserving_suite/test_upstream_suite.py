"""TF Serving's own integration test, ``tensorflow_model_server_test.py``, run unchanged against our server.

``../shared/tfserving-suite/run.sh`` lays the upstream files out as bazel would, puts
``jupyter-tfserve serve`` where the suite expects the ``tensorflow_model_server`` binary
(flags untouched) and runs all 30 tests once per session; each becomes one test here, so a
regression names the upstream test that caught it.

The suite's client side builds Keras models with ``tf.keras`` and expects TF Serving's
Keras 2 signatures (input ``x``, output ``y``); with Keras 3 as ``tf.keras`` the export
itself has other names, under TF Serving too. So the run gets ``TF_USE_LEGACY_KERAS=1``
(and ``tf-keras``, a test dependency), the environment TF Serving's test was written for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO.parent / "shared" / "tfserving-suite"
RUN = SUITE / "run.sh"

# Upstream tests that cannot pass here, whatever the server does, and why.
CANNOT_PASS_HERE = {
    "test_tf_text": "the tf_text_regression model is not in ../shared and needs the tensorflow-text ops; the test "
                    "also reads flags.os, which TensorFlow's flags module no longer has",
}


def _upstream_names() -> list[str]:
    if not RUN.is_file():
        return []
    listing = subprocess.run(["bash", str(RUN), "--list"], capture_output=True, text=True, check=True)
    return listing.stdout.split()


NAMES = _upstream_names()


@pytest.fixture(scope="session")
def suite_results(tmp_path_factory) -> dict:
    if not RUN.is_file():
        pytest.skip(f"TF Serving's suite is not at {SUITE} (a plain clone has no ../shared; CI always has it)")
    suite_dir = tmp_path_factory.mktemp("tfs-suite")
    venv = Path(sys.prefix)
    env = dict(os.environ, TFS_VENV=str(venv), TFS_SUITE_DIR=str(suite_dir), TF_USE_LEGACY_KERAS="1",
               TFS_SUITE_TIMEOUT="1500")
    completed = subprocess.run(["bash", str(RUN)], cwd=REPO, env=env, capture_output=True, text=True,
                               timeout=1800)
    results_file = suite_dir / "results.json"
    if not results_file.is_file():
        pytest.fail(f"run.sh wrote no results (exit {completed.returncode}):\n{completed.stdout[-3000:]}\n"
                    f"{completed.stderr[-3000:]}")
    summary = (suite_dir / "result.txt").read_text() if (suite_dir / "result.txt").is_file() else completed.stdout
    print(summary)  # the upstream report, in pytest's captured output
    return {"tests": json.loads(results_file.read_text())["tests"], "report": summary}


@pytest.mark.skipif(not NAMES, reason=f"TF Serving's suite is not at {SUITE} (a plain clone has no ../shared; "
                                      "CI always has it)")
@pytest.mark.parametrize("name", NAMES or ["none"])
def test_upstream(name: str, suite_results: dict) -> None:
    result = suite_results["tests"].get(name)
    assert result is not None, f"{name} did not run; the suite's report:\n{suite_results['report'][-4000:]}"
    if result["outcome"] == "passed":
        return
    if name in CANNOT_PASS_HERE:
        pytest.xfail(CANNOT_PASS_HERE[name])
    pytest.fail(f"upstream {name} {result['outcome']}: {result.get('message', '')}\n"
                f"{result.get('longrepr', '')[-4000:]}")
