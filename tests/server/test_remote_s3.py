"""The real engine serving from a real S3 server (moto on 127.0.0.1): new versions go live under load."""

from __future__ import annotations

import pytest
import requests

from jupyter_tfserve.engine.errors import ServingError
from jupyter_tfserve.server.control import PathPolicy
from tests.helpers.models import write_tf2_half_plus
from tests.helpers.remote import (
    cached_versions,
    moto_s3,
    predict,
    version_status,
    versions_seen_while,
    wait_for_error,
)
from tests.helpers.server import free_port, write_models_config

pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
pytest.importorskip("boto3", reason="boto3 comes with moto[server]")


@pytest.fixture
def store(tmp_path):
    with moto_s3(tmp_path / "cache") as store:
        yield store


def test_a_model_in_s3_is_served_and_a_new_version_goes_live_with_no_failed_request(tmp_path, store, start_server):
    store.make_bucket("models")
    write_tf2_half_plus(tmp_path / "local", 1, b=2.0)
    store.upload(tmp_path / "local" / "1", "models/half/1")
    server = start_server("--model_base_path=s3://models/half", "--model_name=half", env=store.env)
    server.wait_for_versions("half", {1})
    assert predict(server, "half") == (3.0, 1)

    write_tf2_half_plus(tmp_path / "local", 2, b=10.0)
    seen, failures = versions_seen_while(
        server, "half", lambda: store.upload(tmp_path / "local" / "2", "models/half/2"), 2)
    assert failures == []
    assert seen == {1, 2}
    assert predict(server, "half") == (11.0, 2)
    cached = cached_versions(tmp_path / "cache")
    assert "2" in cached and not [name for name in cached if name.startswith(".tmp")]


def test_a_missing_bucket_is_that_models_status_and_the_other_model_keeps_serving(tmp_path, store, start_server):
    write_tf2_half_plus(tmp_path / "local", 1, b=2.0)
    config = write_models_config(tmp_path / "models.config",
                                 {"local": tmp_path / "local", "lost": "s3://no-such-bucket/lost"})
    server = start_server(f"--model_config_file={config}", env=store.env)
    server.wait_for_versions("local", {1})

    status = wait_for_error(server, "lost", "no-such-bucket")
    assert status["state"] == "END" and status["status"]["error_code"] == "UNAVAILABLE"
    assert "cannot read base path s3://no-such-bucket/lost" in status["status"]["error_message"]
    assert predict(server, "local") == (3.0, 1)
    assert server.process.poll() is None


def test_a_version_over_max_remote_version_bytes_is_refused_in_status_and_the_last_one_keeps_serving(
        tmp_path, store, start_server):
    store.make_bucket("sized")
    write_tf2_half_plus(tmp_path / "local", 1, b=2.0)
    store.upload(tmp_path / "local" / "1", "sized/half/1")
    size = sum(p.stat().st_size for p in (tmp_path / "local" / "1").rglob("*") if p.is_file())
    limit = size + 4096
    server = start_server("--model_base_path=s3://sized/half", "--model_name=half",
                          f"--max_remote_version_bytes={limit}", env=store.env)
    server.wait_for_versions("half", {1})
    write_tf2_half_plus(tmp_path / "local", 2, b=10.0)
    (tmp_path / "local" / "2" / "assets" / "padding.bin").write_bytes(b"\0" * 65536)  # 64 KiB over the bound
    store.upload(tmp_path / "local" / "2", "sized/half/2")
    status = wait_for_error(server, "half", "--max_remote_version_bytes", version=2)
    big = sum(p.stat().st_size for p in (tmp_path / "local" / "2").rglob("*") if p.is_file())
    assert status["state"] == "END" and status["status"]["error_code"] == "RESOURCE_EXHAUSTED"
    assert f"is {big} bytes, more than --max_remote_version_bytes={limit}" in status["status"]["error_message"]
    assert version_status(server, "half", 1)["state"] == "AVAILABLE"
    assert predict(server, "half") == (3.0, 1)
    assert cached_versions(tmp_path / "cache") == ["1"], "nothing of version 2 was copied"


def test_remote_base_paths_are_accepted_only_under_an_allowed_prefix(tmp_path):
    policy = PathPolicy(str(tmp_path), ["s3://team/models"])
    assert policy.resolve("s3://team/models/half/") == "s3://team/models/half"
    for refused in ("s3://team/modelsX/half", "s3://other/models/half", "s3://team/models/../secret",
                    "gs://team/models/half", "s3://team/models//half", "s3://team/models/${HOME}"):
        with pytest.raises(ServingError) as caught:
            policy.resolve(refused)
        assert caught.value.code.name == "PERMISSION_DENIED", refused
    with pytest.raises(ServingError, match="allowed remote prefixes"):
        PathPolicy(str(tmp_path), []).resolve("s3://team/models/half")
    assert policy.resolve(str(tmp_path / "m")) == str(tmp_path / "m")


def test_the_management_api_loads_from_an_allowed_bucket_prefix_only(tmp_path, store, start_server):
    store.make_bucket("team")
    write_tf2_half_plus(tmp_path / "local", 1, b=2.0)
    store.upload(tmp_path / "local" / "1", "team/models/half/1")
    management = free_port()
    server = start_server("--require_auth", f"--management_port={management}",
                          f"--model_repository_root={tmp_path / 'repo'}", "--allowed_model_path=s3://team/models",
                          env={**store.env, "TFSERVE_ENGINE_SECRET": "secret"})
    owner = {"X-TFServe-Engine-Secret": "secret"}
    api = f"http://127.0.0.1:{management}/api/models"
    refused = requests.post(api, json={"name": "other", "base_path": "s3://team/elsewhere/half"}, headers=owner,
                            timeout=60)
    assert refused.status_code == 403, refused.text
    assert "outside the allowed remote prefixes" in refused.text
    loaded = requests.post(api, json={"name": "half", "base_path": "s3://team/models/half"}, headers=owner,
                           timeout=120)
    assert loaded.status_code == 201, loaded.text
    server.session.headers.update(owner)
    server.wait_for_versions("half", {1})
    assert predict(server, "half") == (3.0, 1)
