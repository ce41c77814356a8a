"""Every notebook in notebooks/ runs top to bottom with nbclient, its kernel attached to a real Jupyter server."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def problems(notebook) -> list[str]:
    """Errors, and the one-line ``tfserve:`` complaints a magic prints instead of raising."""
    found = []
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                found.append(f"cell {index}: {output.ename}: {output.evalue}")
            elif output.output_type == "stream" and output.name == "stderr" and (
                    "tfserve:" in output.text or "Traceback" in output.text):
                found.append(f"cell {index}: {output.text.strip()}")
    return found


def test_every_notebook_is_here():
    assert [path.stem for path in NOTEBOOKS] == ["01-quickstart", "02-ab-testing", "03-batching-and-latency",
                                                 "04-share-with-a-teammate"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_against_a_real_server(path, jupyter_server, tmp_path, client):
    notebook = nbformat.read(path, as_version=4)
    executor = NotebookClient(notebook, timeout=300, kernel_name="python3", store_widget_state=True,
                              resources={"metadata": {"path": str(tmp_path)}})
    # As if the server had started the kernel: JPY_PARENT_PID is how the kernel finds its server.
    env = {**os.environ, "JPY_PARENT_PID": str(jupyter_server.process.pid), "TF_CPP_MIN_LOG_LEVEL": "2"}
    executor.execute(env=env, independent=True)
    assert problems(notebook) == []
    text = "".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", []))
    if path.stem == "01-quickstart":
        assert '"predictions"' in text, "the curl cell got an answer"
    if path.stem in ("02-ab-testing", "03-batching-and-latency"):
        state = notebook.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
        assert state, "the dashboard widgets were displayed"
    if path.stem == "04-share-with-a-teammate":
        assert "model list: 403" in text and "notebooks:  403" in text and "after revoking: 403" in text
    served = {model["name"] for model in client.models()} & {"digits", "digits_ab", "mlp", "celsius"}
    assert served, "the notebook's model is served by the Jupyter server's engine, not a private one"
    for model in served:
        client.unload(model)
