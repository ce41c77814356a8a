"""Managing and sharing models through a real Jupyter server with the extension and a real engine."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import pytest
import requests
from tornado.httpclient import AsyncHTTPClient

from tests.helpers.jupyter import JupyterServerProcess, extension_config
from tests.helpers.models import write_tf1_half_plus

pytest_plugins = ("pytest_jupyter.jupyter_server",)


@pytest.fixture
def repository(tmp_path):
    root = tmp_path / "repo"
    write_tf1_half_plus(root / "ab", 1, b=2.0)  # x/2 + 2
    write_tf1_half_plus(root / "other", 1, b=10.0)
    return root


@pytest.fixture
def jp_server_config(tmp_path, repository):
    return extension_config(tmp_path / "tfserve-state", model_repository_root=str(repository))


class Owner:
    """The Jupyter user: jp_fetch carries the server's token."""

    def __init__(self, jp_fetch) -> None:
        self.fetch = jp_fetch

    async def api(self, method: str, path: str, body=None, params=None) -> tuple[int, dict]:
        response = await self.fetch("tfserve", "api", *path.split("/"), method=method, raise_error=False,
                                    params=params,
                                    body=json.dumps(body) if body is not None else
                                    (b"" if method in ("POST", "PUT") else None),
                                    allow_nonstandard_methods=True)
        return response.code, json.loads(response.body)

    async def predict(self, model: str, value: float = 2.0, suffix: str = "") -> tuple[float, int]:
        response = await self.fetch("tfserve", "v1", "models", f"{model}{suffix}:predict", method="POST",
                                    body=json.dumps({"instances": [value]}))
        return json.loads(response.body)["predictions"][0], int(response.headers["X-TFServe-Model-Version"])


class Teammate:
    """A share token's bearer: ``Authorization: Bearer`` and nothing else (no Jupyter token, no cookies)."""

    def __init__(self, base: str, token: str) -> None:
        self.base, self.token, self.client = base, token, AsyncHTTPClient()

    async def __call__(self, path: str, method: str = "GET", body=None, token: str | None = None):
        return await self.client.fetch(self.base + path, method=method, body=body, raise_error=False,
                                       headers={"Authorization": f"Bearer {token or self.token}"},
                                       allow_nonstandard_methods=True)


async def started(jp_fetch, jp_serverapp) -> Owner:
    """Start the extension (pytest-jupyter does not) and wait for its engine; not a fixture, so that it
    runs on the Jupyter server's own event loop."""
    await jp_serverapp.extension_manager.start_all_extensions()
    owner = Owner(jp_fetch)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        code, body = await owner.api("GET", "engine")
        if code == 200 and body["state"] == "running":
            return owner
        await asyncio.sleep(0.2)
    raise AssertionError("the engine did not start")


async def load(owner: Owner, name: str, **extra) -> dict:
    code, body = await owner.api("POST", "models", {"name": name, "base_path": name, "wait_seconds": 60, **extra})
    assert code == 201, body
    return body


@pytest.mark.timeout(300)
async def test_load_swap_split_shadow_and_promote_through_jupyter(jp_fetch, jp_serverapp, repository):
    owner = await started(jp_fetch, jp_serverapp)
    await load(owner, "ab", version_policy={"latest": 2})
    assert await owner.predict("ab") == (3.0, 1)

    write_tf1_half_plus(repository / "ab", 2, b=3.0)  # a new version appears and goes live by itself
    deadline = time.monotonic() + 30
    while await owner.predict("ab") != (4.0, 2):
        assert time.monotonic() < deadline, "version 2 did not go live"
        await asyncio.sleep(0.2)

    code, body = await owner.api("PUT", "models/ab/routing", {"split": {"1": 70, "2": 30}})
    assert code == 200, body
    answers = Counter([await owner.predict("ab") for _ in range(300)])
    assert set(answers) == {(3.0, 1), (4.0, 2)}
    share_of_1 = answers[(3.0, 1)] / 300
    assert 0.62 <= share_of_1 <= 0.78, answers

    code, body = await owner.api("PUT", "models/ab/routing", {"shadow": "1"})
    assert code == 200 and body["routing"]["split"] is None
    for _ in range(20):
        assert await owner.predict("ab") == (4.0, 2)
    deadline = time.monotonic() + 10
    while True:
        code, windows = await owner.api("GET", "models/ab/windows", params={"seconds": 120})
        shadow = windows["routing"]["shadow"]
        if shadow["compared"] + shadow["skipped"] >= 20 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert shadow["compared"] >= 15 and shadow["agreement_rate"] == 0.0, shadow
    assert windows["versions"]["1"]["requests"] >= share_of_1 * 300 - 1
    assert windows["versions"]["2"]["p99_ms"] > 0

    code, body = await owner.api("POST", "models/ab/promote", {"version": 2})
    assert code == 200 and body["labels"] == {"stable": "2"} and body["routing"]["shadow"] is None
    assert await owner.predict("ab", suffix="/labels/stable") == (4.0, 2)
    code, body = await owner.api("POST", "models/ab/promote", {"version": "two"})
    assert code == 400 and "'version' must be a version number" in body["error"]


@pytest.mark.timeout(300)
async def test_a_share_token_reaches_one_model_and_nothing_else(jp_fetch, jp_serverapp, jp_http_port, jp_base_url):
    owner = await started(jp_fetch, jp_serverapp)
    await load(owner, "ab")
    await load(owner, "other")
    code, created = await owner.api("POST", "tokens", {"model": "ab", "verbs": ["predict", "status"]})
    assert code == 201, created
    teammate = Teammate(f"http://127.0.0.1:{jp_http_port}{jp_base_url}", created["token"])

    predict = '{"instances": [2.0]}'
    answer = await teammate("tfserve/v1/models/ab:predict", "POST", predict)
    assert answer.code == 200 and json.loads(answer.body) == {"predictions": [3.0]}
    assert "Set-Cookie" not in answer.headers
    assert (await teammate("tfserve/v1/models/ab")).code == 200

    # Everything else: the exact status for each.
    expected = {
        ("tfserve/v1/models/other:predict", "POST", predict): 403,
        ("tfserve/v1/models/ab/metadata", "GET", None): 403,
        ("tfserve/v1/models/ab:regress", "POST", '{"examples": []}'): 403,
        ("tfserve/v1/models", "GET", None): 403,
        ("tfserve/v1/models/ab:predict", "PUT", predict): 405,
        ("tfserve/v1/models/ab", "DELETE", None): 405,
        ("tfserve/api/models", "GET", None): 403,
        ("tfserve/api/tokens", "POST", '{"model": "ab"}'): 403,
        ("tfserve/api/engine", "GET", None): 403,
        ("api/contents", "GET", None): 403,
        ("api/kernels", "GET", None): 403,
        ("api/kernels", "POST", "{}"): 403,
        ("api/sessions", "GET", None): 403,
        ("api/terminals", "GET", None): 403,
        ("api/terminals", "POST", "{}"): 403,
    }
    for (path, method, body), status in expected.items():
        response = await teammate(path, method, body)
        assert response.code == status, (path, method, response.code, response.body)
        assert "Set-Cookie" not in response.headers, path
    not_ours = await teammate("tfserve/v1/models/other:predict", "POST", predict)
    assert json.loads(not_ours.body) == {"error": "This share token does not grant access to model other"}

    # The same browser may hold the owner's Jupyter login cookie, or a stale one. A share-token request is still
    # the token's alone (never the Jupyter user), and no cookie is set or cleared for it.
    base, client = teammate.base, teammate.client
    login = await client.fetch(base + "api/status",
                               headers={"Authorization": f"token {jp_serverapp.identity_provider.token}"})
    cookie = next(value.split(";")[0] for value in login.headers.get_list("Set-Cookie")
                  if value.startswith("username-"))
    stale = cookie.split("=", 1)[0] + "=2|not-a-valid-cookie"
    for jar in (cookie, stale):
        for path, method, body, status in (("tfserve/v1/models/ab:predict", "POST", predict, 200),
                                           ("tfserve/v1/models", "GET", None, 403),
                                           ("tfserve/v1/models/other:predict", "POST", predict, 403)):
            response = await client.fetch(base + path, method=method, body=body, raise_error=False,
                                          headers={"Authorization": f"Bearer {created['token']}", "Cookie": jar})
            assert response.code == status, (jar == cookie, path, response.code, response.body)
            assert "Set-Cookie" not in response.headers, (jar == cookie, path, response.headers)
    # The cookie alone is the Jupyter user, with Jupyter's XSRF check: a GET passes, a POST without the XSRF token not.
    as_owner = await client.fetch(base + "tfserve/v1/models/ab", headers={"Cookie": cookie}, raise_error=False)
    assert as_owner.code == 200, as_owner.body
    no_xsrf = await client.fetch(base + "tfserve/v1/models/ab:predict", method="POST", body=predict,
                                 headers={"Cookie": cookie}, raise_error=False)
    assert no_xsrf.code == 403 and "_xsrf" in no_xsrf.body.decode(), no_xsrf.body

    code, short = await owner.api("POST", "tokens", {"model": "ab", "expires_in_seconds": 1})
    await asyncio.sleep(1.2)
    expired = await teammate("tfserve/v1/models/ab:predict", "POST", predict, token=short["token"])
    assert expired.code == 401 and json.loads(expired.body) == {"error": "This share token has expired"}

    code, revoked = await owner.api("DELETE", f"tokens/{created['id']}")
    assert code == 200 and revoked["revoked_at"] is not None
    after = await teammate("tfserve/v1/models/ab:predict", "POST", predict)
    assert after.code == 403 and json.loads(after.body) == {"error": "This share token has been revoked"}
    code, listed = await owner.api("GET", "tokens")
    assert all("token" not in entry and "token_hash" not in entry for entry in listed["tokens"])


@pytest.mark.timeout(400)
def test_restarting_jupyter_restores_models_splits_and_tokens_and_tokens_stay_on_their_server(tmp_path, repository):
    write_tf1_half_plus(repository / "ab", 2, b=3.0)
    first = JupyterServerProcess(tmp_path / "state-a", repository, tmp_path / "a.log", tmp_path)
    try:
        first.wait_for_engine()
        api = first.url + "tfserve/api/"
        loaded = first.owner.post(api + "models", json={"name": "ab", "base_path": "ab", "version_policy": "all",
                                                        "wait_seconds": 60}, timeout=90)
        assert loaded.status_code == 201, loaded.text
        assert first.owner.put(api + "models/ab/routing", json={"split": {"1": 50, "2": 50}},
                               timeout=30).status_code == 200
        token = first.owner.post(api + "tokens", json={"model": "ab"}, timeout=30).json()["token"]
    finally:
        first.stop()

    other_user = JupyterServerProcess(tmp_path / "state-b", repository, tmp_path / "b.log", tmp_path)
    try:
        other_user.wait_for_engine()
        response = requests.post(other_user.url + "tfserve/v1/models/ab:predict", json={"instances": [2.0]},
                                 headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert response.status_code == 401 and response.json() == {"error": "Invalid share token"}
    finally:
        other_user.stop()

    again = JupyterServerProcess(tmp_path / "state-a", repository, tmp_path / "a2.log", tmp_path)
    try:
        again.wait_for_engine()
        predict_url = again.url + "tfserve/v1/models/ab:predict"
        bearer = {"Authorization": f"Bearer {token}"}
        again.wait_until(lambda: requests.post(predict_url, json={"instances": [2.0]}, headers=bearer,
                                               timeout=10).status_code == 200, what="ab to be served again")

        def available() -> set[str]:
            described = again.owner.get(again.url + "tfserve/api/models/ab", timeout=30).json()
            assert described["routing"]["split"] == {"1": 50.0, "2": 50.0}
            return {s["version"] for s in described["model_version_status"] if s["state"] == "AVAILABLE"}

        # Versions are restored one after the other: version 1 may answer while version 2 still loads.
        again.wait_until(lambda: available() == {"1", "2"}, what="both versions of ab to be AVAILABLE again")
        versions = Counter(requests.post(predict_url, json={"instances": [2.0]}, headers=bearer, timeout=10)
                           .headers["X-TFServe-Model-Version"] for _ in range(40))
        assert set(versions) == {"1", "2"}, versions
    finally:
        again.stop()
