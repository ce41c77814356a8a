"""What every tfserve widget shares: display delegation, closing, a status line, version helpers.

ipywidgets and plotly are imported here (and only in this package), so the client and
the magics stay importable in a kernel that has neither.
"""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import ipywidgets as widgets

from ..client import TFServeError

log = logging.getLogger(__name__)

TEMPLATE = "plotly_white"
FIGURE_MARGIN = {"l": 50, "r": 20, "t": 40, "b": 40}
# The legend to the right of the plot, top-aligned: below it, it sat on the x-axis tick labels of a subplot.
LEGEND_RIGHT = {"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1, "yanchor": "top", "tracegroupgap": 4,
                "font": {"size": 11}}
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
COLOR_A, COLOR_B = COLORS[0], COLORS[1]
AVAILABLE = "AVAILABLE"
NO_VALUE = "\u2013"  # an en dash: a cell with nothing to show

F = TypeVar("F", bound=Callable[..., Any])


def escape(value: Any) -> str:
    return html.escape(str(value))


def error_text(error: BaseException) -> str:
    """The server's own message for TFServeError (it says what to fix), the class and text otherwise."""
    if isinstance(error, TFServeError):
        return error.message
    return f"{error.__class__.__name__}: {error}"


def ms(value: float | None) -> str:
    return NO_VALUE if value is None else f"{value:.1f} ms"


def percent(value: float | None) -> str:
    return NO_VALUE if value is None else f"{100 * value:.1f} %"


class StatusLine:
    """One HTML line for results and errors: a failed button click is shown here, never raised into the kernel."""

    def __init__(self) -> None:
        self.widget = widgets.HTML(value="")
        self.kind = ""
        self.message = ""

    def _set(self, kind: str, message: str, color: str) -> None:
        self.kind, self.message = kind, message
        self.widget.value = f'<span style="color:{color}">{escape(message)}</span>' if message else ""

    def info(self, message: str) -> None:
        self._set("info", message, "#555")

    def ok(self, message: str) -> None:
        self._set("ok", message, "#2e7d32")

    def error(self, message: str) -> None:
        self._set("error", message, "#c62828")

    def clear(self) -> None:
        self._set("", "", "#555")


def guarded(method: F) -> F:
    """A widget callback whose failure goes to ``self.status`` and the log instead of the kernel's stderr.

    ipywidgets calls button handlers from the comm message handler: an exception there
    ends up in a log console nobody reads, and the button looks like it did nothing.
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as error:
            log.warning("%s.%s failed: %s", type(self).__name__, method.__name__, error_text(error))
            self.status.error(error_text(error))
            return None

    return wrapper  # type: ignore[return-value]


def close_tree(widget: Any) -> None:
    """Close a widget, its children (recursively), and its layout and style, which are widgets with comms too."""
    for child in getattr(widget, "children", ()) or ():
        close_tree(child)
    for part in ("layout", "style"):
        value = getattr(widget, part, None)
        if isinstance(value, widgets.Widget):
            value.close()
    if isinstance(widget, widgets.Widget):
        widget.close()


class View:
    """Base of the tfserve widgets: ``.widget`` is the container; displaying the object displays it.

    ``close()`` is idempotent and also runs when the container is closed by anyone
    (``widget.close()``, ``Widget.close_all()``, or the frontend closing its comm), so a
    live refresh task never outlives what it draws into.
    """

    widget: widgets.Widget
    status: StatusLine

    def __init__(self) -> None:
        self.closed = False
        self.status = StatusLine()

    def _watch_close(self) -> None:
        """Call once ``self.widget`` exists."""
        self.widget.observe(self._container_comm_changed, names="comm")
        if self.widget.comm is not None:
            self.widget.comm.on_close(lambda message: self.close())

    def _container_comm_changed(self, change: dict) -> None:
        if change["new"] is None and not self.closed:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._on_close()
        close_tree(self.widget)

    def _on_close(self) -> None:
        """Subclasses cancel their tasks here (before the widgets go)."""

    def static_html(self) -> str:
        """What the view shows now, as self-contained HTML (subclasses add their tables and figures)."""
        return self.status.widget.value

    def _repr_mimebundle_(self, **kwargs: Any) -> dict | None:
        """The widget view, plus ``text/html`` of the state at display time.

        A notebook saved without widget state (small: a FigureWidget's state carries its
        JavaScript) shows that HTML where no kernel or widget manager renders the view.
        """
        if self.closed or self.widget._repr_mimebundle_ is None:
            return {"text/plain": f"<closed {type(self).__name__}>"}
        return with_static_html(self.widget._repr_mimebundle_(**kwargs), self.static_html())


def versions_by_state(description: dict) -> dict[int, str]:
    """``{version: state}`` from a model description, newest first."""
    statuses = description.get("model_version_status", [])
    return {int(status["version"]): status["state"] for status in sorted(statuses, key=lambda s: -int(s["version"]))}


def available_versions(description: dict) -> list[int]:
    """AVAILABLE versions, oldest first."""
    return sorted(v for v, state in versions_by_state(description).items() if state == AVAILABLE)


def labels_of(description: dict, version: int) -> list[str]:
    return sorted(label for label, labelled in description.get("labels", {}).items() if int(labelled) == version)


def version_options(description: dict, only_available: bool = True) -> list[tuple[str, int]]:
    """Dropdown options: ``("v2 · canary", 2)``, newest first."""
    options = []
    for version, state in versions_by_state(description).items():
        if only_available and state != AVAILABLE:
            continue
        labels = labels_of(description, version)
        text = f"v{version}" + (f" · {', '.join(labels)}" if labels else "")
        if not only_available:
            text += f" ({state})"
        options.append((text, version))
    return options


def arm_version(arm: str, description: dict) -> int | None:
    """A split arm (``"2"`` or a label) as a version number, or None when the label is unknown."""
    if arm.isdigit():
        return int(arm)
    labelled = description.get("labels", {}).get(arm)
    return int(labelled) if labelled is not None else None


def html_table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    """A small HTML table; cells are escaped, so server text (labels, errors) cannot inject markup."""
    style = "border-collapse:collapse;font-size:12px"
    cell = "padding:2px 10px;border-bottom:1px solid #ddd;text-align:left"
    head = "".join(f'<th style="{cell}">{escape(h)}</th>' for h in header)
    body = "".join("<tr>" + "".join(f'<td style="{cell}">{escape(c)}</td>' for c in row) + "</tr>" for row in rows)
    return f'<table style="{style}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


STATIC_NOTE = ("<div style='color:#777;font-size:11px'>static copy of the widget as it was displayed "
               "(figures need plotly.js from its CDN; run the cell for the live view)</div>")


def with_static_html(bundle: dict | None, static: str) -> dict:
    """A widget's mime bundle with a ``text/html`` fallback beside its view."""
    bundle = dict(bundle or {})
    bundle["text/html"] = f"<div class='tfserve-static'>{static}{STATIC_NOTE}</div>"
    return bundle


def figure_html(figure: Any) -> str:
    """A plotly figure as an HTML fragment that loads plotly.js from the CDN instead of embedding its 4 MB."""
    import plotly.graph_objects as go

    return go.Figure(figure).to_html(full_html=False, include_plotlyjs="cdn", default_width="100%")
