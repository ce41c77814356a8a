"""The "logged requests" section of the live monitor and the A/B dashboard: what the model was just asked.

The latency lines say how fast a model answers; this table says what it was asked and what
it answered, from its request log: the last few records, each input and output summarised
(name, dtype, shape, leading values, min/max; never the whole tensor). It follows the
dashboard's refresh, and reads only what was appended to the log since the last one
(:class:`~jupyter_tfserve.kernel.log_tail.LogTail`), in a worker thread, so a large log or
a slow disk never stalls the kernel's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import ipywidgets as widgets

from ..client import TFServeClient
from ..log_tail import DEFAULT_RECORDS, LOG_HEADER, LoggedRecord, LogTail, summaries_html_rows
from ._common import error_text, escape, html_table

log = logging.getLogger(__name__)

DESCRIBE_EVERY_SECONDS = 5.0  # how often the model's own log settings are re-read (``request_log=True``)


class LoggedRequests:
    """The last ``records`` logged requests of ``name``, as an HTML table.

    ``request_log`` is a request-log glob or prefix (what ``replay.request_log("PREFIX*")``
    takes), a list of files, or ``True`` for wherever the model logs now (its
    ``logging_config``, read from the engine, re-read every few seconds: ``%tfserve log``
    may turn it on while the dashboard is open).
    """

    def __init__(self, client: TFServeClient, name: str, request_log: Any, records: int = DEFAULT_RECORDS) -> None:
        self.client = client
        self.name = name
        self.follows_model = request_log is True
        self.logging: dict | None = None  # the model's ``logging`` description (``follows_model``)
        self._described_at: float | None = None
        self.describe_every_seconds = DESCRIBE_EVERY_SECONDS
        self.tail = LogTail(self._model_log if self.follows_model else request_log, model=name, records=records)
        self.records: list[LoggedRecord] = []
        self.error = ""
        self.widget = widgets.HTML()
        self._render()

    def _model_log(self) -> str | None:
        prefix = (self.logging or {}).get("filename_prefix")
        return f"{prefix}*" if prefix else None

    def set_description(self, description: dict) -> None:
        """Take the model's logging settings from a description someone else read (the A/B dashboard's)."""
        if self.follows_model:
            self.logging = description.get("logging")
            self._described_at = time.monotonic()

    def _describe_due(self) -> bool:
        return self.follows_model and (self._described_at is None
                                       or time.monotonic() - self._described_at >= self.describe_every_seconds)

    def refresh(self) -> list[LoggedRecord]:
        """Read what is new (blocking) and redraw; failures are shown in the section, never raised."""
        try:
            if self._describe_due():
                self.set_description(self.client.model(self.name))
            self.records, self.error = self.tail.poll(), ""
        except Exception as error:
            self._failed(error)
        self._render()
        return self.records

    async def refresh_async(self) -> list[LoggedRecord]:
        """As :meth:`refresh`, with the file reading in a worker thread."""
        try:
            if self._describe_due():
                model_async = getattr(self.client, "model_async", None)
                description = (await model_async(self.name) if model_async is not None
                               else await asyncio.to_thread(self.client.model, self.name))
                self.set_description(description)
            self.records, self.error = await asyncio.to_thread(self.tail.poll), ""
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._failed(error)
        self._render()
        return self.records

    def _failed(self, error: Exception) -> None:
        message = error_text(error)
        if message != self.error:
            log.warning("logged requests of %s: %s", self.name, message)
        self.error = message

    def _title(self) -> str:
        if self.follows_model:
            if not self.logging:
                return (f"<b>logged requests</b>: {escape(self.name)} is not logging "
                        f"(<code>%tfserve log {escape(self.name)} --rate 0.1</code> turns it on)")
            where = (f"{100 * self.logging['sampling_rate']:g} % of requests to "
                     f"<code>{escape(self.logging['filename_prefix'])}*</code>")
        else:
            source = self.tail.source
            where = "<code>" + escape(os.fspath(source) if isinstance(source, str | os.PathLike)
                                      else ", ".join(map(os.fspath, source))) + "</code>"
        return f"<b>logged requests</b>: the last {self.tail.records} of {where}, newest first"

    def _render(self) -> None:
        parts = [f"<div style='margin-top:6px'>{self._title()}</div>"]
        if self.error:
            parts.append(f"<div style='color:#c62828'>{escape(self.error)}</div>")
        if self.records:
            parts.append("<div style='font-family:monospace;font-size:11px;overflow-x:auto'>"
                         + html_table(LOG_HEADER, summaries_html_rows(self.records)) + "</div>")
        elif not self.error and (not self.follows_model or self.logging):
            parts.append("<div style='color:#777'>no logged requests yet</div>")
        self.widget.value = "".join(parts)

    def static_html(self) -> str:
        return self.widget.value
