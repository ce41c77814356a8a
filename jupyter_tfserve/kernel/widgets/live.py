"""Live latency and throughput: the refresh task, the ring buffers, the plot, and ``LatencyMonitor``.

The engine keeps per-second buckets for the last few minutes and answers a window of
them (``GET models/{name}/windows``). Each refresh merges the window it gets into one
bounded deque per version, so the plot shows a longer history than one window without
the widget's memory growing while it is left open for a day.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..client import TFServeClient
from ..log_tail import DEFAULT_RECORDS
from ._common import (
    COLORS,
    FIGURE_MARGIN,
    LEGEND_RIGHT,
    NO_VALUE,
    TEMPLATE,
    View,
    error_text,
    escape,
    figure_html,
    html_table,
    ms,
    percent,
)
from .logged import LoggedRequests

log = logging.getLogger(__name__)

METRICS = (("p50_ms", "p50", "solid"), ("p95_ms", "p95", "dash"), ("p99_ms", "p99", "dot"))
# Lines drawn per version: the median and the tail. p95 (in the tables and in p50's hover) would make a third line
# per version, and with A, B and B's shadow nine lines crowded one chart.
PLOTTED = (METRICS[0], METRICS[2])
MAX_SERIES = 32  # version keys with a buffer; a model re-exported all day must not grow the widget without end
ERROR_BACKOFF_SECONDS = 2.0
# The event loop holds tasks only weakly: a dashboard displayed as a cell's value and never assigned must keep
# refreshing, so running tasks are held here until they finish.
_RUNNING: set[asyncio.Task] = set()


def version_sort_key(key: str) -> tuple[int, int, str]:
    """``"1"`` < ``"2"`` < ``"2 shadow"`` < ``"none"``."""
    number = key.split(" ", 1)[0]
    return (int(number), len(key), key) if number.isdigit() else (1 << 30, 0, key)


class SeriesBuffer:
    """Per-second points of one version, merged from overlapping windows; at most ``maxlen`` seconds."""

    def __init__(self, maxlen: int) -> None:
        self.points: deque[dict] = deque(maxlen=maxlen)

    def merge(self, series: list[dict]) -> None:
        """The window replaces what the buffer holds from its first second on (those buckets may have grown)."""
        if not series:
            return
        first = series[0]["time"]
        while self.points and self.points[-1]["time"] >= first:
            self.points.pop()
        self.points.extend(series)

    def arrays(self, now: int | None = None) -> dict[str, list]:
        """x (datetimes), p50/p95/p99 (None across idle gaps, so lines break) and req/s (0 while idle)."""
        columns: dict[str, list] = {"x": [], "requests": [], "errors": [], **{m: [] for m, _, _ in METRICS}}

        def idle(second: int) -> None:
            columns["x"].append(datetime.fromtimestamp(second))
            columns["requests"].append(0)
            columns["errors"].append(0)
            for metric, _, _ in METRICS:
                columns[metric].append(None)

        previous = None
        for point in self.points:
            second = point["time"]
            if previous is not None and second - previous > 1:
                idle(previous + 1)
                if second - previous > 2:
                    idle(second - 1)
            columns["x"].append(datetime.fromtimestamp(second))
            columns["requests"].append(point["requests"])
            columns["errors"].append(point["errors"])
            for metric, _, _ in METRICS:
                columns[metric].append(point.get(metric))
            previous = second
        if previous is not None and now is not None and now - previous > 1:
            idle(previous + 1)
            if now - previous > 2:
                idle(now)
        return columns


class LatencyPlot:
    """A FigureWidget: p50 and p99 (ms) on top, throughput (req/s) below, one colour per version.

    The legend sits to the right, one group per version (p50, p99, req/s), so it covers
    no axis labels and every line has an entry.
    """

    def __init__(self, history_seconds: int = 600, height: int = 420, title: str = "") -> None:
        self.history_seconds = history_seconds
        self.buffers: dict[str, SeriesBuffer] = {}
        self.traces: dict[tuple[str, str], int] = {}  # (version key, "p50" | ... | "req/s") -> index in fig.data
        self._keys: list[str] = []
        self._colors: dict[str, str] = {}
        figure = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.1,
                               subplot_titles=("latency (ms)", "throughput (req/s)"))
        self.figure = go.FigureWidget(figure)
        self.figure.update_layout(template=TEMPLATE, height=height, margin=FIGURE_MARGIN, uirevision="live",
                                  title={"text": title, "font": {"size": 14}} if title else None,
                                  legend=LEGEND_RIGHT, hovermode="x unified")
        self.figure.update_yaxes(title_text="ms", rangemode="tozero", row=1, col=1)
        self.figure.update_yaxes(title_text="req/s", rangemode="tozero", row=2, col=1)

    def merge(self, versions: dict[str, dict]) -> None:
        for key, stats in versions.items():
            buffer = self.buffers.get(key)
            if buffer is None:
                if len(self.buffers) >= MAX_SERIES:
                    oldest = min(self.buffers, key=lambda k: self.buffers[k].points[-1]["time"]
                                 if self.buffers[k].points else 0)
                    del self.buffers[oldest]
                buffer = self.buffers[key] = SeriesBuffer(self.history_seconds)
            buffer.merge(stats.get("series", []))

    def color(self, key: str, colors: dict[str, str] | None = None) -> str:
        base = key.split(" ", 1)[0]
        if colors and base in colors:
            return colors[base]
        if base not in self._colors:
            self._colors[base] = COLORS[len(self._colors) % len(COLORS)]
        return self._colors[base]

    def _rebuild(self, keys: list[str], colors: dict[str, str] | None) -> None:
        """Traces are added outside ``batch_update`` (plotly does not batch new traces), only when versions change."""
        self.figure.data = ()
        self.traces = {}
        for key in keys:
            color = self.color(key, colors)
            shadow = key.endswith("shadow")
            opacity = 0.5 if shadow else 1.0
            for _, short, dash in PLOTTED:
                hover = "%{y:.2f} ms (p95 %{customdata:.2f} ms)" if short == "p50" else "%{y:.2f} ms"
                self.figure.add_scatter(x=[], y=[], name=f"v{key} {short}", legendgroup=key, mode="lines",
                                        line={"color": color, "dash": dash, "width": 2 if short == "p50" else 1.3},
                                        opacity=opacity, hovertemplate=hover, row=1, col=1)
                self.traces[(key, short)] = len(self.figure.data) - 1
            self.figure.add_scatter(x=[], y=[], name=f"v{key} req/s", legendgroup=key, mode="lines",
                                    line={"color": color, "width": 1.5, "shape": "hv"}, opacity=opacity,
                                    hovertemplate="%{y} req/s", row=2, col=1)
            self.traces[(key, "req/s")] = len(self.figure.data) - 1
        self._keys = list(keys)

    def draw(self, keys: Iterable[str], now: int | None = None, colors: dict[str, str] | None = None) -> None:
        """Show the buffers of ``keys`` (a version key with no buffer yet gets empty traces)."""
        keys = list(keys)
        if keys != self._keys:
            self._rebuild(keys, colors)
        with self.figure.batch_update():
            for key in keys:
                buffer = self.buffers.get(key)
                columns = buffer.arrays(now) if buffer is not None else {"x": [], "requests": [],
                                                                         **{m: [] for m, _, _ in METRICS}}
                for metric, short, _ in PLOTTED:
                    trace = self.figure.data[self.traces[(key, short)]]
                    trace.x, trace.y = columns["x"], columns[metric]
                    if short == "p50":
                        trace.customdata = columns["p95_ms"]
                trace = self.figure.data[self.traces[(key, "req/s")]]
                trace.x, trace.y = columns["x"], columns["requests"]

    def trace(self, key: str, metric: str) -> Any:
        """The trace of one version key (``"1"``, ``"2 shadow"``) and metric (``"p50"``, ``"p99"``, ``"req/s"``)."""
        return self.figure.data[self.traces[(key, metric)]]


def stats_rows(versions: dict[str, dict], keys: Iterable[str]) -> list[list[str]]:
    rows = []
    for key in keys:
        stats = versions.get(key)
        if stats is None:
            rows.append([f"v{key}", "0", "0", NO_VALUE, "0.00", NO_VALUE, NO_VALUE, NO_VALUE])
            continue
        rows.append([f"v{key}", str(stats["requests"]), str(stats["errors"]), percent(stats["error_rate"]),
                     f"{stats['requests_per_second']:.2f}", ms(stats["p50_ms"]), ms(stats["p95_ms"]),
                     ms(stats["p99_ms"])])
    return rows


STATS_HEADER = ("version", "requests", "errors", "error rate", "req/s", "p50", "p95", "p99")


class LiveView(View):
    """A view refreshed from ``windows`` summaries: by an asyncio task on the kernel's loop, or by hand.

    The task awaits ``client.windows_async`` (non-blocking HTTP), so cells keep running
    while it ticks; it ends when the view is closed. ``update(summary)`` is the whole
    rendering step and takes a summary from anywhere, so tests drive it without timing.
    """

    def __init__(self, client: TFServeClient, name: str, *, interval: float, window_seconds: int) -> None:
        super().__init__()
        self.client = client
        self.name = name
        self.interval = max(0.05, float(interval))
        self.window_seconds = int(window_seconds)
        self.ticks = 0
        self.last_summary: dict | None = None
        self._task: asyncio.Task | None = None
        self._last_error = ""
        self.logged: LoggedRequests | None = None  # the "logged requests" section, when asked for

    def _add_logged(self, request_log: Any, records: int) -> list[widgets.Widget]:
        """The logged-requests section's widget (to place in the view), or nothing without ``request_log``."""
        if request_log is None or request_log is False:
            return []
        self.logged = LoggedRequests(self.client, self.name, request_log, records)
        return [self.logged.widget]

    def _logged_html(self) -> str:
        return self.logged.static_html() if self.logged is not None else ""

    @property
    def task(self) -> asyncio.Task | None:
        """The live refresh task, while one was started (done once the view is closed)."""
        return self._task

    def update(self, summary: dict) -> None:
        raise NotImplementedError

    def _apply(self, summary: dict) -> None:
        self.last_summary = summary
        self.update(summary)
        self.ticks += 1
        if self._last_error:
            self._last_error = ""
            self.status.clear()

    def _refresh_failed(self, error: Exception) -> None:
        message = error_text(error)
        if message != self._last_error:  # a server that is down fails every tick: log it once
            log.warning("live view of %s: refresh failed: %s", self.name, message)
        self._last_error = message
        self.status.error(f"refresh failed: {message}")

    def refresh(self) -> dict | None:
        """One synchronous refresh (blocks for one HTTP request); the summary, or None when it failed."""
        try:
            summary = self.client.windows(self.name, self.window_seconds)
        except Exception as error:
            self._refresh_failed(error)
            return None
        self._apply(summary)
        if self.logged is not None:
            self.logged.refresh()
        return summary

    async def refresh_once(self) -> dict | None:
        """One refresh on the running loop; the summary, or None when it failed (shown in the status line)."""
        try:
            summary = await self.client.windows_async(self.name, self.window_seconds)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._refresh_failed(error)
            return None
        self._apply(summary)
        if self.logged is not None and not self.closed:
            await self.logged.refresh_async()
        return summary

    async def _tick(self) -> bool:
        return await self.refresh_once() is not None

    async def _run(self) -> None:
        while not self.closed:
            try:
                ok = await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a summary the view cannot draw: say so, keep the dashboard alive
                log.exception("live view of %s: update failed", self.name)
                self._refresh_failed(error)
                ok = False
            await asyncio.sleep(self.interval if ok else max(self.interval, ERROR_BACKOFF_SECONDS))

    def start(self) -> asyncio.Task | None:
        """Start the live refresh on the running event loop (a Jupyter kernel has one while a cell runs).

        Without a running loop (a plain script) nothing starts; call ``refresh()`` instead.
        """
        if self.closed:
            raise RuntimeError(f"this {type(self).__name__} is closed")
        if self._task is not None and not self._task.done():
            return self._task
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.info("no running event loop: %s of %s will not refresh by itself; call refresh()",
                     type(self).__name__, self.name)
            self.status.info("not live (no running event loop): call .refresh() to update")
            return None
        task = loop.create_task(self._run(), name=f"tfserve-live-{type(self).__name__}-{self.name}-{id(self):x}")
        _RUNNING.add(task)
        task.add_done_callback(_RUNNING.discard)
        task.add_done_callback(self._task_done)
        self._task = task
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("live view of %s stopped: %s", self.name, error_text(task.exception()))
            self.status.error(f"live refresh stopped: {error_text(task.exception())}")

    def stop(self) -> None:
        """Cancel the live refresh (the task is done once the loop has run it once more)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def _on_close(self) -> None:
        self.stop()

    async def aclose(self) -> None:
        """Close, and wait until the live task has finished."""
        task = self._task
        self.close()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)


class LatencyMonitor(LiveView):
    """p50 and p99 (ms) and req/s per version of any model, live; the table adds p95 and errors.

    ``request_log`` adds the last ``log_records`` logged requests and answers, summarised: a
    request-log glob or prefix (as ``request_log("PREFIX*")`` takes), or ``True`` for wherever
    the model logs now (see :class:`~jupyter_tfserve.kernel.widgets.logged.LoggedRequests`).
    """

    def __init__(self, client: TFServeClient, name: str, interval: float = 0.5, *, window_seconds: int = 60,
                 history_seconds: int = 600, live: bool = True, request_log: Any = None,
                 log_records: int = DEFAULT_RECORDS) -> None:
        super().__init__(client, name, interval=interval, window_seconds=window_seconds)
        self.plot = LatencyPlot(history_seconds)
        self.figure = self.plot.figure
        self.title = widgets.HTML(f"<b>{escape(name)}</b>: latency and throughput per version "
                                  f"(totals over the last {self.window_seconds} s)")
        self.stats = widgets.HTML(html_table(STATS_HEADER, []))
        self.widget = widgets.VBox([self.title, self.stats, self.figure, *self._add_logged(request_log, log_records),
                                    self.status.widget], layout=widgets.Layout(width="100%"))
        self._watch_close()
        if live:
            self.start()

    def update(self, summary: dict) -> None:
        versions = summary.get("versions", {})
        keys = sorted(versions, key=version_sort_key)
        self.plot.merge(versions)
        shown = sorted(set(keys) | set(self.plot.buffers), key=version_sort_key)
        self.plot.draw(shown, summary.get("now"))
        self.stats.value = html_table(STATS_HEADER, stats_rows(versions, keys))

    def static_html(self) -> str:
        return (self.title.value + self.stats.value + figure_html(self.figure) + self._logged_html()
                + super().static_html())
