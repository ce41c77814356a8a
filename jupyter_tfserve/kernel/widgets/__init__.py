"""Notebook widgets for tfserve: a model browser, an export form, an A/B dashboard, a latency monitor, comparisons.

Each widget is an object with a ``.widget`` (the ipywidgets container; displaying the
object displays it) and a ``close()`` that stops its live task and closes its child
widgets. Live views refresh from an asyncio task on the kernel's event loop, so cells
keep running while they tick; a cell that blocks the loop (a long synchronous loop of
requests) pauses them until it ends.

>>> from jupyter_tfserve.kernel.widgets import dashboard
>>> dashboard(client, "digits")      # A/B: stable vs canary, split slider, shadow, promote
>>> dashboard(client)                # every served model
>>> monitor(client, "digits", request_log=True)  # with its last logged requests and answers

This package imports ipywidgets and plotly; the client and the magics import it only
when a widget is asked for.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from ..client import TFServeClient
from .ab import ABDashboard
from .browser import ModelBrowser
from .compare import ComparisonResult, RequestLog, compare_versions, request_log
from .export_form import ExportForm
from .live import LatencyMonitor
from .logged import LoggedRequests

__all__ = [
    "ABDashboard",
    "ComparisonResult",
    "ExportForm",
    "LatencyMonitor",
    "LoggedRequests",
    "ModelBrowser",
    "RequestLog",
    "browser",
    "compare_versions",
    "dashboard",
    "export_form",
    "monitor",
    "request_log",
]


def dashboard(client: TFServeClient, name: str | None = None, **options: Any) -> ABDashboard | ModelBrowser:
    """The A/B dashboard of ``name``, or the model browser without one (``%tfserve dashboard [NAME]``)."""
    if name:
        return ABDashboard(client, name, **options)
    return ModelBrowser(client)


def monitor(client: TFServeClient, name: str, interval: float = 0.5, **options: Any) -> LatencyMonitor:
    """Live p50/p99 lines (p95 in the table and on hover) and req/s per version of any model."""
    return LatencyMonitor(client, name, interval, **options)


def export_form(client: TFServeClient, namespace: MutableMapping[str, Any]) -> ExportForm:
    """A form that exports a model from ``namespace`` (in IPython: ``get_ipython().user_ns``)."""
    return ExportForm(client, namespace)


def browser(client: TFServeClient) -> ModelBrowser:
    return ModelBrowser(client)
