"""An executed notebook saved as nbclient saves it stays small and shows each widget without a kernel.

A plotly FigureWidget keeps its JavaScript in the widget state, so a notebook saved
with ``metadata.widgets`` grew to 15 MB. Saved without widget state, each widget
output must carry a ``text/html`` rendering of what it showed (tables, and plotly
figures that load plotly.js from its CDN instead of embedding it), which is what
nbconvert, nbviewer and GitHub render when no widget manager can.
"""

from __future__ import annotations

import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.kernel.test_notebooks import NOTEBOOKS, problems

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
MAX_BYTES = 1_000_000
# Per notebook: its served model, and a phrase each of its widgets' static renderings must hold, in order.
EXPECTED = {"02-ab-testing": ("digits_ab", ["A/B: digits_ab", "instances with different classes"]),
            "03-batching-and-latency": ("mlp", ["latency and throughput per version"])}


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.stem in EXPECTED], ids=lambda p: p.stem)
def test_executed_notebook_is_small_and_every_widget_has_a_static_rendering(path, jupyter_server, tmp_path,
                                                                             client):
    model, phrases = EXPECTED[path.stem]
    notebook = nbformat.read(path, as_version=4)
    executor = NotebookClient(notebook, timeout=300, kernel_name="python3", store_widget_state=False,
                              resources={"metadata": {"path": str(tmp_path)}})
    env = {**os.environ, "JPY_PARENT_PID": str(jupyter_server.process.pid), "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        executor.execute(env=env, independent=True)
    finally:
        if client.find_model(model) is not None:
            client.unload(model)
    assert problems(notebook) == []
    saved = tmp_path / path.name
    nbformat.write(notebook, saved)
    size = saved.stat().st_size
    print(f"\n{path.name} executed and saved without widget state: {size} bytes")
    assert size < MAX_BYTES, f"{path.name} executed is {size} bytes"
    assert "widgets" not in notebook.metadata

    widget_outputs = [(index, output) for index, cell in enumerate(notebook.cells)
                      for output in cell.get("outputs", []) if WIDGET_VIEW in output.get("data", {})]
    assert len(widget_outputs) == len(phrases), "every widget of the notebook was displayed"
    for index, output in widget_outputs:
        html = output["data"].get("text/html", "")
        assert "tfserve-static" in html, f"cell {index}: a widget without a static rendering"
        assert "<table" in html and "Plotly.newPlot" in html, f"cell {index}: no table or no figure"
        assert "plotly.js v" not in html[:5000] and len(html) < 300_000, f"cell {index}: plotly.js embedded?"
    for (index, output), phrase in zip(widget_outputs, phrases, strict=True):
        assert phrase in output["data"]["text/html"], f"cell {index}"
    if path.stem == "02-ab-testing":
        dashboard, comparison = (output["data"]["text/html"] for _, output in widget_outputs)
        assert "agreement rate" in dashboard and "accuracy" in comparison
        assert "too few for a histogram" not in comparison  # 45 requests per version
