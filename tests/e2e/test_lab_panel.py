"""The JupyterLab panel in a real browser: a real Jupyter server, the demo model, Debian's chromium.

It opens /lab, opens the TF Serving side panel and checks what a person sees: the model,
its version and state, a latency figure that moves once predict traffic flows, the status
bar item, a share dialog whose token works with curl on tfserve/v1 (and nowhere else), and
a deploy dialog showing the manifests `jupyter tfserve deploy` would write.
A screenshot of the panel is kept under test-output/ (its path is printed).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.helpers.jupyter import JupyterServerProcess
from tests.helpers.server import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
MODEL = "half_plus_two"
SCREENSHOT_DIR = REPO / "test-output" / "e2e"
LABEXTENSION = "jupyter-tfserve"

pytestmark = pytest.mark.timeout(240)

if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is absent (./dev.sh setup installs Debian's chromium)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")


def _labextension_installed() -> bool:
    import jupyter_core.paths

    return any((Path(path) / LABEXTENSION / "package.json").is_file()
               for path in jupyter_core.paths.jupyter_path("labextensions"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A Jupyter server (JupyterLab and the extension) serving the demo model, until the module ends."""
    assert _labextension_installed(), (
        f"the {LABEXTENSION} labextension is not installed: run ./dev.sh setup (or pip install -e .)")
    root = tmp_path_factory.mktemp("lab")
    (root / "config").mkdir()
    (root / "config" / "jupyter_server_config.json").write_text(json.dumps({
        "TFServeExtension": {"demo_model": True},
        "LabApp": {"news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate"},
    }))
    # No "get notified about Jupyter news?" toast over the screenshots (JUPYTER_CONFIG_DIR is root/config).
    settings = root / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    server = JupyterServerProcess(root / "state", root / "models", root / "jupyter.log", root)
    try:
        server.wait_for_engine()
        server.wait_until(lambda: any(
            status["state"] == "AVAILABLE" for status in
            server.owner.get(server.url + f"tfserve/v1/models/{MODEL}", timeout=10).json()
            .get("model_version_status", [])), timeout=120, what=f"{MODEL} to be AVAILABLE")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def page(lab):
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900}, device_scale_factor=2)
        context.set_default_timeout(30_000)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{lab.url}lab?token={lab.token}", wait_until="domcontentloaded", timeout=60_000)
        page.locator("#jp-main-dock-panel").wait_for(state="visible", timeout=60_000)
        yield page
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT_DIR / "last_state.png"))  # what the page showed at the end (or failure)
        browser.close()
        assert not [e for e in errors if "tfserve" in e.lower()], f"errors in the page: {errors}"


def _predict(lab: JupyterServerProcess, rounds: int, per_round: int) -> None:
    """Predict traffic spread over a few seconds, so the sparkline has several points."""
    for round_ in range(rounds):
        if round_:
            time.sleep(0.7)
        for _ in range(per_round):
            response = lab.owner.post(lab.url + f"tfserve/v1/models/{MODEL}:predict",
                                      json={"instances": [1.0, 2.0]}, timeout=30)
            assert response.status_code == 200, response.text
            assert response.json() == {"predictions": [2.5, 3.0]}


def _deploy_dialog_shows_the_manifests(lab: JupyterServerProcess, page, card, tmp_path: Path) -> None:
    """Deploy…: the YAML `jupyter tfserve deploy` would write for the running model, per target; copy, download."""
    card.locator('button[data-action="deploy"]').click()
    dialog = page.locator(".jp-Dialog .jp-tfserve-deploy-dialog")
    dialog.wait_for(state="visible")
    # The demo model's base path is a local folder: the server's one line says a storage URI is needed.
    page.wait_for_function("() => document.querySelector('.jp-tfserve-deploy-dialog').dataset.state === 'error'",
                           timeout=30_000)
    assert "is local; a cluster cannot read it" in dialog.locator(".jp-tfserve-deploy-error").inner_text()
    assert dialog.locator(".jp-tfserve-deploy-download").is_disabled()

    dialog.locator("input.jp-tfserve-deploy-storage").fill("s3://team/models")
    page.wait_for_function("() => document.querySelector('.jp-tfserve-deploy-dialog').dataset.state === 'ready'",
                           timeout=30_000)
    pre = dialog.locator("pre.jp-tfserve-deploy-yaml")
    text = pre.inner_text()
    assert "kind: Deployment" in text and "kind: ConfigMap" in text and "s3://team/models/half_plus_two" in text
    assert pre.get_attribute("aria-readonly") == "true"
    assert dialog.locator("select.jp-tfserve-deploy-target").input_value() == "kubernetes"
    assert dialog.locator("button.jp-tfserve-deploy-copy").is_enabled()

    dialog.locator("select.jp-tfserve-deploy-target").select_option("kserve")
    page.wait_for_function(
        "() => document.querySelector('.jp-tfserve-deploy-dialog').dataset.state === 'ready' && "
        "document.querySelector('.jp-tfserve-deploy-yaml').textContent.includes('kind: InferenceService')",
        timeout=30_000)
    text = pre.inner_text()
    assert "storageUri: s3://team/models/half_plus_two" in text and "kind: Deployment" not in text
    page.screenshot(path=str(SCREENSHOT_DIR / "deploy_dialog.png"))

    with page.expect_download() as caught:
        dialog.locator("button.jp-tfserve-deploy-download").click()
    download = caught.value
    assert download.suggested_filename == f"{MODEL}-kserve.yaml"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert saved.read_text() == lab.owner.get(
        lab.url + "tfserve/api/deploy", params={"target": "kserve", "model": MODEL,
                                                "storage_uri": "s3://team/models"}, timeout=30).text
    page.locator(".jp-Dialog .jp-mod-accept").click()
    dialog.wait_for(state="detached")


def test_panel_shows_models_latency_status_and_share(lab, page, tmp_path):
    started = time.monotonic()
    # The panel's tab in the left side bar (its own icon), then the model card.
    page.locator('.jp-SideBar .lm-TabBar-tab[data-id="jupyter-tfserve-panel"]').click()
    panel = page.locator("#jupyter-tfserve-panel")
    panel.wait_for(state="visible")
    card = panel.locator(f'.jp-tfserve-model[data-model="{MODEL}"]')
    card.wait_for(state="visible", timeout=30_000)
    assert card.locator(".jp-tfserve-model-name").inner_text() == MODEL
    version = card.locator('.jp-tfserve-version[data-version="1"]')
    assert version.get_attribute("data-state") == "AVAILABLE"
    assert "AVAILABLE" in version.inner_text()
    assert panel.locator(".jp-tfserve-engine").get_attribute("data-state") == "running"
    assert card.locator(".jp-tfserve-label").count() == 0  # the demo model starts with no labels

    # Promote: pick version 1 in the dialog; the "stable" label shows on it.
    card.locator('button[data-action="promote"]').click()
    promote = page.locator(".jp-Dialog .jp-tfserve-promote-dialog")
    promote.wait_for(state="visible")
    promote.locator("select.jp-tfserve-promote-version").select_option("1")
    page.locator(".jp-Dialog .jp-mod-accept").click()
    version.locator('.jp-tfserve-label[data-label="stable"]').wait_for(state="visible", timeout=15_000)
    assert lab.owner.get(lab.url + f"tfserve/api/models/{MODEL}", timeout=10).json()["labels"] == {"stable": "1"}

    # A model that logs its requests says so, with the rate; turned off, the mention goes.
    logging_url = lab.url + f"tfserve/api/models/{MODEL}/logging"
    assert lab.owner.put(logging_url, json={"sampling_rate": 0.25}, timeout=30).status_code == 200
    routing = card.locator(".jp-tfserve-routing")
    routing.filter(has_text="logging 25%").wait_for(state="visible", timeout=15_000)
    assert lab.owner.put(logging_url, json={"sampling_rate": 0}, timeout=30).status_code == 200
    page.wait_for_function("() => !document.querySelector('.jp-tfserve-routing')?.textContent?.includes('logging')",
                           timeout=15_000)

    # No predict yet: no latency figure. Then traffic, and the figure appears within a few refreshes.
    latency = card.locator(".jp-tfserve-latency")
    assert latency.get_attribute("data-p50") == "", latency.inner_text()
    before = latency.inner_text()
    _predict(lab, rounds=6, per_round=15)
    page.wait_for_function(
        """([model]) => {
            const card = document.querySelector(`.jp-tfserve-model[data-model="${model}"]`);
            const latency = card && card.querySelector('.jp-tfserve-latency');
            return latency && latency.dataset.p50 !== '' && Number(latency.dataset.requests) >= 90;
        }""", arg=[MODEL], timeout=15_000)
    after = latency.inner_text()
    assert after != before and after.startswith("p50 "), (before, after)
    assert float(latency.get_attribute("data-p50")) > 0
    assert float(card.locator(".jp-tfserve-rate").get_attribute("data-rate")) > 0
    assert int(card.locator(".jp-tfserve-sparkline").get_attribute("data-points")) >= 3

    # The status bar item.
    status = page.locator(".jp-tfserve-status")
    status.wait_for(state="visible")
    page.wait_for_function(
        "() => document.querySelector('.jp-tfserve-status').textContent === 'TF Serving: serving 1 model'",
        timeout=15_000)
    assert status.get_attribute("data-state") == "running"

    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOT_DIR / "lab_panel.png"
    panel.screenshot(path=str(shot))
    page.screenshot(path=str(SCREENSHOT_DIR / "lab_window.png"))
    print(f"\nscreenshot of the TF Serving panel: {shot}")
    assert shot.stat().st_size > 1000

    # Share: options, then the token with its URL and curl command.
    card.locator('button[data-action="share"]').click()
    dialog = page.locator(".jp-Dialog")
    dialog.locator(".jp-tfserve-share-options").wait_for(state="visible")
    dialog.locator(".jp-mod-accept").click()
    result = page.locator(".jp-Dialog .jp-tfserve-share-result")
    result.wait_for(state="visible")
    token = result.locator(".jp-tfserve-share-token").input_value()
    url = result.locator(".jp-tfserve-share-url").input_value()
    command = result.locator(".jp-tfserve-share-curl").input_value()
    page.screenshot(path=str(SCREENSHOT_DIR / "share_dialog.png"))
    assert token.startswith("tfs_")
    assert url == f"{lab.url}tfserve/v1/models/{MODEL}:predict"
    assert url in command and token in command
    assert result.locator('button.jp-tfserve-copy[data-copy="curl"]').is_visible()

    # The token works with curl on predict, as shown in the dialog and as plain arguments...
    shown = subprocess.run(["bash", "-c", command.replace("curl ", "curl -sS --fail-with-body ", 1)],
                           capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr + shown.stdout
    assert json.loads(shown.stdout) == {"predictions": [2.5, 3.0]}, shlex.quote(command)
    plain = subprocess.run(
        ["curl", "-sS", "-X", "POST", "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json",
         "-d", '{"instances": [4.0]}', "-w", "\n%{http_code}", url], capture_output=True, text=True, timeout=30)
    body, code = plain.stdout.rsplit("\n", 1)
    assert code == "200" and json.loads(body) == {"predictions": [4.0]}, plain.stdout + plain.stderr
    # The same token on the KServe V2 URL the dialog shows beside it.
    v2_url = result.locator(".jp-tfserve-share-v2url").input_value()
    assert v2_url == f"{lab.url}tfserve/v2/models/{MODEL}/infer"
    declared = lab.owner.get(lab.url + f"tfserve/v2/models/{MODEL}", timeout=10).json()["inputs"][0]
    shape = [1 if size == -1 else size for size in declared["shape"]]
    inferred = requests.post(v2_url, headers={"Authorization": f"Bearer {token}"}, timeout=30, json={
        "inputs": [{"name": declared["name"], "shape": shape, "datatype": "FP32", "data": [4.0]}]})
    assert inferred.status_code == 200, inferred.text
    assert inferred.json()["outputs"][0]["data"] == [4.0]
    # ... and opens nothing else: Jupyter's own API answers 403.
    contents = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Authorization: Bearer {token}",
         f"{lab.url}api/contents"], capture_output=True, text=True, timeout=30)
    assert contents.stdout == "403", contents.stdout + contents.stderr
    assert requests.get(f"{lab.url}api/contents", headers={"Authorization": f"Bearer {token}"},
                        timeout=30).status_code == 403
    dialog.locator(".jp-mod-accept").click()
    dialog.wait_for(state="detached")

    # The command palette has every action (the modal palette closes when it loses focus: retry).
    palette = page.locator("#modal-command-palette")
    for _attempt in range(3):
        page.locator(".jp-tfserve-title").click()
        page.keyboard.press("Control+Shift+c")
        try:
            palette.wait_for(state="visible", timeout=5_000)
            palette.locator("input").fill("TF Serving", timeout=5_000)
            palette.locator(".lm-CommandPalette-itemLabel", has_text="Share a Served Model").wait_for(timeout=5_000)
            break
        except playwright_api.TimeoutError:
            page.keyboard.press("Escape")
    labels = palette.locator(".lm-CommandPalette-itemLabel").all_inner_texts()
    page.screenshot(path=str(SCREENSHOT_DIR / "command_palette.png"))
    for label in ["Refresh the TF Serving Models", "Unload a Served Model…", "Promote a Model Version to Stable…",
                  "Share a Served Model…", "Open the A/B Dashboard of a Model…", "Show the TF Serving Panel",
                  "Deploy a Model to Kubernetes or KServe…"]:
        assert label in labels, labels
    page.keyboard.press("Escape")
    palette.wait_for(state="hidden")

    # Open A/B dashboard: a new notebook whose first cells load the magic and show the dashboard.
    card.locator('button[data-action="dashboard"]').click()
    page.locator(".jp-NotebookPanel").first.wait_for(state="visible", timeout=30_000)
    listing = lab.owner.get(lab.url + "api/contents?content=1", timeout=10).json()
    notebooks = [item["path"] for item in listing["content"] if item["type"] == "notebook"]
    assert notebooks, listing
    cells = lab.owner.get(lab.url + f"api/contents/{notebooks[0]}", timeout=10).json()["content"]["cells"]
    assert ["".join(cell["source"]) for cell in cells[:2]] == ["%load_ext jupyter_tfserve",
                                                               f"%tfserve dashboard {MODEL}"]

    # No polling of the latency windows while the panel is hidden; it resumes when shown.
    panel_tab = page.locator('.jp-SideBar .lm-TabBar-tab[data-id="jupyter-tfserve-panel"]')
    window_requests: list[str] = []
    page.on("request", lambda request: window_requests.append(request.url) if "/windows" in request.url else None)
    if panel.is_visible():
        panel_tab.click()
    panel.wait_for(state="hidden")
    page.wait_for_timeout(1_000)  # a refresh that began before the panel closed may still finish
    window_requests.clear()
    page.wait_for_timeout(5_000)
    assert window_requests == [], window_requests
    panel_tab.click()
    panel.wait_for(state="visible")
    page.wait_for_timeout(3_000)
    assert 1 <= len(window_requests) <= 4, window_requests

    _deploy_dialog_shows_the_manifests(lab, page, card, tmp_path)

    # Unload, confirmed in a dialog: the card goes, and the status bar says so.
    card.locator('button[data-action="unload"]').click()
    page.locator(".jp-Dialog .jp-mod-accept").click()
    card.wait_for(state="detached", timeout=15_000)
    page.wait_for_function(
        "() => document.querySelector('.jp-tfserve-status').textContent === 'TF Serving: serving 0 models'",
        timeout=15_000)
    assert lab.owner.get(lab.url + f"tfserve/v1/models/{MODEL}", timeout=10).status_code == 404
    print(f"browser part took {time.monotonic() - started:.1f} s")

