"""``compare_versions``: one data set through two versions, outputs and latencies side by side.

Shadow traffic compares versions on whatever live traffic arrives; this compares them
on a data set the notebook chooses (a test split), with both versions asked for the
same batch one right after the other, so a slow moment of the machine hits both.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..client import TFServeClient
from ._common import COLOR_A, COLOR_B, FIGURE_MARGIN, TEMPLATE, close_tree, escape, html_table, ms, percent

log = logging.getLogger(__name__)

MAX_SCATTER_POINTS = 5000  # a browser draws this many markers without stalling the notebook


def _length(data: Any) -> int:
    if isinstance(data, Mapping):
        lengths = {len(value) for value in data.values()}
        if len(lengths) != 1:
            raise ValueError(f"the inputs of a dict data set must have one length, got {sorted(lengths)}")
        return lengths.pop()
    return len(data)


def _slice(data: Any, start: int, stop: int) -> Any:
    if isinstance(data, Mapping):
        return {key: value[start:stop] for key, value in data.items()}
    return data[start:stop]


def _concatenate(parts: list[Any]) -> Any:
    if isinstance(parts[0], dict):
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    return np.concatenate(parts)


def _as_dict(outputs: Any) -> dict[str, np.ndarray]:
    return dict(outputs) if isinstance(outputs, dict) else {"output": np.asarray(outputs)}


class ComparisonResult:
    """Outputs and per-request latencies of two versions on one data set, with their differences.

    ``differences`` holds, per instance, the largest absolute difference over every
    numeric output element; ``argmax_agreement`` is the share of instances whose score
    vectors (float outputs with a last dimension > 1) have the same argmax, or None when
    the model has no such output. ``figure`` and ``widget`` are built on first use.
    """

    def __init__(self, name: str, version_a: int, version_b: int, outputs_a: Any, outputs_b: Any,
                 latencies_a_ms: np.ndarray, latencies_b_ms: np.ndarray, output: str | None = None) -> None:
        self.name, self.version_a, self.version_b = name, version_a, version_b
        self.outputs_a, self.outputs_b = outputs_a, outputs_b
        self.latencies_a_ms, self.latencies_b_ms = latencies_a_ms, latencies_b_ms
        a, b = _as_dict(outputs_a), _as_dict(outputs_b)
        if set(a) != set(b):
            raise ValueError(f"the versions have different outputs: {sorted(a)} vs {sorted(b)}")
        self.output = output if output is not None else sorted(a)[0]
        if self.output not in a:
            raise ValueError(f"no output {self.output!r}; the outputs are {sorted(a)}")
        count = len(next(iter(a.values())))
        per_instance = np.zeros(count)
        total, elements = 0.0, 0
        agreements = []
        for key in sorted(a):
            first, second = np.asarray(a[key]), np.asarray(b[key])
            if first.shape != second.shape:
                raise ValueError(f"output {key!r} has shape {first.shape} in v{version_a} and {second.shape} "
                                 f"in v{version_b}")
            if first.dtype.kind not in "fiub" or second.dtype.kind not in "fiub":
                continue  # strings: compared by the shadow's equality, not by a distance
            difference = np.abs(second.astype(np.float64) - first.astype(np.float64)).reshape(count, -1)
            if difference.shape[1]:
                per_instance = np.maximum(per_instance, difference.max(axis=1))
            total += float(difference.sum())
            elements += difference.size
            if first.ndim >= 2 and first.shape[-1] > 1 and first.dtype.kind == "f":
                same = np.argmax(first, axis=-1) == np.argmax(second, axis=-1)
                agreements.append(same.reshape(count, -1).all(axis=1))
        self.count = count
        self.differences = per_instance
        self.max_abs_difference = float(per_instance.max()) if count else 0.0
        self.mean_abs_difference = total / elements if elements else 0.0
        self.argmax_agreement = float(np.logical_and.reduce(agreements).mean()) if agreements and count else None
        self._figure: go.FigureWidget | None = None
        self._widget: widgets.Widget | None = None

    def summary(self) -> dict[str, Any]:
        def latency(values: np.ndarray) -> dict[str, float | None]:
            if not values.size:
                return {"p50_ms": None, "p95_ms": None}
            p50, p95 = np.percentile(values, [50, 95])
            return {"p50_ms": float(p50), "p95_ms": float(p95)}

        return {"name": self.name, "version_a": self.version_a, "version_b": self.version_b, "instances": self.count,
                "max_abs_difference": self.max_abs_difference, "mean_abs_difference": self.mean_abs_difference,
                "argmax_agreement": self.argmax_agreement,
                "latency_a": latency(self.latencies_a_ms), "latency_b": latency(self.latencies_b_ms)}

    def __repr__(self) -> str:
        agreement = "" if self.argmax_agreement is None else f", argmax agreement {percent(self.argmax_agreement)}"
        return (f"<ComparisonResult {self.name} v{self.version_a} vs v{self.version_b}: {self.count} instances, "
                f"max |Δ| {self.max_abs_difference:.4g}, mean |Δ| {self.mean_abs_difference:.4g}{agreement}>")

    @property
    def figure(self) -> go.FigureWidget:
        """B's outputs against A's (with the y = x line) and both latency distributions."""
        if self._figure is None:
            self._figure = self._build_figure()
        return self._figure

    def _build_figure(self) -> go.FigureWidget:
        a = np.asarray(_as_dict(self.outputs_a)[self.output], dtype=np.float64).ravel()
        b = np.asarray(_as_dict(self.outputs_b)[self.output], dtype=np.float64).ravel()
        if a.size > MAX_SCATTER_POINTS:
            picked = np.linspace(0, a.size - 1, MAX_SCATTER_POINTS).astype(int)
            a, b = a[picked], b[picked]
        figure = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=(
            f"{escape(self.output)}: v{self.version_b} vs v{self.version_a}", "latency per request (ms)"))
        figure.add_scatter(x=a, y=b, mode="markers", name="instances", marker={"size": 5, "opacity": 0.6,
                                                                               "color": COLOR_B}, row=1, col=1)
        if a.size:
            low, high = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
            figure.add_scatter(x=[low, high], y=[low, high], mode="lines", name="y = x",
                               line={"color": "#999", "dash": "dash"}, row=1, col=1)
        figure.add_histogram(x=self.latencies_a_ms, name=f"v{self.version_a}", marker_color=COLOR_A, opacity=0.6,
                             nbinsx=30, row=1, col=2)
        figure.add_histogram(x=self.latencies_b_ms, name=f"v{self.version_b}", marker_color=COLOR_B, opacity=0.6,
                             nbinsx=30, row=1, col=2)
        figure.update_layout(template=TEMPLATE, height=380, margin=FIGURE_MARGIN, barmode="overlay",
                             legend={"orientation": "h", "yanchor": "bottom", "y": -0.3, "x": 0})
        figure.update_xaxes(title_text=f"v{self.version_a}", row=1, col=1)
        figure.update_yaxes(title_text=f"v{self.version_b}", row=1, col=1)
        figure.update_xaxes(title_text="ms", row=1, col=2)
        figure.update_yaxes(title_text="requests", row=1, col=2)
        return go.FigureWidget(figure)

    @property
    def widget(self) -> widgets.Widget:
        if self._widget is None:
            summary = self.summary()
            rows = [["instances", str(self.count)],
                    ["max |B - A|", f"{self.max_abs_difference:.6g}"],
                    ["mean |B - A|", f"{self.mean_abs_difference:.6g}"],
                    ["argmax agreement", percent(self.argmax_agreement)],
                    [f"v{self.version_a} latency p50 / p95", f"{ms(summary['latency_a']['p50_ms'])} / "
                     f"{ms(summary['latency_a']['p95_ms'])}"],
                    [f"v{self.version_b} latency p50 / p95", f"{ms(summary['latency_b']['p50_ms'])} / "
                     f"{ms(summary['latency_b']['p95_ms'])}"]]
            title = f"<b>{escape(self.name)}: v{self.version_a} (A) vs v{self.version_b} (B)</b>"
            self._widget = widgets.VBox([widgets.HTML(title), widgets.HTML(html_table(["", ""], rows)), self.figure],
                                        layout=widgets.Layout(width="100%"))
        return self._widget

    def close(self) -> None:
        if self._widget is not None:
            close_tree(self._widget)
        elif self._figure is not None:
            self._figure.close()

    def _ipython_display_(self, **kwargs: Any) -> None:
        from IPython.display import display

        display(self.widget, **kwargs)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict | None:
        if self.widget._repr_mimebundle_ is None:
            return {"text/plain": repr(self)}
        return self.widget._repr_mimebundle_(**kwargs)


def compare_versions(client: TFServeClient, name: str, data: Any, version_a: int, version_b: int,
                     batch_size: int = 64, *, signature_name: str | None = None,
                     output: str | None = None) -> ComparisonResult:
    """Predict ``data`` (an array, a list of instances, or a dict of input arrays) with both versions.

    Each batch goes to A then B, so both see the same conditions; one latency is
    recorded per request (batch). ``output`` picks the output plotted when there are
    several. Raises :class:`TFServeError` when a version does not answer.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if int(version_a) == int(version_b):
        raise ValueError(f"compare two different versions, got v{version_a} twice")
    count = _length(data)
    if not count:
        raise ValueError("the data set is empty")
    outputs: dict[int, list[Any]] = {version_a: [], version_b: []}
    latencies: dict[int, list[float]] = {version_a: [], version_b: []}
    for start in range(0, count, batch_size):
        batch = _slice(data, start, min(start + batch_size, count))
        for version in (version_a, version_b):
            answer = client.predict_detailed(name, batch, version=version, signature_name=signature_name)
            outputs[version].append(answer.outputs)
            latencies[version].append(answer.latency_ms)
    log.info("compared %s v%s and v%s on %d instances", name, version_a, version_b, count)
    return ComparisonResult(name, version_a, version_b, _concatenate(outputs[version_a]),
                            _concatenate(outputs[version_b]), np.asarray(latencies[version_a]),
                            np.asarray(latencies[version_b]), output=output)
