"""``ABDashboard``: two versions of one model side by side, the split and shadow that compare them, and promotion.

The controls act on the server at once (Apply, the shadow toggle, Promote) and are set
back from the server's answer, so what the widget shows is what the engine does. The
figures only follow the engine's windows: the slider is what *will* be applied, the
routing line is what *is* applied.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from ..client import TFServeClient
from ..log_tail import DEFAULT_RECORDS
from ._common import (
    COLOR_A,
    COLOR_B,
    FIGURE_MARGIN,
    NO_VALUE,
    TEMPLATE,
    arm_version,
    available_versions,
    escape,
    figure_html,
    guarded,
    html_table,
    labels_of,
    ms,
    percent,
    version_options,
    versions_by_state,
)
from .live import STATS_HEADER, LatencyPlot, LiveView

log = logging.getLogger(__name__)



def default_pair(description: dict) -> tuple[int | None, int | None]:
    """``stable`` vs ``canary`` when both label AVAILABLE versions, else the two newest AVAILABLE versions."""
    available = available_versions(description)
    labels = description.get("labels", {})
    stable, canary = labels.get("stable"), labels.get("canary")
    if stable is not None and canary is not None and int(stable) != int(canary) \
            and int(stable) in available and int(canary) in available:
        return int(stable), int(canary)
    if len(available) >= 2:
        return available[-2], available[-1]
    if available:
        return available[-1], available[-1]
    return None, None


def split_percent(routing: dict | None, description: dict, version_b: int | None) -> int:
    """The share of the applied split that goes to B, in percent (0 without a split)."""
    split = (routing or {}).get("split")
    if not split or version_b is None:
        return 0
    total = sum(split.values())
    to_b = sum(weight for arm, weight in split.items() if arm_version(arm, description) == version_b)
    return round(100 * to_b / total) if total else 0


def histogram_labels(edges: list[float | None]) -> list[str]:
    """``[0, 1e-07)`` … ``≥ 100`` from the engine's bin edges (the last edge is None: infinity)."""
    labels = []
    for low, high in itertools.pairwise(edges):
        labels.append(f"≥ {low:g}" if high is None else f"[{low:g}, {high:g})")
    return labels


class ABDashboard(LiveView):
    """A/B comparison of two versions of ``name``: live latency, throughput, errors, split, shadow, promotion.

    ``version_a``/``version_b`` default to ``stable``/``canary`` when both labels exist,
    else to the two newest AVAILABLE versions. ``request_log`` adds the last ``log_records`` logged
    requests and answers (a glob or prefix, or ``True``: wherever the model logs now). ``live=False``
    starts no refresh task (drive it with ``refresh()``, ``await refresh_once()`` or ``update(summary)``).
    Raises :class:`TFServeError` when the model is not served.
    """

    describe_every_seconds = 5.0  # how often the live task re-reads versions and labels (an export may add one)

    def __init__(self, client: TFServeClient, name: str, interval: float = 0.5, window_seconds: int = 60, *,
                 version_a: int | None = None, version_b: int | None = None, history_seconds: int = 600,
                 live: bool = True, request_log: Any = None, log_records: int = DEFAULT_RECORDS) -> None:
        super().__init__(client, name, interval=interval, window_seconds=window_seconds)
        self.description = client.model(name)
        self._syncing = False
        self._last_describe: float | None = None  # loop time of the last description read
        self.arm_requests: dict[str, int] = {}
        self.shadow_stats: dict | None = None
        default_a, default_b = default_pair(self.description)
        options = version_options(self.description)
        self.version_a = widgets.Dropdown(description="A", options=options,
                                          value=version_a if version_a is not None else default_a,
                                          layout=widgets.Layout(width="200px"))
        self.version_b = widgets.Dropdown(description="B", options=options,
                                          value=version_b if version_b is not None else default_b,
                                          layout=widgets.Layout(width="200px"))
        self.versions_html = widgets.HTML()
        self.split = widgets.IntSlider(value=0, min=0, max=100, step=1, description="% to B", continuous_update=False,
                                       readout_format="d", style={"description_width": "60px"},
                                       layout=widgets.Layout(width="320px"))
        self.split_label = widgets.HTML()
        self.apply_button = widgets.Button(description="Apply split", button_style="primary", icon="check",
                                           tooltip="set_routing(split={A: 100 - p, B: p}); the shadow is kept")
        self.clear_button = widgets.Button(description="Clear routing", icon="times",
                                           tooltip="no split, no shadow: unversioned requests go to the latest version")
        self.shadow = widgets.ToggleButton(description="Shadow to B", icon="clone",
                                           tooltip="copy each routed request to B and compare its outputs")
        self.tolerance = widgets.BoundedFloatText(value=1e-3, min=0.0, max=1e9, step=1e-4, description="tolerance",
                                                  style={"description_width": "70px"},
                                                  layout=widgets.Layout(width="180px"))
        self.promote_button = widgets.Button(description="Promote B", button_style="warning", icon="arrow-up",
                                             tooltip="stable moves to B; split and shadow end")
        self.stats = widgets.HTML()
        self.routing_html = widgets.HTML()
        self.plot = LatencyPlot(history_seconds, height=400)
        self.figure = self.plot.figure
        self.histogram = go.FigureWidget(go.Figure(go.Bar(x=[], y=[], marker_color=COLOR_B, name="instances")))
        self.histogram.update_layout(template=TEMPLATE, height=260, margin=FIGURE_MARGIN, showlegend=False,
                                     title={"text": "shadow: |B - primary| per instance", "font": {"size": 13}},
                                     xaxis={"title": "absolute difference", "type": "category"},
                                     yaxis={"title": "instances", "rangemode": "tozero"})

        self.version_a.observe(self._pair_changed, names="value")
        self.version_b.observe(self._pair_changed, names="value")
        self.split.observe(self._split_moved, names="value")
        self.shadow.observe(self._shadow_toggled, names="value")
        self.apply_button.on_click(lambda _: self.apply_split())
        self.clear_button.on_click(lambda _: self.clear_routing())
        self.promote_button.on_click(lambda _: self.promote_b())

        self.widget = widgets.VBox([
            widgets.HTML(f"<b>A/B: {escape(name)}</b> <span style='color:#777'>(latency in ms; totals over the "
                         f"last {self.window_seconds} s)</span>"),
            widgets.HBox([self.version_a, self.version_b, self.versions_html]),
            widgets.HBox([self.split, self.split_label, self.apply_button, self.clear_button]),
            widgets.HBox([self.shadow, self.tolerance, self.promote_button]),
            self.status.widget,
            widgets.HBox([self.stats, self.routing_html], layout=widgets.Layout(justify_content="space-between")),
            self.figure,
            self.histogram,
            *self._add_logged(request_log, log_records),
        ], layout=widgets.Layout(width="100%"))
        self._watch_close()
        self._sync_from(self.description)
        self.update({"versions": {}, "routing": self.description.get("routing")})
        if live:
            self.start()

    # -- state from the server ----------------------------------------------------------------------

    def _pair(self) -> tuple[int, int]:
        a, b = self.version_a.value, self.version_b.value
        if a is None or b is None:
            raise ValueError(f"model {self.name} has no AVAILABLE version to compare")
        if a == b:
            raise ValueError("pick two different versions for A and B")
        return a, b

    def _sync_from(self, description: dict, *, pending: bool = True) -> None:
        """Options, labels and controls from a description (the server's truth), without triggering actions.

        ``pending=False`` (the periodic re-read) leaves the slider and tolerance alone: they
        hold what the user is about to apply, and a refresh must not undo a drag.
        """
        self.description = description
        if self.logged is not None:
            self.logged.set_description(description)
        self._syncing = True
        try:
            options = version_options(description)
            available = {value for _, value in options}
            old_a, old_b = self.version_a.value, self.version_b.value
            default_a, default_b = default_pair(description)
            if tuple(self.version_a.options) != tuple(options):  # re-sent only on change: an open list stays open
                self.version_a.options = options
                self.version_b.options = options
            self.version_a.value = old_a if old_a in available else default_a
            self.version_b.value = old_b if old_b in available else default_b
            routing = description.get("routing") or {}
            shadow = routing.get("shadow")
            target = arm_version(shadow["target"], description) if shadow else None
            self.shadow.value = shadow is not None and target == self.version_b.value
            if pending:
                self.split.value = split_percent(routing, description, self.version_b.value)
                if shadow:
                    self.tolerance.value = shadow["tolerance"]
        finally:
            self._syncing = False
        self._label_controls()
        states = versions_by_state(description)
        self.versions_html.value = " · ".join(
            f"v{v} <span style='color:{'#2e7d32' if s == 'AVAILABLE' else '#777'}'>{escape(s)}</span>"
            + "".join(f" <code>{escape(label)}</code>" for label in labels_of(description, v))
            for v, s in states.items())

    def _label_controls(self) -> None:
        a, b = self.version_a.value, self.version_b.value
        self.shadow.description = f"Shadow to v{b}" if b is not None else "Shadow to B"
        self.promote_button.description = f"Promote v{b}" if b is not None else "Promote B"
        self.split_label.value = (f"v{a} {100 - self.split.value} % · v{b} {self.split.value} %"
                                  if a is not None and b is not None else "")

    def refresh_description(self) -> dict:
        """Versions, labels and routing from the server (blocking)."""
        self._sync_from(self.client.model(self.name))
        return self.description

    async def _describe_async(self) -> dict:
        """Uses the client's ``model_async`` where it has one; else the blocking call in a worker thread."""
        model_async = getattr(self.client, "model_async", None)
        if model_async is not None:
            return await model_async(self.name)
        return await asyncio.to_thread(self.client.model, self.name)

    async def _tick(self) -> bool:
        now = asyncio.get_running_loop().time()
        if self._last_describe is None:
            self._last_describe = now  # the constructor has just read it
        elif now - self._last_describe >= self.describe_every_seconds:
            self._last_describe = now
            try:
                description = await self._describe_async()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._refresh_failed(error)
                return False
            if not self.closed:
                self._sync_from(description, pending=False)
        return await super()._tick()

    # -- actions ------------------------------------------------------------------------------------

    @guarded
    def apply_split(self) -> dict:
        """``set_routing(split={A: 100 - p, B: p})`` with the shadow the server has now."""
        a, b = self._pair()
        percent_b = int(self.split.value)
        shadow = (self.client.model(self.name).get("routing") or {}).get("shadow")
        description = self.client.set_routing(
            self.name, split={a: 100 - percent_b, b: percent_b},
            shadow=shadow["target"] if shadow else None, shadow_tolerance=shadow["tolerance"] if shadow else None)
        self._sync_from(description)
        self.status.ok(f"split applied: v{a} {100 - percent_b} %, v{b} {percent_b} %")
        return description

    @guarded
    def clear_routing(self) -> dict:
        description = self.client.clear_routing(self.name)
        self._sync_from(description)
        self.status.ok("routing cleared: unversioned requests go to the latest version")
        return description

    @guarded
    def set_shadow(self, enabled: bool) -> dict:
        """Shadow to B on or off; the split the server has now is kept. On failure the toggle shows the server's."""
        try:
            _, b = self._pair()
            split = (self.client.model(self.name).get("routing") or {}).get("split")
            description = self.client.set_routing(self.name, split=split, shadow=b if enabled else None,
                                                  shadow_tolerance=float(self.tolerance.value) if enabled else None)
        except Exception:
            self._resync(fallback_shadow=not enabled)
            raise
        self._sync_from(description)
        self.status.ok(f"shadow to v{b} on (tolerance {self.tolerance.value:g})" if enabled else "shadow off")
        return description

    def _resync(self, fallback_shadow: bool) -> None:
        """After a failed action: the controls from the server, or at least the toggle back where it was."""
        try:
            self._sync_from(self.client.model(self.name))
        except Exception as error:
            log.info("could not re-read %s after a failed action: %s", self.name, error)
            self._syncing = True
            try:
                self.shadow.value = fallback_shadow
            finally:
                self._syncing = False

    @guarded
    def promote_b(self) -> dict:
        """``stable`` moves to B; the engine ends any split and shadow in the same step."""
        _, b = self._pair()
        description = self.client.promote(self.name, b)
        self._sync_from(description)
        self.status.ok(f"v{b} is now stable; split and shadow removed")
        return description

    def _shadow_toggled(self, change: dict) -> None:
        if not self._syncing:
            self.set_shadow(bool(change["new"]))

    def _split_moved(self, change: dict) -> None:
        self._label_controls()

    def _pair_changed(self, change: dict) -> None:
        if self._syncing:
            return
        shadow = (self.description.get("routing") or {}).get("shadow")
        self._syncing = True
        try:  # the toggle says whether the shadow goes to *this* B
            self.shadow.value = bool(shadow) and arm_version(shadow["target"], self.description) == self.version_b.value
        finally:
            self._syncing = False
        self._label_controls()
        if self.last_summary is not None:
            self.update(self.last_summary)

    # -- rendering ----------------------------------------------------------------------------------

    def update(self, summary: dict) -> None:
        """Apply one ``windows`` summary: the plot, the side-by-side table, routing and shadow figures."""
        versions = summary.get("versions", {})
        routing = summary.get("routing") or {}
        self.plot.merge(versions)
        a, b = self.version_a.value, self.version_b.value
        keys = [str(v) for v in dict.fromkeys([a, b]) if v is not None]
        shadow_key = f"{b} shadow"
        if shadow_key in versions or shadow_key in self.plot.buffers:
            keys.append(shadow_key)
        self.plot.draw(keys, summary.get("now"), colors={str(a): COLOR_A, str(b): COLOR_B})
        self._render_stats(versions, keys)
        self._render_routing(routing)

    def _render_stats(self, versions: dict, keys: list[str]) -> None:
        header = ["", *(f"{'A' if key == str(self.version_a.value) else 'B'} · v{key}" for key in keys)]
        rows = []
        for index, title in enumerate(STATS_HEADER[1:], start=1):
            row = [title]
            for key in keys:
                stats = versions.get(key)
                if stats is None:
                    row.append("0" if index in (1, 2) else NO_VALUE)
                    continue
                row.append([str(stats["requests"]), str(stats["errors"]), percent(stats["error_rate"]),
                            f"{stats['requests_per_second']:.2f}", ms(stats["p50_ms"]), ms(stats["p95_ms"]),
                            ms(stats["p99_ms"])][index - 1])
            rows.append(row)
        self.stats.value = html_table(header, rows)

    def _render_routing(self, routing: dict) -> None:
        split = routing.get("split")
        self.arm_requests = dict(routing.get("arm_requests") or {})
        self.shadow_stats = routing.get("shadow")
        if split:
            total = sum(split.values()) or 1
            split_text = " · ".join(f"{arm if not arm.isdigit() else 'v' + arm} {100 * weight / total:.0f} %"
                                    for arm, weight in split.items())
        else:
            split_text = "none (unversioned requests go to the latest version)"
        per_arm = " · ".join(f"{arm}: {count}" for arm, count in self.arm_requests.items())
        rows = [["split", split_text], ["requests per arm", per_arm or NO_VALUE]]
        shadow = self.shadow_stats
        if shadow:
            mean = shadow["mean_abs_difference"]
            rows += [["shadow", f"to {shadow['target']} (tolerance {shadow['tolerance']:g})"],
                     ["compared / agreed", f"{shadow['compared']} / {shadow['agreed']}"],
                     ["agreement rate", percent(shadow["agreement_rate"])],
                     ["max / mean |difference|", f"{shadow['max_abs_difference']:.4g} / "
                      + (NO_VALUE if mean is None else f"{mean:.4g}")],
                     ["errors / skipped", f"{shadow['errors']} / {shadow['skipped']}"]]
            if shadow.get("last_error"):
                rows.append(["last shadow error", shadow["last_error"]])
            histogram = shadow.get("difference_histogram") or {}
            labels = histogram_labels(histogram.get("edges", []))
            with self.histogram.batch_update():
                self.histogram.data[0].x = labels
                self.histogram.data[0].y = list(histogram.get("counts", []))
        else:
            rows.append(["shadow", "off"])
            with self.histogram.batch_update():
                self.histogram.data[0].x, self.histogram.data[0].y = [], []
        self.routing_html.value = html_table(["routing", ""], rows)

    def static_html(self) -> str:
        """Title, versions, the side-by-side table, routing, the latency figure and (with a shadow) its histogram."""
        parts = [self.widget.children[0].value, "<div>" + self.versions_html.value + "</div>",
                 "<div style='display:flex;gap:24px;flex-wrap:wrap'>" + self.stats.value + self.routing_html.value
                 + "</div>", figure_html(self.figure)]
        if self.shadow_stats:
            parts.append(figure_html(self.histogram))
        return "".join(parts) + self._logged_html() + super().static_html()

    @property
    def agreement_rate(self) -> float | None:
        """The shadow's agreement rate in the last summary applied (None without shadow or comparisons)."""
        return self.shadow_stats.get("agreement_rate") if self.shadow_stats else None
