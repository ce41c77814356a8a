"""Headless-Chromium screenshots of the A/B dashboard, the live monitor and the offline comparison.

Not a test: a way to LOOK at the plots. A private engine serves notebook 02's two
digits models, real traffic goes through an 80/20 split with a shadow, and each widget
is drawn from the engine's real windows. Each widget's HTML and figures go into a page
with plotly.js from the installed plotly package (no network) and Debian's chromium
photographs it. ``--before`` draws them with the widgets of git's HEAD instead (copied
to a temporary package), for a before/after comparison; the after run also photographs
the ``text/html`` fallback that a notebook saved without widget state shows.

    .venv/bin/python benchmarks/widget_screenshots.py --out /tmp/e18-shots [--before]
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
WIDGETS = "jupyter_tfserve/kernel/widgets"
log = logging.getLogger("widget_screenshots")


def widgets_module(before: bool, scratch: Path) -> Any:
    """The widgets package of the working tree, or HEAD's copied beside it as ``widgets_head``."""
    if not before:
        return importlib.import_module("jupyter_tfserve.kernel.widgets")
    import jupyter_tfserve.kernel as kernel

    target = scratch / "widgets_head"
    target.mkdir(parents=True)
    names = subprocess.run(["git", "ls-tree", "--name-only", f"HEAD:{WIDGETS}"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in names:
        source = subprocess.run(["git", "show", f"HEAD:{WIDGETS}/{name}"], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout
        (target / name).write_text(source)
    kernel.__path__.append(str(scratch))
    return importlib.import_module("jupyter_tfserve.kernel.widgets_head")


def page_html(widget: Any) -> str:
    """What the widget tree shows: its HTML children and its plotly figures (controls are left out)."""
    import ipywidgets
    import plotly.graph_objects as go

    if isinstance(widget, go.FigureWidget):
        return go.Figure(widget).to_html(full_html=False, include_plotlyjs=False, default_width="100%")
    if isinstance(widget, ipywidgets.HTML):
        return f"<div>{widget.value}</div>"
    children = getattr(widget, "children", ()) or ()
    return "".join(page_html(child) for child in children)


def traffic(client: Any, name: str, data: Any, seconds: float) -> None:
    """Single requests for ``seconds``: the split and the shadow see them, the windows fill."""
    deadline = time.monotonic() + seconds
    index = 0
    while time.monotonic() < deadline:
        client.predict(name, data[index % len(data): index % len(data) + 1])
        index += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/tfserve-widget-shots"))
    parser.add_argument("--before", action="store_true", help="draw with the widgets of git's HEAD")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of traffic")
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    scratch = Path(tempfile.mkdtemp(prefix="tfserve-shots-"))
    os.environ.update({"JUPYTER_RUNTIME_DIR": str(scratch / "runtime"), "JUPYTER_DATA_DIR": str(scratch / "data"),
                       "TFSERVE_PRIVATE_STATE_DIR": str(scratch / "state"), "TF_CPP_MIN_LOG_LEVEL": "2"})
    os.environ.pop("JPY_PARENT_PID", None)
    import keras
    import plotly.offline
    from playwright.sync_api import sync_playwright
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from jupyter_tfserve.kernel import private_engine
    from jupyter_tfserve.kernel.client import connect

    widgets = widgets_module(options.before, scratch)
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.25, random_state=0)

    def train(hidden: int, epochs: int, seed: int) -> Any:
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input((64,), name="pixels"), keras.layers.Dense(hidden, activation="relu"),
                                  keras.layers.Dense(10, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
        return model

    client = connect(private=True)
    try:
        a = client.export(train(16, 4, 1), "digits_ab")
        b = client.export(train(64, 10, 2), "digits_ab", label="canary")
        client.set_routing("digits_ab", split={"stable": 80, "canary": 20}, shadow="canary")
        traffic(client, "digits_ab", x_test, options.seconds)
        board = widgets.ABDashboard(client, "digits_ab", version_a=a.version, version_b=b.version, live=False)
        board.refresh()
        live = widgets.LatencyMonitor(client, "digits_ab", live=False)
        live.refresh()
        extra = {"labels": y_test, "batch_size": 10} if not options.before else {}
        comparison = widgets.compare_versions(client, "digits_ab", x_test, a.version, b.version, **extra)
        shots = {"dashboard": page_html(board.widget), "monitor": page_html(live.widget),
                 "comparison": page_html(comparison.widget)}
        if not options.before:
            for key, view in (("dashboard", board), ("monitor", live), ("comparison", comparison)):
                shots[f"{key}-saved"] = view._repr_mimebundle_()["text/html"]
    finally:
        private_engine.stop_private_engine()
    tag = "before" if options.before else "after"
    options.out.mkdir(parents=True, exist_ok=True)
    plotly_js = plotly.offline.get_plotlyjs()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        for key, body in shots.items():
            html_path = options.out / f"{key}-{tag}.html"
            html_path.write_text(f"<html><head><meta charset='utf-8'><script>{plotly_js}</script></head>"
                                 f"<body style='font-family:sans-serif;margin:12px'>{body}</body></html>")
            page.goto(html_path.as_uri())
            page.wait_for_timeout(800)
            shot = options.out / f"{key}-{tag}.png"
            page.screenshot(path=str(shot), full_page=True)
            log.info("%s (%d bytes of HTML)", shot, len(body))
        browser.close()


if __name__ == "__main__":
    sys.exit(main())
