"""The Jupyter server process and a kernel's client do not load numpy, TensorFlow or TF Serving's protos.

They talk to the engine over HTTP and need a few strings (jupyter_tfserve.wire) and the
launcher; loading TensorFlow's stack for those costs the Jupyter server memory and
start-up time. Checked in a fresh interpreter, since this test process has them all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("numpy", "tensorflow", "tensorflow_serving", "keras", "grpc")


def _loaded_after(*modules: str) -> dict[str, list[str]]:
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps({'heavy': sorted(n for n in sys.modules if n.split('.')[0] in "
        f"{HEAVY!r}), 'engine': sorted(n for n in sys.modules if n.startswith(('jupyter_tfserve.engine', "
        "'jupyter_tfserve.server')))}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(180)
def test_the_extension_and_the_kernel_side_import_no_numpy_tensorflow_or_protos():
    loaded = _loaded_after("jupyter_tfserve", "jupyter_tfserve.extension.app", "jupyter_tfserve.kernel.client",
                           "jupyter_tfserve.kernel.magics", "jupyter_tfserve.kernel.private_engine")
    assert loaded["heavy"] == [], loaded
    # Nor the engine's own modules (each would drag its dependencies in sooner or later).
    assert loaded["engine"] == [], loaded


@pytest.mark.timeout(60)
def test_the_launcher_and_the_wire_module_need_only_the_standard_library():
    code = ("import sys; before = set(sys.modules); import jupyter_tfserve.launcher, jupyter_tfserve.wire; "
            "print(sorted(n for n in set(sys.modules) - before if not n.startswith('jupyter_tfserve') "
            "and n.split('.')[0] not in sys.stdlib_module_names))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
