"""``ExportForm``: pick a model from the notebook's namespace and export it as the next served version.

The form holds variable *names*, not objects, and reads the namespace again when
Export is clicked: a model retrained (or re-assigned) after the form was displayed
is exported as it is now, not as it was.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import ipywidgets as widgets
import numpy as np

from ..client import TFServeClient
from ._common import View, guarded

log = logging.getLogger(__name__)

EXPORT_STEPS = 6  # progress messages an export usually reports (save, warmup, publish, states, done)
_NOT_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def is_exportable(value: Any) -> bool:
    """A Keras model or a ``tf.Module`` (not a lone Keras layer), judged with what the notebook already imported."""
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "Model"):
        if isinstance(value, keras.Model):
            return True
        if isinstance(value, keras.layers.Layer):  # a lone layer is a tf.Module under Keras 2, not a model
            return False
    tf = sys.modules.get("tensorflow")
    return tf is not None and hasattr(tf, "Module") and isinstance(value, tf.Module)


def find_models(namespace: MutableMapping[str, Any]) -> dict[str, Any]:
    """Keras models and ``tf.Module`` objects by variable name (``_``-prefixed names, IPython's history, skipped)."""
    return {name: value for name, value in list(namespace.items())
            if not name.startswith("_") and not isinstance(value, type) and is_exportable(value)}


def find_arrays(namespace: MutableMapping[str, Any]) -> dict[str, np.ndarray]:
    return {name: value for name, value in list(namespace.items())
            if isinstance(value, np.ndarray) and not name.startswith("_")}


def model_name_for(variable: str) -> str:
    """A served-model name from a variable name (letters, digits, ``.``, ``_``, ``-``)."""
    return _NOT_NAME.sub("_", variable).strip("_.-") or "model"


class ExportForm(View):
    """Export a Keras model or ``tf.Module`` from ``namespace`` (the notebook's user namespace) to the server."""

    def __init__(self, client: TFServeClient, namespace: MutableMapping[str, Any]) -> None:
        super().__init__()
        self.client = client
        self.namespace = namespace
        self.result: Any = None
        self._auto_name = ""
        self.model = widgets.Dropdown(description="model", layout=widgets.Layout(width="300px"),
                                      style={"description_width": "50px"})
        self.rescan_button = widgets.Button(description="Rescan", icon="refresh",
                                            tooltip="look for models and arrays in the notebook again")
        self.name = widgets.Text(description="name", placeholder="served model name",
                                 layout=widgets.Layout(width="260px"), style={"description_width": "50px"})
        self.label = widgets.Text(description="label", placeholder="e.g. canary (optional)",
                                  layout=widgets.Layout(width="260px"), style={"description_width": "50px"})
        self.warmup = widgets.Dropdown(description="warmup", layout=widgets.Layout(width="300px"),
                                       tooltip="a small batch of inputs replayed at load, so the first request is fast",
                                       style={"description_width": "50px"})
        self.export_button = widgets.Button(description="Export", icon="upload", button_style="primary")
        self.progress = widgets.IntProgress(value=0, min=0, max=EXPORT_STEPS, description="",
                                            layout=widgets.Layout(width="300px"))
        self.model.observe(self._model_picked, names="value")
        self.rescan_button.on_click(lambda _: self.rescan())
        self.export_button.on_click(lambda _: self.export())
        self.widget = widgets.VBox([
            widgets.HTML("<b>Export a model as the next version</b>"),
            widgets.HBox([self.model, self.rescan_button]),
            widgets.HBox([self.name, self.label]),
            self.warmup,
            widgets.HBox([self.export_button, self.progress]),
            self.status.widget,
        ], layout=widgets.Layout(width="100%"))
        self._watch_close()
        self.rescan()

    @guarded
    def rescan(self) -> None:
        """Models and arrays from the namespace; the current picks are kept when they still exist."""
        models = find_models(self.namespace)
        picked = self.model.value
        self.model.options = [(f"{name} ({type(value).__name__})", name) for name, value in models.items()]
        self.model.value = picked if picked in models else next(iter(models), None)
        arrays = find_arrays(self.namespace)
        warmup = self.warmup.value
        self.warmup.options = [("none", None)] + [
            (f"{name} {value.dtype}{list(value.shape)}", name) for name, value in arrays.items()]
        self.warmup.value = warmup if warmup in arrays else None
        if not models:
            self.status.info("no Keras model or tf.Module in the notebook yet: define one, then Rescan")

    def _model_picked(self, change: dict) -> None:
        if change["new"] and (not self.name.value or self.name.value == self._auto_name):
            self._auto_name = model_name_for(change["new"])
            self.name.value = self._auto_name

    def _progress(self, message: str) -> None:
        self.progress.value = min(self.progress.value + 1, self.progress.max - 1)
        self.status.info(message)

    @guarded
    def export(self) -> Any:
        """``client.export(model, name, label=, warmup=)``; the ExportResult, also kept in ``.result``."""
        variable, name = self.model.value, self.name.value.strip()
        if not variable:
            raise ValueError("pick a model to export")
        if not name:
            raise ValueError("give the served model a name")
        if variable not in self.namespace:
            raise ValueError(f"{variable} is no longer defined in the notebook")
        warmup = self.namespace.get(self.warmup.value) if self.warmup.value else None
        self.progress.value, self.progress.bar_style = 0, ""
        self.export_button.disabled = True
        self.status.info(f"exporting {variable} as {name} …")
        try:
            result = self.client.export(self.namespace[variable], name, label=self.label.value.strip() or None,
                                        warmup=warmup, progress=self._progress)
        except Exception:
            self.progress.bar_style = "danger"
            raise
        finally:
            self.export_button.disabled = False
        self.progress.value, self.progress.bar_style = self.progress.max, "success"
        self.result = result
        self.status.ok(str(result))
        log.info("exported %s: %s", variable, result)
        return result
