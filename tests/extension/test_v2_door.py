"""KServe V2 through Jupyter (``tfserve/v2``): for the Jupyter user, and for a share token on its model only."""

from __future__ import annotations

import json

import pytest

from tests.extension.test_management_and_sharing import (  # noqa: F401 - the fixtures, shared
    Teammate,
    jp_server_config,
    load,
    repository,
    started,
)

pytest_plugins = ("pytest_jupyter.jupyter_server",)

INFER = json.dumps({"inputs": [{"name": "x", "shape": [2, 1], "datatype": "FP32", "data": [2.0, 4.0]}]})


@pytest.mark.timeout(300)
async def test_v2_through_jupyter_for_the_owner_and_a_share_token(jp_fetch, jp_serverapp, jp_http_port, jp_base_url):
    owner = await started(jp_fetch, jp_serverapp)
    await load(owner, "ab")
    await load(owner, "other")

    # The Jupyter user: the engine's V2 API under Jupyter's URL, with Jupyter's token.
    ready = await jp_fetch("tfserve", "v2", "health", "ready", raise_error=False)
    assert ready.code == 200
    metadata = json.loads((await jp_fetch("tfserve", "v2", "models", "ab")).body)
    assert metadata["name"] == "ab" and metadata["platform"] == "tensorflow_savedmodel"
    answer = json.loads((await jp_fetch("tfserve", "v2", "models", "ab", "infer", method="POST", body=INFER)).body)
    assert answer["outputs"][0]["data"] == [3.0, 4.0]

    code, created = await owner.api("POST", "tokens", {"model": "ab", "verbs": ["predict", "metadata"]})
    assert code == 201, created
    teammate = Teammate(f"http://127.0.0.1:{jp_http_port}{jp_base_url}", created["token"])

    inferred = await teammate("tfserve/v2/models/ab/infer", "POST", INFER)
    assert inferred.code == 200, inferred.body
    assert json.loads(inferred.body)["outputs"][0]["data"] == [3.0, 4.0]
    assert "Set-Cookie" not in inferred.headers
    assert (await teammate("tfserve/v2/models/ab/versions/1/infer", "POST", INFER)).code == 200
    assert (await teammate("tfserve/v2/models/ab")).code == 200
    assert (await teammate("tfserve/v2/models/ab/ready")).code == 200

    # What it must not reach: another model, the server-wide endpoints, the repository, the management API.
    refused = {
        ("tfserve/v2/models/other/infer", "POST", INFER),
        ("tfserve/v2/models/other", "GET", None),
        ("tfserve/v2/repository/index", "POST", "{}"),
        ("tfserve/v2", "GET", None),
        ("tfserve/v2/health/ready", "GET", None),
        ("tfserve/api/models", "GET", None),
    }
    for path, method, body in refused:
        response = await teammate(path, method, body)
        assert response.code == 403, (path, method, response.code, response.body)
        if path.startswith("tfserve/v2"):  # the engine's refusal, in V2's error format
            assert "error" in json.loads(response.body), path
    other = await teammate("tfserve/v2/models/other/infer", "POST", INFER)
    assert json.loads(other.body) == {"error": "This share token does not grant access to model other"}

    bogus = await teammate("tfserve/v2/models/ab/infer", "POST", INFER, token="tfs_not-a-real-token")
    assert bogus.code == 401
    code, _ = await owner.api("DELETE", f"tokens/{created['id']}")
    assert code == 200
    assert (await teammate("tfserve/v2/models/ab/infer", "POST", INFER)).code == 403
