"""``./dev.sh demo``'s setting: the extension writes and serves half_plus_two by itself."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from tornado.httpclient import HTTPClientError

from tests.helpers.jupyter import extension_config

pytest_plugins = ("pytest_jupyter.jupyter_server",)


@pytest.fixture
def jp_server_config(tmp_path):
    return extension_config(tmp_path / "tfserve-state", demo_model=True)


@pytest.mark.timeout(240)
async def test_the_demo_model_is_written_and_served(jp_fetch, jp_serverapp, tmp_path):
    await jp_serverapp.extension_manager.start_all_extensions()
    deadline = time.monotonic() + 120
    while True:
        try:
            response = await jp_fetch("tfserve", "v1", "models", "half_plus_two:predict", method="POST",
                                      body=json.dumps({"instances": [1.0, 2.0]}))
            break
        except HTTPClientError:
            assert time.monotonic() < deadline, "the demo model was not served within 120 s"
            await asyncio.sleep(0.5)
    assert json.loads(response.body) == {"predictions": [2.5, 3.0]}
    config = (tmp_path / "tfserve-state" / "models.config").read_text()
    assert 'name: "half_plus_two"' in config and str(tmp_path / "tfserve-state" / "models" / "half_plus_two") in config
