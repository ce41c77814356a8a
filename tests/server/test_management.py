"""The engine's management API, A/B routing, shadow traffic and share tokens, in the real process."""

from __future__ import annotations

import os
import time
from collections import Counter

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.helpers.models import write_tf1_half_plus
from tests.helpers.server import free_port

SECRET = "test-engine-secret"
OWNER = {"X-TFServe-Engine-Secret": SECRET}


class Managed:
    """An engine started as the Jupyter extension starts it, with helpers for both of its ports."""

    def __init__(self, server, management_port: int) -> None:
        self.server = server
        self.api = f"http://127.0.0.1:{management_port}/api"
        server.session.headers.update(OWNER)  # for the helper's status polls; tests below send their own

    def call(self, method: str, path: str, body=None, headers=None) -> requests.Response:
        return requests.request(method, self.api + path, json=body, headers=OWNER if headers is None else headers,
                                timeout=60)

    def predict(self, model: str, value: float = 2.0, headers=None, suffix: str = "") -> requests.Response:
        return self.rest("POST", f"/v1/models/{model}{suffix}:predict", {"instances": [value]},
                         OWNER if headers is None else headers)

    def rest(self, method: str, path: str, body=None, headers=None) -> requests.Response:
        """A request to the REST port with exactly these credentials (none by default)."""
        return requests.request(method, self.server.url + path, json=body, headers=headers or {}, timeout=60)


@pytest.fixture
def repository(tmp_path):
    root = tmp_path / "repo"
    write_tf1_half_plus(root / "ab", 1, b=2.0)   # predicts x/2 + 2
    write_tf1_half_plus(root / "ab", 2, b=3.0)   # predicts x/2 + 3
    write_tf1_half_plus(root / "other", 1, b=10.0)
    return root


@pytest.fixture
def start_managed(tmp_path, repository, start_server):
    def start(*extra: str) -> Managed:
        port = free_port()
        config = tmp_path / "models.config"
        if not config.exists():
            config.write_text("model_config_list {\n}\n")
        server = start_server(
            "--require_auth", f"--management_port={port}", f"--state_db={tmp_path / 'state.sqlite'}",
            f"--model_repository_root={repository}", f"--model_config_file={config}",
            "--model_config_file_poll_wait_seconds=1", *extra,
            env={"TFSERVE_ENGINE_SECRET": SECRET},
        )
        return Managed(server, port)

    return start


def load(managed: Managed, name: str, policy="all", **extra) -> dict:
    response = managed.call("POST", "/models", {"name": name, "base_path": name, "version_policy": policy,
                                                "wait_seconds": 60, **extra})
    assert response.status_code == 201, response.text
    return response.json()


def versions_answering(managed: Managed, count: int, headers=None) -> Counter:
    seen = Counter()
    for _ in range(count):
        response = managed.predict("ab", headers=headers)
        assert response.status_code == 200, response.text
        version = int(response.headers["X-TFServe-Model-Version"])
        assert response.json()["predictions"] == [{1: 3.0, 2: 4.0}[version]]
        seen[version] += 1
    return seen


def test_load_predict_and_the_clear_errors_of_the_management_api(start_managed, repository):
    managed = start_managed()
    described = load(managed, "ab")
    assert described["base_path"] == str(repository / "ab")
    assert {s["version"]: s["state"] for s in described["model_version_status"]} == {"2": "AVAILABLE",
                                                                                       "1": "AVAILABLE"}
    assert managed.predict("ab").json() == {"predictions": [4.0]}
    listed = managed.call("GET", "/models").json()["models"]
    assert [model["name"] for model in listed] == ["ab"]

    duplicate = managed.call("POST", "/models", {"name": "ab", "base_path": "ab"})
    assert duplicate.status_code == 409 and "replace" in duplicate.json()["error"]
    cases = [
        ({"name": "bad name!", "base_path": "ab"}, 400, "'name' must be"),
        ({"name": "x", "base_path": "ab", "version_policy": {"latest": 0}}, 400, "positive count"),
        ({"name": "x", "base_path": "ab", "version_policy": "newest"}, 400, "version_policy must be"),
        ({"name": "x", "base_path": "ab", "colour": "red"}, 400, "unknown field(s) colour"),
        ({"name": "x", "base_path": "ab", "labels": {"9lives": 1}}, 400, "must start with a letter"),
        ({"name": "x"}, 400, "'base_path' must be a non-empty string"),
    ]
    for body, status, message in cases:
        response = managed.call("POST", "/models", body)
        assert response.status_code == status, (body, response.text)
        assert message in response.json()["error"], (body, response.text)
    malformed = requests.post(managed.api + "/models", data="{not json", headers=OWNER, timeout=30)
    assert malformed.status_code == 400 and "not valid JSON" in malformed.json()["error"]
    missing = managed.call("DELETE", "/models/nope")
    assert missing.status_code == 404 and missing.json() == {"error": "Model nope is not served"}
    assert managed.call("GET", "/nothing/here").status_code == 404
    # A model whose versions all fail to load is reported, not waited on forever.
    broken = repository / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    failed = managed.call("POST", "/models", {"name": "broken", "base_path": "broken", "wait_seconds": 30})
    assert failed.status_code == 400 and "has no version that loads" in failed.json()["error"]
    assert managed.predict("ab").json() == {"predictions": [4.0]}  # everything else still served


def test_model_paths_outside_the_repository_are_refused(start_managed, repository, tmp_path):
    outside = tmp_path / "outside"
    write_tf1_half_plus(outside / "m", 1)
    (repository / "escape").symlink_to(outside / "m")
    managed = start_managed(f"--allowed_model_paths={tmp_path / 'allowed'}")
    refused = [
        "../outside/m",
        "ab/../../outside/m",
        str(outside / "m"),
        "escape",
        "/etc",
    ]
    for base_path in refused:
        response = managed.call("POST", "/models", {"name": "sneaky", "base_path": base_path})
        assert response.status_code == 403, (base_path, response.text)
    assert "outside the model repository" in managed.call(
        "POST", "/models", {"name": "sneaky", "base_path": "escape"}).json()["error"]
    assert managed.call("GET", "/models").json()["models"] == []
    write_tf1_half_plus(tmp_path / "allowed" / "m", 1)
    allowed = managed.call("POST", "/models", {"name": "allowed", "base_path": str(tmp_path / "allowed" / "m"),
                                               "wait_seconds": 60})
    assert allowed.status_code == 201, allowed.text


def test_the_management_api_and_the_rest_port_need_credentials(start_managed):
    managed = start_managed()
    load(managed, "ab")
    assert managed.call("GET", "/models", headers={}).status_code == 401
    assert managed.call("GET", "/models", headers={"X-TFServe-Engine-Secret": "guess"}).status_code == 401
    denied = managed.predict("ab", headers={})
    assert denied.status_code == 401 and "Authentication required" in denied.json()["error"]
    for path in ("/v1/models", "/v1/models/ab", "/v1/models/ab/metadata", "/readyz"):
        assert managed.rest("GET", path).status_code == 401, path
    assert managed.rest("GET", "/healthz").status_code == 200  # liveness reveals nothing


def test_a_split_divides_traffic_and_a_route_key_is_sticky(start_managed):
    managed = start_managed()
    load(managed, "ab")
    response = managed.call("PUT", "/models/ab/routing", {"split": {"1": 80, "2": 20}})
    assert response.status_code == 200, response.text
    seen = versions_answering(managed, 400)
    assert 0.72 <= seen[1] / 400 <= 0.88, seen
    routing = managed.call("GET", "/models/ab").json()["routing"]
    assert routing["split"] == {"1": 80.0, "2": 20.0}
    assert routing["arm_requests"] == {"1": seen[1], "2": seen[2]}
    for key in ("alice", "bob", "carol", "dave"):
        sticky = versions_answering(managed, 15, headers={**OWNER, "X-TFServe-Route-Key": key})
        assert len(sticky) == 1, (key, sticky)
    # Requests that name a version or label are never rerouted.
    for _ in range(20):
        assert managed.predict("ab", suffix="/versions/2").headers["X-TFServe-Model-Version"] == "2"
    bad = [({"split": {"1": -1}}, "must be a number >= 0"), ({"split": {"7": 1}}, "Version 7 of model ab"),
           ({"split": {"canary": 1}}, "has no label 'canary'"), ({"split": {"1": 0}}, "must not all be zero")]
    for body, message in bad:
        refused = managed.call("PUT", "/models/ab/routing", body)
        assert refused.status_code == 400 and message in refused.json()["error"], refused.text
    assert managed.call("DELETE", "/models/ab/routing").json()["routing"]["split"] is None
    assert versions_answering(managed, 20) == Counter({2: 20})


def test_shadow_traffic_is_compared_never_returned_and_promote_ends_the_experiment(start_managed):
    managed = start_managed()
    load(managed, "ab")
    assert managed.call("PUT", "/models/ab/labels", {"labels": {"stable": 2}}).status_code == 200
    assert managed.call("PUT", "/models/ab/routing", {"shadow": "1"}).status_code == 200
    assert versions_answering(managed, 30) == Counter({2: 30})  # every answer is the primary's
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        shadow = managed.call("GET", "/models/ab/windows?seconds=60").json()["routing"]["shadow"]
        if shadow["compared"] + shadow["skipped"] >= 30:
            break
        time.sleep(0.1)
    assert shadow["compared"] >= 20 and shadow["errors"] == 0, shadow
    assert shadow["agreement_rate"] == 0.0 and shadow["max_abs_difference"] == pytest.approx(1.0)
    assert sum(shadow["difference_histogram"]["counts"]) == shadow["compared"]
    windows = managed.call("GET", "/models/ab/windows?seconds=60").json()["versions"]
    assert windows["2"]["requests"] == 30 and windows["2"]["p50_ms"] > 0
    assert windows["1 shadow"]["requests"] == shadow["compared"]

    promoted = managed.call("POST", "/models/ab/promote", {"version": 1}).json()
    assert promoted["labels"] == {"stable": "1"}
    assert promoted["routing"]["split"] is None and promoted["routing"]["shadow"] is None
    assert managed.predict("ab", suffix="/labels/stable").json() == {"predictions": [3.0]}
    assert managed.call("POST", "/models/ab/promote", {"version": 9}).status_code == 400


def test_batching_and_version_unloads_through_the_management_api(start_managed):
    managed = start_managed()
    load(managed, "ab")
    response = managed.call("PUT", "/models/ab/batching", {"max_batch_size": 8, "batch_timeout_micros": 500})
    assert response.status_code == 200, response.text
    assert response.json()["batching"]["max_batch_size"] == 8
    assert managed.predict("ab").json() == {"predictions": [4.0]}
    refused = managed.call("PUT", "/models/ab/batching", {"max_batch_size": 0})
    assert refused.status_code == 400 and "max_batch_size must be positive" in refused.json()["error"]
    assert managed.call("PUT", "/models/ab/batching", {"enabled": False}).json()["batching"] is None
    unloaded = managed.call("DELETE", "/models/ab/versions/2")
    assert unloaded.status_code == 200, unloaded.text
    managed.server.wait_for_versions("ab", {1})
    assert managed.predict("ab").json() == {"predictions": [3.0]}
    last = managed.call("DELETE", "/models/ab/versions/1")
    assert last.status_code == 400 and "unload the model instead" in last.json()["error"]


def test_share_tokens_grant_one_model_and_chosen_verbs_until_expired_or_revoked(start_managed):
    managed = start_managed()
    load(managed, "ab")
    load(managed, "other")
    created = managed.call("POST", "/tokens", {"model": "ab", "verbs": ["predict", "status"]})
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert managed.predict("ab", headers=bearer).json() == {"predictions": [4.0]}
    assert managed.rest("GET", "/v1/models/ab", headers=bearer).status_code == 200
    forbidden = {
        "/v1/models/other:predict": "POST", "/v1/models/ab/metadata": "GET", "/v1/models/ab:classify": "POST",
        "/v1/models": "GET", "/readyz": "GET",
    }
    for path, method in forbidden.items():
        response = managed.rest(method, path, {"examples": [{"x": 1.0}]}, bearer)
        assert response.status_code == 403, (path, response.text)
        assert "error" in response.json()
    assert managed.call("GET", "/tokens", headers=bearer).status_code == 401  # never the management API
    listed = managed.call("GET", "/tokens").json()["tokens"]
    assert [t["id"] for t in listed] == [created.json()["id"]] and "token" not in listed[0]
    assert "token_hash" not in listed[0] and listed[0]["active"] is True

    forged = managed.predict("ab", headers={"Authorization": f"Bearer {token[:-2]}xx"})
    assert forged.status_code == 401 and forged.json() == {"error": "Invalid share token"}
    revoked = managed.call("DELETE", f"/tokens/{created.json()['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    after = managed.predict("ab", headers=bearer)
    assert after.status_code == 403 and after.json() == {"error": "This share token has been revoked"}

    short = managed.call("POST", "/tokens", {"model": "ab", "expires_in_seconds": 1}).json()["token"]
    assert managed.predict("ab", headers={"Authorization": f"Bearer {short}"}).status_code == 200
    time.sleep(1.2)
    expired = managed.predict("ab", headers={"Authorization": f"Bearer {short}"})
    assert expired.status_code == 401 and expired.json() == {"error": "This share token has expired"}
    for body, message in (({"model": "nope"}, "is not served"), ({"model": "ab", "verbs": ["delete"]}, "subset"),
                          ({"model": "ab", "expires_in_seconds": -5}, "between 1 and")):
        response = managed.call("POST", "/tokens", body)
        assert response.status_code in (400, 404) and message in response.json()["error"], response.text


def test_share_tokens_and_the_engine_secret_over_grpc(start_managed):
    managed = start_managed()
    load(managed, "ab")
    load(managed, "other")
    token = managed.call("POST", "/tokens", {"model": "ab"}).json()["token"]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ab"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([2.0], np.float32)))
    with grpc.insecure_channel(managed.server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=30, metadata=[("authorization", f"Bearer {token}")])
        assert tf.make_ndarray(response.outputs["y"]).tolist() == [4.0]
        owner = stub.Predict(request, timeout=30, metadata=[("x-tfserve-engine-secret", SECRET)])
        assert owner.model_spec.version.value == 2
        with pytest.raises(grpc.RpcError) as anonymous:
            stub.Predict(request, timeout=30)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        request.model_spec.name = "other"
        with pytest.raises(grpc.RpcError) as other:
            stub.Predict(request, timeout=30, metadata=[("authorization", f"Bearer {token}")])
        assert other.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_models_routing_batching_and_tokens_survive_an_engine_restart(start_managed, tmp_path):
    managed = start_managed()
    load(managed, "ab", labels={})
    managed.call("PUT", "/models/ab/labels", {"labels": {"stable": 1, "canary": 2}})
    managed.call("PUT", "/models/ab/routing", {"split": {"stable": 50, "canary": 50}, "shadow": "1"})
    managed.call("PUT", "/models/ab/batching", {"max_batch_size": 4})
    token = managed.call("POST", "/tokens", {"model": "ab"}).json()["token"]
    revoked = managed.call("POST", "/tokens", {"model": "ab"}).json()
    managed.call("DELETE", f"/tokens/{revoked['id']}")
    managed.server.stop()
    assert 'version_labels {\n      key: "canary"' in (tmp_path / "models.config").read_text()
    assert oct(os.stat(tmp_path / "state.sqlite").st_mode & 0o777) == "0o600"

    again = start_managed()
    again.server.wait_for_versions("ab", {1, 2})
    described = again.call("GET", "/models/ab").json()
    assert described["labels"] == {"canary": "2", "stable": "1"}
    assert described["routing"]["split"] == {"stable": 50.0, "canary": 50.0}
    assert described["routing"]["shadow"]["target"] == "1"
    assert described["batching"]["max_batch_size"] == 4
    assert set(versions_answering(again, 60)) == {1, 2}
    assert again.predict("ab", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert again.predict("ab", headers={"Authorization": f"Bearer {revoked['token']}"}).status_code == 403
