"""``compare_versions``: one data set through two versions, outputs and latencies side by side.

With true labels (``labels=``) it answers the question an A/B comparison exists for:
which version is more accurate, where their mistakes differ (the confusion-matrix
difference) and on which instances they disagree. Latency is plotted only from enough
requests to mean something (``MIN_LATENCY_REQUESTS`` per version).

Shadow traffic compares versions on whatever live traffic arrives; this compares them
on a data set the notebook chooses (a test split), with both versions asked for the
same batch one right after the other, so a slow moment of the machine hits both.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..client import TFServeClient
from ._common import (
    COLOR_A,
    COLOR_B,
    FIGURE_MARGIN,
    LEGEND_RIGHT,
    TEMPLATE,
    close_tree,
    escape,
    figure_html,
    html_table,
    ms,
    percent,
    with_static_html,
)

log = logging.getLogger(__name__)

MAX_SCATTER_POINTS = 2000  # a regression output's scatter: one point per instance, at most this many
MIN_LATENCY_REQUESTS = 30  # fewer requests than this per version: percentiles only, no histogram
TOP_DISAGREEMENTS = 10


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


def _classes(outputs: np.ndarray) -> np.ndarray | None:
    """Predicted classes: the argmax of a score vector, or an integer output of one value per instance."""
    if outputs.dtype.kind == "f" and outputs.ndim == 2 and outputs.shape[1] > 1:
        return np.argmax(outputs, axis=1)
    if outputs.dtype.kind in "iu" and outputs.size == len(outputs):
        return outputs.reshape(-1)
    return None


def _confidence(outputs: np.ndarray, classes: np.ndarray) -> np.ndarray | None:
    if outputs.dtype.kind == "f" and outputs.ndim == 2 and outputs.shape[1] > 1:
        return outputs[np.arange(len(classes)), classes]
    return None


def confusion(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """``matrix[true, predicted]`` counts."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


class ComparisonResult:
    """Outputs and per-request latencies of two versions on one data set, with their differences.

    ``differences`` holds, per instance, the largest absolute difference over every
    numeric output element; ``argmax_agreement`` is the share of instances whose score
    vectors (float outputs with a last dimension > 1) have the same argmax, or None when
    the model has no such output. With ``labels`` (one true class per instance) and a
    classifying ``output``: ``accuracy_a``/``accuracy_b``, ``confusion_a``/``confusion_b``
    (``[true, predicted]``) and ``disagreements`` (instance indices, largest |Δ| first).
    ``figure`` and ``widget`` are built on first use.
    """

    def __init__(self, name: str, version_a: int, version_b: int, outputs_a: Any, outputs_b: Any,
                 latencies_a_ms: np.ndarray, latencies_b_ms: np.ndarray, output: str | None = None,
                 labels: Any = None) -> None:
        self.name, self.version_a, self.version_b = name, version_a, version_b
        self.outputs_a, self.outputs_b = outputs_a, outputs_b
        self.latencies_a_ms, self.latencies_b_ms = np.asarray(latencies_a_ms), np.asarray(latencies_b_ms)
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
        plotted_a, plotted_b = np.asarray(a[self.output]), np.asarray(b[self.output])
        self.classes_a, self.classes_b = _classes(plotted_a), _classes(plotted_b)
        self.confidence_a = _confidence(plotted_a, self.classes_a) if self.classes_a is not None else None
        self.confidence_b = _confidence(plotted_b, self.classes_b) if self.classes_b is not None else None
        self.labels: np.ndarray | None = None
        self.accuracy_a = self.accuracy_b = None
        self.confusion_a = self.confusion_b = None
        self.disagreements = np.zeros(0, dtype=np.int64)
        if self.classes_a is not None:
            disagree = np.flatnonzero(self.classes_a != self.classes_b)
            self.disagreements = disagree[np.argsort(-per_instance[disagree], kind="stable")]
        if labels is not None:
            self._score(np.asarray(labels).reshape(-1), plotted_a)
        self._figure: go.FigureWidget | None = None
        self._widget: widgets.Widget | None = None

    def _score(self, labels: np.ndarray, plotted: np.ndarray) -> None:
        if len(labels) != self.count:
            raise ValueError(f"labels has {len(labels)} entries for {self.count} instances")
        if self.classes_a is None or self.classes_b is None:
            raise ValueError(f"output {self.output!r} (shape {list(plotted.shape)}) is not a classifier's: labels need "
                             "score vectors or one integer class per instance")
        if labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
            raise ValueError("labels must be non-negative integer classes")
        classes = int(max(labels.max(initial=0), self.classes_a.max(initial=0), self.classes_b.max(initial=0))) + 1
        if plotted.ndim == 2 and plotted.shape[1] > 1:
            classes = max(classes, plotted.shape[1])
        self.labels = labels.astype(np.int64)
        self.accuracy_a = float(np.mean(self.classes_a == labels))
        self.accuracy_b = float(np.mean(self.classes_b == labels))
        self.confusion_a = confusion(self.labels, self.classes_a, classes)
        self.confusion_b = confusion(self.labels, self.classes_b, classes)

    def summary(self) -> dict[str, Any]:
        def latency(values: np.ndarray) -> dict[str, float | int | None]:
            if not values.size:
                return {"requests": 0, "p50_ms": None, "p95_ms": None}
            p50, p95 = np.percentile(values, [50, 95])
            return {"requests": int(values.size), "p50_ms": float(p50), "p95_ms": float(p95)}

        return {"name": self.name, "version_a": self.version_a, "version_b": self.version_b, "instances": self.count,
                "max_abs_difference": self.max_abs_difference, "mean_abs_difference": self.mean_abs_difference,
                "argmax_agreement": self.argmax_agreement, "accuracy_a": self.accuracy_a,
                "accuracy_b": self.accuracy_b, "disagreements": int(self.disagreements.size),
                "latency_a": latency(self.latencies_a_ms), "latency_b": latency(self.latencies_b_ms)}

    def __repr__(self) -> str:
        agreement = "" if self.argmax_agreement is None else f", argmax agreement {percent(self.argmax_agreement)}"
        accuracy = "" if self.accuracy_a is None else \
            f", accuracy {percent(self.accuracy_a)} vs {percent(self.accuracy_b)}"
        return (f"<ComparisonResult {self.name} v{self.version_a} vs v{self.version_b}: {self.count} instances, "
                f"max |Δ| {self.max_abs_difference:.4g}, mean |Δ| {self.mean_abs_difference:.4g}{agreement}{accuracy}>")

    @property
    def latency_plotted(self) -> bool:
        """A latency histogram only from at least ``MIN_LATENCY_REQUESTS`` requests per version."""
        return min(self.latencies_a_ms.size, self.latencies_b_ms.size) >= MIN_LATENCY_REQUESTS

    @property
    def figure(self) -> go.FigureWidget:
        """The confusion-matrix difference (with labels), A's classes against B's (without), or B's outputs
        against A's (a regression); beside it the latency distributions when there are enough requests."""
        if self._figure is None:
            self._figure = self._build_figure()
        return self._figure

    def _left_panel(self) -> tuple[str, list[Any], dict, dict]:
        """Title, traces, x axis and y axis of the outputs panel."""
        a, b = f"v{self.version_a}", f"v{self.version_b}"
        if self.confusion_a is not None:
            difference = self.confusion_b - self.confusion_a
            limit = max(1, int(np.abs(difference).max()))
            heatmap = go.Heatmap(z=difference, text=difference, texttemplate="%{text}", colorscale="RdBu", zmin=-limit,
                                 zmax=limit, showscale=False, name="B - A",
                                 hovertemplate="true %{y}, predicted %{x}: %{z:+d}<extra></extra>")
            axes = {"dtick": 1, "autorange": "reversed"}
            return (f"confusion matrix {b} minus {a} (blue: more with {b})", [heatmap],
                    {"title_text": "predicted", "dtick": 1}, {"title_text": "true", **axes})
        if self.classes_a is not None:
            classes = int(max(self.classes_a.max(initial=0), self.classes_b.max(initial=0))) + 1
            counts = confusion(self.classes_a, self.classes_b, classes)
            heatmap = go.Heatmap(z=counts, text=counts, texttemplate="%{text}", colorscale="Blues", showscale=False,
                                 name="instances", hovertemplate=f"{a} %{{y}}, {b} %{{x}}: %{{z}}<extra></extra>")
            return (f"predicted class: {b} against {a} (no labels given)", [heatmap],
                    {"title_text": b, "dtick": 1}, {"title_text": a, "dtick": 1, "autorange": "reversed"})
        first = np.asarray(_as_dict(self.outputs_a)[self.output], dtype=np.float64).reshape(self.count, -1)[:, 0]
        second = np.asarray(_as_dict(self.outputs_b)[self.output], dtype=np.float64).reshape(self.count, -1)[:, 0]
        if first.size > MAX_SCATTER_POINTS:
            picked = np.linspace(0, first.size - 1, MAX_SCATTER_POINTS).astype(int)
            first, second = first[picked], second[picked]
        traces: list[Any] = [go.Scatter(x=first, y=second, mode="markers", name=f"{self.output} per instance",
                                        marker={"size": 5, "opacity": 0.6, "color": COLOR_B})]
        if first.size:
            low, high = float(min(first.min(), second.min())), float(max(first.max(), second.max()))
            traces.append(go.Scatter(x=[low, high], y=[low, high], mode="lines", name="y = x",
                                     line={"color": "#999", "dash": "dash"}))
        return f"{escape(self.output)}: {b} against {a}", traces, {"title_text": a}, {"title_text": b}

    def _build_figure(self) -> go.FigureWidget:
        title, traces, xaxis, yaxis = self._left_panel()
        columns = 2 if self.latency_plotted else 1
        both = np.concatenate([self.latencies_a_ms, self.latencies_b_ms])
        # One set of bins for both versions, up to the 99th percentile: a single slow first request must not
        # stretch the axis (and widen one version's bins) until the rest sits in two bars.
        top = float(np.percentile(both, 99)) if both.size else 1.0
        low = float(both.min()) if both.size else 0.0
        hidden = int((both > top).sum())
        latency_title = "latency per request (ms)" + (f", {hidden} over {top:.1f} ms not shown" if hidden else "")
        titles = (title, latency_title)[:columns]
        figure = make_subplots(rows=1, cols=columns, horizontal_spacing=0.15, subplot_titles=titles)
        for trace in traces:
            figure.add_trace(trace, row=1, col=1)
        figure.update_xaxes(row=1, col=1, **xaxis)
        figure.update_yaxes(row=1, col=1, **yaxis)
        if columns == 2:
            for version, values, color in ((self.version_a, self.latencies_a_ms, COLOR_A),
                                           (self.version_b, self.latencies_b_ms, COLOR_B)):
                figure.add_histogram(x=values, name=f"v{version} latency", marker_color=color, opacity=0.6,
                                     xbins={"start": low, "end": top, "size": max(top - low, 1e-3) / 25},
                                     row=1, col=2)
            figure.update_xaxes(title_text="ms", range=[low, top], row=1, col=2)
            figure.update_yaxes(title_text="requests", row=1, col=2)
        figure.update_layout(template=TEMPLATE, height=420, margin=FIGURE_MARGIN, barmode="overlay",
                             legend=LEGEND_RIGHT)
        return go.FigureWidget(figure)

    def _rows(self) -> list[list[str]]:
        summary = self.summary()
        rows = [["instances", str(self.count)]]
        if self.accuracy_a is not None:
            better = "v" + str(self.version_b if self.accuracy_b > self.accuracy_a else self.version_a)
            verdict = "equal" if self.accuracy_a == self.accuracy_b else f"{better} by " \
                f"{100 * abs(self.accuracy_b - self.accuracy_a):.1f} points"
            rows += [[f"v{self.version_a} accuracy", percent(self.accuracy_a)],
                     [f"v{self.version_b} accuracy", percent(self.accuracy_b)], ["more accurate", verdict]]
        rows += [["argmax agreement", percent(self.argmax_agreement)],
                 ["max / mean |B - A|", f"{self.max_abs_difference:.4g} / {self.mean_abs_difference:.4g}"]]
        for version, key in ((self.version_a, "latency_a"), (self.version_b, "latency_b")):
            latency = summary[key]
            note = "" if latency["requests"] >= MIN_LATENCY_REQUESTS else \
                f" (only {latency['requests']} requests: too few for a histogram)"
            rows.append([f"v{version} latency p50 / p95", f"{ms(latency['p50_ms'])} / {ms(latency['p95_ms'])}{note}"])
        return rows

    def disagreement_table(self, k: int = TOP_DISAGREEMENTS) -> str:
        """The ``k`` instances where the versions' classes differ, largest |Δ| first, as an HTML table."""
        if self.classes_a is None:
            return ""
        a, b = f"v{self.version_a}", f"v{self.version_b}"
        header = ["instance", *(["true"] if self.labels is not None else []), a, b, "|Δ|"]
        rows = []
        for index in self.disagreements[:k]:
            row = [str(index)]
            if self.labels is not None:
                row.append(str(self.labels[index]))
            for classes, scores in ((self.classes_a, self.confidence_a), (self.classes_b, self.confidence_b)):
                mark = ""
                if self.labels is not None:
                    mark = " ✓" if classes[index] == self.labels[index] else " ✗"
                row.append(f"{classes[index]}" + (f" ({scores[index]:.2f})" if scores is not None else "") + mark)
            row.append(f"{self.differences[index]:.3g}")
            rows.append(row)
        caption = (f"<div style='margin-top:6px'><b>{self.disagreements.size} instances with different classes</b>"
                   + (f" (the {min(k, self.disagreements.size)} furthest apart)" if self.disagreements.size else "")
                   + "</div>")
        return caption + (html_table(header, rows) if rows else "")

    def _title(self) -> str:
        return f"<b>{escape(self.name)}: v{self.version_a} (A) vs v{self.version_b} (B)</b>"

    @property
    def widget(self) -> widgets.Widget:
        if self._widget is None:
            tables = widgets.HTML("<div style='display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start'><div>"
                                  + html_table(["", ""], self._rows()) + "</div><div>" + self.disagreement_table()
                                  + "</div></div>")
            self._widget = widgets.VBox([widgets.HTML(self._title()), tables, self.figure],
                                        layout=widgets.Layout(width="100%"))
        return self._widget

    def static_html(self) -> str:
        """The tables and the figure as HTML: what a saved notebook shows without widget state."""
        return self._title() + self.widget.children[1].value + figure_html(self.figure)

    def close(self) -> None:
        if self._widget is not None:
            close_tree(self._widget)
        elif self._figure is not None:
            self._figure.close()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict | None:
        if self.widget._repr_mimebundle_ is None:
            return {"text/plain": repr(self)}
        return with_static_html(self.widget._repr_mimebundle_(**kwargs), self.static_html())


@dataclass(frozen=True)
class RequestLog:
    """A request log as a comparison's data set: its files (or a glob), the model whose requests count."""

    files: Any
    model: str | None = None
    limit: int | None = None


def request_log(files: Any, model: str | None = None, limit: int | None = None) -> RequestLog:
    """``compare_versions(client, "m", request_log("PREFIX*"), 1, 2)``: two versions on logged traffic."""
    return RequestLog(files, model, limit)


def compare_versions(client: TFServeClient, name: str, data: Any, version_a: int, version_b: int,
                     batch_size: int = 64, *, signature_name: str | None = None,
                     output: str | None = None, labels: Any = None) -> ComparisonResult:
    """Predict ``data`` (an array, a list of instances, a dict of input arrays, or ``request_log("PREFIX*")``)
    with both versions.

    ``data=request_log(...)`` takes the requests a model's request log recorded (what it was really
    asked, see :func:`~jupyter_tfserve.kernel.replay.logged_inputs`) as the data set.

    Each batch goes to A then B, so both see the same conditions; one latency is
    recorded per request (batch). ``output`` picks the output plotted when there are
    several; ``labels`` (one true class per instance) adds accuracy, the confusion-matrix
    difference and the disagreements' true classes. Raises :class:`TFServeError` when a version does not answer.
    """
    if isinstance(data, RequestLog):
        from ..replay import logged_inputs

        data = logged_inputs(data.files, data.model or name, data.limit)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if int(version_a) == int(version_b):
        raise ValueError(f"compare two different versions, got v{version_a} twice")
    count = _length(data)
    if not count:
        raise ValueError("the data set is empty")
    if labels is not None and len(labels) != count:  # checked before any request is sent
        raise ValueError(f"labels has {len(labels)} entries for {count} instances")
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
                            np.asarray(latencies[version_b]), output=output, labels=labels)
