"""``tfserve/api/deploy``: the Deploy dialog asks a real Jupyter server for the running engine's manifests."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import yaml
from tornado.httpclient import AsyncHTTPClient

from tests.helpers.jupyter import extension_config
from tests.helpers.models import write_tf1_half_plus

pytest_plugins = ("pytest_jupyter.jupyter_server",)


@pytest.fixture
def repository(tmp_path):
    root = tmp_path / "repo"
    write_tf1_half_plus(root / "ab", 1, b=2.0)
    write_tf1_half_plus(root / "ab", 2, b=3.0)
    return root


@pytest.fixture
def jp_server_config(tmp_path, repository):
    return extension_config(tmp_path / "tfserve-state", model_repository_root=str(repository))


async def deploy(jp_fetch, **query: str) -> tuple[int, str, str]:
    """(status, Content-Type, body) of ``GET tfserve/api/deploy?...`` as the Jupyter user."""
    response = await jp_fetch("tfserve", "api", "deploy", params=query, raise_error=False)
    return response.code, response.headers.get("Content-Type", ""), response.body.decode()


def documents(text: str) -> dict[str, dict]:
    """The YAML's documents by the file name in the comment that heads each one."""
    found = {}
    for part in text.split("---\n")[1:]:
        name = part.splitlines()[0].removeprefix("# ")
        found[name] = yaml.safe_load(part)
    return found


async def serve_ab_with_a_split(jp_fetch, jp_serverapp) -> None:
    """Load ``ab`` (both versions) through the management API and split it 70/30, as a notebook would."""
    await jp_serverapp.extension_manager.start_all_extensions()
    body = json.dumps({"name": "ab", "base_path": "ab", "version_policy": {"specific": [1, 2]}})
    deadline = time.monotonic() + 120
    while True:  # the engine starts with the server; the management API answers once it runs
        response = await jp_fetch("tfserve", "api", "models", method="POST", body=body, raise_error=False)
        if response.code in (200, 201):
            break
        assert time.monotonic() < deadline, response.body
        await asyncio.sleep(0.5)
    while True:
        response = await jp_fetch("tfserve", "api", "models", "ab", "routing", method="PUT", raise_error=False,
                                  body=json.dumps({"split": {"1": 70, "2": 30}}))
        if response.code == 200:
            return
        assert time.monotonic() < deadline, response.body
        await asyncio.sleep(0.5)


@pytest.mark.timeout(240)
async def test_the_deploy_endpoint_renders_the_running_config_for_each_target(jp_fetch, jp_serverapp, repository):
    await serve_ab_with_a_split(jp_fetch, jp_serverapp)

    code, kind, text = await deploy(jp_fetch, target="kubernetes", storage_uri="s3://team/models")
    assert code == 200, text
    assert kind.startswith("application/yaml")
    files = documents(text)
    assert {doc["kind"] for doc in files.values()} >= {"ConfigMap", "Deployment", "Service",
                                                       "HorizontalPodAutoscaler"}
    config_map = next(doc for doc in files.values() if doc["kind"] == "ConfigMap")
    models_config = "".join(config_map["data"].values())
    assert 'name: "ab"' in models_config and "s3://team/models/ab" in models_config
    assert str(repository) not in text, "the local base path is rewritten to the storage URI"
    assert "# note: model ab: the split version 1: 70%, version 2: 30% is not carried over" in text

    code, _kind, text = await deploy(jp_fetch, target="kserve", storage_uri="gs://bucket/models/")
    assert code == 200, text
    files = documents(text)
    assert set(files) == {"ab.yaml", "ab-canary.yaml"}, "the running 70/30 split becomes a canary"
    assert files["ab.yaml"]["spec"]["predictor"]["model"]["storageUri"] == "gs://bucket/models/ab-v1"
    assert files["ab-canary.yaml"]["spec"]["predictor"]["canaryTrafficPercent"] == 30

    code, _kind, text = await deploy(jp_fetch, target="kserve-runtime", storage_uri="s3://b/m", image="me/eng:1",
                                     model="ab")
    assert code == 200, text
    runtime = documents(text)["servingruntime.yaml"]
    assert runtime["kind"] == "ServingRuntime"
    assert runtime["spec"]["containers"][0]["image"] == "me/eng:1"


@pytest.mark.timeout(240)
async def test_bad_input_is_one_line_and_only_the_jupyter_user_may_ask(
        jp_fetch, jp_serverapp, jp_http_port, jp_base_url):
    await serve_ab_with_a_split(jp_fetch, jp_serverapp)
    for query, message in (
            ({"target": "kubernetes"}, "base path"),  # local, no storage URI: a cluster cannot read it
            ({"target": "helm", "storage_uri": "s3://b/m"}, "unknown --target 'helm'"),
            ({"target": "kserve", "storage_uri": "s3://b/m", "model": "nope"}, "model nope is not served")):
        code, kind, text = await deploy(jp_fetch, **query)
        assert code == 400, (query, text)
        assert kind.startswith("application/json")
        error = json.loads(text)["error"]
        assert message in error and "\n" not in error, error
    code, _kind, text = await deploy(jp_fetch, target="kubernetes")
    assert "is local; a cluster cannot read it: give --storage_uri" in json.loads(text)["error"]

    url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}tfserve/api/deploy?target=kserve&storage_uri=s3://b/m"
    client = AsyncHTTPClient()
    for headers in ({}, {"Authorization": "token not-the-token"}, {"Authorization": "Bearer tfs_not_a_token"}):
        response = await client.fetch(url, headers=headers, raise_error=False)
        assert response.code == 403, (headers, response.code)
        assert b"kind:" not in response.body
