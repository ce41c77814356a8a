"""Every notebook, run twice in the same real Jupyter server, as a user re-runs it: no error, no stderr.

The kernel is started by the server (``POST /api/kernels``, as JupyterLab starts
one) and the cells go through its websocket. The server runs WITHOUT the suite's
``TF_CPP_MIN_LOG_LEVEL=2``, so TensorFlow's start-up chatter reaches the kernel as
it reaches a user's; the second run finds the first run's versions, labels,
split and shadow still there.
"""

from __future__ import annotations

import os
import time

import nbformat
import pytest

from tests.helpers.jupyter import JupyterServerProcess
from tests.helpers.kernel import ServerKernel
from tests.kernel.test_notebooks import NOTEBOOKS

RUNS = 2


class UserEnvironmentServer(JupyterServerProcess):
    """A Jupyter server whose environment has no TensorFlow log settings: what a user's has."""

    def _spawn(self, command, log_path, env, log_mode="wb") -> None:
        # PYTEST_CURRENT_TEST would turn off ipykernel's capture of fd 2, where TensorFlow's C++ writes.
        dropped = ("TF_CPP_MIN_LOG_LEVEL", "JPY_PARENT_PID", "PYTEST_CURRENT_TEST")
        env = {key: value for key, value in env.items() if key not in dropped}
        super()._spawn(command, log_path, env, log_mode)


@pytest.fixture(scope="module")
def user_server(jupyter_home, jupyter_env, repository, monkeypatch_module):
    monkeypatch_module.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    server = UserEnvironmentServer(jupyter_home / "rerun-state", repository, jupyter_home / "rerun.log",
                                   jupyter_home)
    try:
        server.wait_for_engine()
        yield server
    finally:
        server.stop()


def run_notebook(kernel: ServerKernel, notebook) -> list[str]:
    """Each code cell in order, stopping at the first error; what went wrong, cell by cell."""
    problems = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        execution = kernel.execute(cell.source, timeout=300)
        if execution.error is not None:
            problems.append(f"cell {index}: {execution.error['ename']}: {execution.error['evalue']}")
            break
        if execution.stderr.strip():
            problems.append(f"cell {index} wrote to stderr: {execution.stderr.strip()[:2000]}")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_twice_without_errors_or_stderr(path, user_server, tmp_path, monkeypatch):
    notebook = nbformat.read(path, as_version=4)
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    with ServerKernel(user_server) as kernel:
        kernel.execute(f"import os; os.chdir({str(tmp_path)!r})")
        for run in range(1, RUNS + 1):
            assert run_notebook(kernel, notebook) == [], f"run {run} of {path.stem}"
    assert time.monotonic() - started < 600
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ, "the test sees what users see"
