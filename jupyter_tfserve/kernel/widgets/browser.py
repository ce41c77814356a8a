"""``ModelBrowser``: every served model with its versions, states and labels, and the buttons that manage them.

Every button acts on the server and then re-reads it, so the table never shows a
state the engine is not in; a failure (a bad base path, unloading the last version)
is shown in the status line with the engine's own message.
"""

from __future__ import annotations

import logging

import ipywidgets as widgets

from ..client import TFServeClient
from ._common import View, close_tree, escape, guarded, html_table, labels_of, version_options, versions_by_state

log = logging.getLogger(__name__)

POLICIES = {"latest": "latest", "latest 2": {"latest": 2}, "all": "all"}


def describe_routing(routing: dict | None) -> str:
    if not routing:
        return "no split, no shadow"
    parts = []
    if routing.get("split"):
        parts.append("split " + ", ".join(f"{arm}: {weight:g}" for arm, weight in routing["split"].items()))
    if routing.get("shadow"):
        parts.append(f"shadow to {routing['shadow']['target']}")
    return "; ".join(parts) or "no split, no shadow"


class ModelRow:
    """One model of the browser: a versions table and its Promote / Unload buttons."""

    def __init__(self, browser: ModelBrowser, description: dict) -> None:
        self.name = description["name"]
        self.description = description
        states = versions_by_state(description)
        self.header = widgets.HTML(
            f"<b>{escape(self.name)}</b> <span style='color:#777'>{escape(description.get('base_path', ''))} · "
            f"policy {escape(description.get('version_policy', ''))} · "
            f"{escape(describe_routing(description.get('routing')))}</span>")
        rows = []
        for status in description.get("model_version_status", []):
            version = int(status["version"])
            error = status.get("status", {})
            code = error.get("error_code", "OK")
            problem = "" if code == "OK" else f"{code}: {error.get('error_message', '')}"
            rows.append([f"v{version}", states[version], ", ".join(labels_of(description, version)), problem])
        self.table = widgets.HTML(html_table(["version", "state", "labels", "status"], rows))
        self.version = widgets.Dropdown(description="version", options=version_options(description),
                                        layout=widgets.Layout(width="200px"), style={"description_width": "55px"})
        self.promote_button = widgets.Button(description="Promote to stable", icon="arrow-up",
                                             tooltip="the stable label moves to this version; split and shadow end")
        self.unload_version_button = widgets.Button(description="Unload version", icon="minus",
                                                    tooltip="stop serving this version (not the last one)")
        self.unload_button = widgets.Button(description="Unload model", icon="trash", button_style="danger",
                                            tooltip="stop serving every version of this model")
        self.promote_button.on_click(lambda _: browser.promote(self.name, self.version.value))
        self.unload_version_button.on_click(lambda _: browser.unload(self.name, self.version.value))
        self.unload_button.on_click(lambda _: browser.unload(self.name))
        self.widget = widgets.VBox(
            [self.header, self.table,
             widgets.HBox([self.version, self.promote_button, self.unload_version_button, self.unload_button])],
            layout=widgets.Layout(border="1px solid #e0e0e0", padding="4px 8px", margin="4px 0"))


class ModelBrowser(View):
    """Served models, their versions, states and labels; Load, Promote, Unload and Refresh."""

    def __init__(self, client: TFServeClient) -> None:
        super().__init__()
        self.client = client
        self.rows: dict[str, ModelRow] = {}
        self.models = widgets.VBox()
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.load_name = widgets.Text(description="name", placeholder="model name",
                                      layout=widgets.Layout(width="220px"), style={"description_width": "40px"})
        self.load_path = widgets.Text(description="base path", placeholder="folder of numbered versions",
                                      tooltip="absolute, or relative to the model repository root",
                                      layout=widgets.Layout(width="340px"), style={"description_width": "70px"})
        self.load_policy = widgets.Dropdown(description="policy", options=list(POLICIES), value="latest",
                                            layout=widgets.Layout(width="170px"), style={"description_width": "45px"})
        self.load_button = widgets.Button(description="Load", icon="upload", button_style="primary")
        self.refresh_button.on_click(lambda _: (self.status.clear(), self.refresh()))
        self.load_button.on_click(lambda _: self.load(self.load_name.value, self.load_path.value,
                                                      self.load_policy.value))
        self.widget = widgets.VBox([
            widgets.HBox([widgets.HTML("<b>Served models</b>"), self.refresh_button],
                         layout=widgets.Layout(justify_content="space-between", align_items="center")),
            self.models,
            widgets.HTML("<b>Load a model</b>"),
            widgets.HBox([self.load_name, self.load_path, self.load_policy, self.load_button]),
            self.status.widget,
        ], layout=widgets.Layout(width="100%"))
        self._watch_close()
        self.refresh()

    @guarded
    def refresh(self) -> list[dict]:
        """Re-read every model; the old rows' widgets are closed (their comms would leak otherwise)."""
        models = self.client.models()
        old = list(self.models.children)
        self.rows = {description["name"]: ModelRow(self, description) for description in models}
        self.models.children = [row.widget for row in self.rows.values()] or [
            widgets.HTML("<span style='color:#777'>no models served</span>")]
        for child in old:
            close_tree(child)
        return models

    @guarded
    def load(self, name: str, base_path: str, policy: str = "latest") -> dict:
        name, base_path = name.strip(), base_path.strip()
        if not name or not base_path:
            raise ValueError("a name and a base path are needed to load a model")
        self.status.info(f"loading {name} from {base_path} …")
        description = self.client.load(name, base_path, version_policy=POLICIES.get(policy, policy))
        self.refresh()
        available = [v for v, state in versions_by_state(description).items() if state == "AVAILABLE"]
        self.status.ok(f"{name} loaded; AVAILABLE: {', '.join(f'v{v}' for v in sorted(available)) or 'none yet'}")
        return description

    @guarded
    def promote(self, name: str, version: int | None) -> dict:
        if version is None:
            raise ValueError(f"{name} has no AVAILABLE version to promote")
        description = self.client.promote(name, version)
        self.refresh()
        self.status.ok(f"{name}: v{version} is now stable")
        return description

    @guarded
    def unload(self, name: str, version: int | None = None) -> dict:
        """The whole model, or one version of it (the engine refuses to unload the last one)."""
        answer = self.client.unload(name, version)
        self.refresh()
        self.status.ok(f"{name} unloaded" if version is None else f"{name}: v{version} unloaded")
        return answer
