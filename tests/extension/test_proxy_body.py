"""The Jupyter proxy reads no request body before the request's credential is known to be good.

The attack: anyone who can reach the Jupyter server sends ``Authorization: Bearer
tfs_<anything>`` (or nothing) with a huge ``Content-Length``. Before, Tornado read the
whole body (up to Jupyter's limit) into memory before the handler ran, and the proxy
then forwarded it to the engine. Now the answer comes from the headers alone: the
test sends headers only and gets its refusal without sending a byte of body.

The server runs with ``allow_unauthenticated_access=False`` (JupyterHub's setting),
so this also shows that share-token requests, which carry no Jupyter identity, still
reach the engine there.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.helpers.jupyter import extension_config

pytest_plugins = ("pytest_jupyter.jupyter_server",)

HUGE = 64 * 1024 * 1024  # under Jupyter's own limit (512 MiB; 100 MB in the test server)


@pytest.fixture
def jp_server_config(tmp_path, model_zoo):
    state = tmp_path / "tfserve-state"
    state.mkdir()
    zoo = model_zoo["tf2_half_plus_two"]
    (state / "models.config").write_text(
        f'model_config_list {{ config {{ name: "half" base_path: "{zoo}" }} '
        f'config {{ name: "other" base_path: "{zoo}" }} }}'
    )
    return extension_config(state, {"allow_unauthenticated_access": False}, max_request_body_bytes=1024 * 1024)


async def _started(jp_fetch, jp_serverapp) -> None:
    await jp_serverapp.extension_manager.start_all_extensions()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        response = await jp_fetch("tfserve", "v1", "models", "half:predict", method="POST", raise_error=False,
                                  body=json.dumps({"instances": [2.0]}))
        if response.code == 200:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the engine did not serve half")


async def _headers_only(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict, float]:
    """POST ``path`` with a huge Content-Length and no body; (status, JSON answer, seconds taken)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json",
                 f"Content-Length: {HUGE}", *(f"{k}: {v}" for k, v in headers.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        body = await asyncio.wait_for(reader.readexactly(length), 20)
        return status, json.loads(body), time.monotonic() - started
    finally:
        writer.close()


@pytest.mark.timeout(300)
async def test_refusals_come_before_the_body_is_read(jp_fetch, jp_serverapp, jp_base_url, jp_auth_header,
                                                     jp_http_port):
    await _started(jp_fetch, jp_serverapp)
    port = jp_http_port
    predict = f"{jp_base_url}tfserve/v1/models/half:predict"

    created = await jp_fetch("tfserve", "api", "tokens", method="POST",
                             body=json.dumps({"model": "half", "verbs": ["predict"]}))
    token = json.loads(created.body)["token"]

    # A made-up share token: the engine's own answer, from the headers alone.
    status, answer, took = await _headers_only(port, predict, {"Authorization": "Bearer tfs_0123abcd_madeup"})
    assert (status, answer) == (401, {"error": "Invalid share token"}) and took < 10
    # A good token, on a model or a verb it does not grant.
    status, answer, _ = await _headers_only(port, f"{jp_base_url}tfserve/v1/models/other:predict",
                                            {"Authorization": f"Bearer {token}"})
    assert status == 403 and "other" in answer["error"]
    status, answer, _ = await _headers_only(port, f"{jp_base_url}tfserve/v1/models/half:classify",
                                            {"Authorization": f"Bearer {token}"})
    assert status == 403 and "classify" in answer["error"]
    # No credential at all.
    status, _, _ = await _headers_only(port, predict, {})
    assert status == 403
    # The Jupyter user, with a body larger than the engine takes: 413 before it is read.
    status, answer, _ = await _headers_only(port, predict, jp_auth_header)
    assert status == 413 and "limit" in answer["error"]

    # The good token where it is good: its body is read and answered.
    answered = await jp_fetch("tfserve", "v1", "models", "half:predict", method="POST", headers={
        "Authorization": f"Bearer {token}"}, body=json.dumps({"instances": [2.0]}))
    assert json.loads(answered.body) == {"predictions": [3.0]}
    status_answer = await jp_fetch("tfserve", "v1", "models", "half", raise_error=False,
                                   headers={"Authorization": f"Bearer {token}"})
    assert status_answer.code == 403, "a GET (no body) goes straight to the engine, which checks the verb"

    # Revoked: refused (the engine checks every request itself, whatever the proxy remembers).
    token_id = json.loads(created.body)["id"]
    await jp_fetch("tfserve", "api", "tokens", token_id, method="DELETE")
    refused = await jp_fetch("tfserve", "v1", "models", "half:predict", method="POST", raise_error=False,
                             headers={"Authorization": f"Bearer {token}"}, body=json.dumps({"instances": [2.0]}))
    assert refused.code == 403
