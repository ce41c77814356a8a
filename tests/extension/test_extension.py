"""The server extension in a real Jupyter server (pytest-jupyter) with a real engine process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from tests.helpers.jupyter import extension_config

pytest_plugins = ("pytest_jupyter.jupyter_server",)


@pytest.fixture
def jp_server_config(tmp_path, model_zoo):
    state = tmp_path / "tfserve-state"
    state.mkdir()
    (state / "models.config").write_text(
        f'model_config_list {{ config {{ name: "half" base_path: "{model_zoo["tf2_half_plus_two"]}" }} }}'
    )
    return extension_config(state)


async def _started(jp_serverapp):
    await jp_serverapp.extension_manager.start_all_extensions()
    return jp_serverapp.web_app.settings["tfserve_supervisor"]


async def _wait_for_prediction(jp_fetch, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            response = await jp_fetch("tfserve", "v1", "models", "half:predict", method="POST",
                                      body=json.dumps({"instances": [2.0, 4.0]}))
            return {"body": json.loads(response.body), "headers": response.headers}
        except HTTPClientError as error:
            last = error
            await asyncio.sleep(0.2)
    raise AssertionError(f"no prediction through tfserve/v1 within {timeout} s: {last}")


@pytest.mark.timeout(240)
async def test_predict_status_and_metadata_through_the_jupyter_server(jp_fetch, jp_serverapp):
    await _started(jp_serverapp)
    answer = await _wait_for_prediction(jp_fetch)
    assert answer["body"] == {"predictions": [3.0, 4.0]}
    assert answer["headers"]["X-TFServe-Model-Version"] == "1"
    status = json.loads((await jp_fetch("tfserve", "v1", "models", "half")).body)
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    metadata = json.loads((await jp_fetch("tfserve", "v1", "models", "half", "metadata")).body)
    assert "serving_default" in metadata["metadata"]["signature_def"]["signature_def"]
    engine = json.loads((await jp_fetch("tfserve", "api", "engine")).body)
    assert engine["state"] == "running" and engine["restarts"] == 0


@pytest.mark.timeout(240)
async def test_engine_errors_pass_through_unchanged(jp_fetch, jp_serverapp):
    await _started(jp_serverapp)
    await _wait_for_prediction(jp_fetch)
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch("tfserve", "v1", "models", "nope:predict", method="POST", body='{"instances": [1.0]}')
    assert caught.value.code == 404
    assert json.loads(caught.value.response.body) == {"error": "Servable not found for request: Latest(nope)"}


@pytest.mark.timeout(240)
async def test_nothing_is_reachable_without_the_jupyter_token(jp_fetch, jp_serverapp, jp_http_port, jp_base_url):
    await _started(jp_serverapp)
    await _wait_for_prediction(jp_fetch)
    client = AsyncHTTPClient()
    base = f"http://127.0.0.1:{jp_http_port}{jp_base_url}tfserve/"
    for path, method, body in (("v1/models/half:predict", "POST", '{"instances": [1.0]}'),
                               ("v1/models/half", "GET", None), ("api/engine", "GET", None)):
        response = await client.fetch(base + path, method=method, body=body, raise_error=False)
        assert response.code == 403, (path, response.code)
    wrong = await client.fetch(base + "v1/models/half", headers={"Authorization": "token not-the-token"},
                               raise_error=False)
    assert wrong.code == 403


def test_extension_is_enabled_and_ok_when_installed():
    jupyter = Path(sys.executable).parent / "jupyter"
    result = subprocess.run([str(jupyter), "server", "extension", "list"], capture_output=True, text=True,
                            timeout=120)
    output = result.stdout + result.stderr
    assert "jupyter_tfserve" in output and "enabled" in output
    assert "jupyter_tfserve 0.1.0" in output and "OK" in output
