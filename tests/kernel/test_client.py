"""The Python client against a real Jupyter server with the extension, and against a private engine."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time

import numpy as np
import pytest
import requests

from jupyter_tfserve.kernel import private_engine
from jupyter_tfserve.kernel.client import TFServeError, connect, find_jupyter_server
from jupyter_tfserve.kernel.export import WARMUP_FILE
from tests.helpers.models import write_tf1_half_plus


def small_keras_model(seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,), name="features"), keras.layers.Dense(3, activation="softmax")])


def test_finds_its_jupyter_server_by_parent_pid(jupyter_server, monkeypatch):
    monkeypatch.setenv("JPY_PARENT_PID", str(jupyter_server.process.pid))
    server = find_jupyter_server()
    assert server is not None and server["port"] == jupyter_server.port
    client = connect()
    assert client.connection.kind == "jupyter"
    assert client.engine()["state"] == "running"


def test_no_server_for_an_unknown_parent(jupyter_server, monkeypatch):
    monkeypatch.setenv("JPY_PARENT_PID", "1")
    assert find_jupyter_server() is None


def test_load_predict_status_unload(client, repository):
    described = client.load("hp_client", str(repository / "half_plus_two"), wait_seconds=60)
    assert [s["state"] for s in described["model_version_status"]] == ["AVAILABLE"]
    np.testing.assert_allclose(client.predict("hp_client", [1.0, 2.0]), [2.5, 3.0])
    prediction = client.predict_detailed("hp_client", np.array([4.0], np.float32))
    assert prediction.version == "1" and prediction.outputs.tolist() == [4.0]
    assert client.status("hp_client")["model_version_status"][0]["state"] == "AVAILABLE"
    assert "serving_default" in client.metadata("hp_client")["metadata"]["signature_def"]["signature_def"]
    assert any(model["name"] == "hp_client" for model in client.models())
    client.unload("hp_client")
    assert client.find_model("hp_client") is None


def test_errors_carry_the_servers_message(client, repository):
    with pytest.raises(TFServeError) as unknown:
        client.predict("no_such_model", [1.0])
    assert unknown.value.status == 404 and "no_such_model" in unknown.value.message
    with pytest.raises(TFServeError) as outside:
        client.load("escape", str(repository / ".." / "elsewhere"))
    assert outside.value.status == 403 and ".." in outside.value.message


def test_export_twice_gives_versions_1_and_2_then_canary(client, jupyter_server):
    model = small_keras_model()
    sample = np.zeros((1, 4), np.float32)
    first = client.export(model, "exported", warmup=sample)
    assert first.version == 1
    assert (client.model_repository_root() in first.path) and os.path.isfile(os.path.join(first.path, WARMUP_FILE))
    second = client.export(model, "exported", label="canary")
    assert second.version == 2
    assert second.labels == {"stable": 1, "canary": 2}
    described = client.model("exported")
    assert sorted(s["version"] for s in described["model_version_status"] if s["state"] == "AVAILABLE") == ["1", "2"]
    expected = model.predict(np.ones((2, 4), np.float32), verbose=0)
    np.testing.assert_allclose(client.predict("exported", np.ones((2, 4)), label="canary"), expected, rtol=1e-5)
    assert client.predict_detailed("exported", np.ones((1, 4)), label="stable").version == "1"
    # The endpoint answers curl, as a user would call it.
    answer = subprocess.run(
        ["curl", "-sS", "-H", f"Authorization: token {jupyter_server.token}", "-d", '{"instances": [[1, 1, 1, 1]]}',
         client.predict_url("exported")], capture_output=True, text=True, timeout=60, check=True)
    np.testing.assert_allclose(json.loads(answer.stdout)["predictions"], expected[:1], rtol=1e-5)
    client.unload("exported")


def test_export_refuses_what_it_cannot_serve(client):
    with pytest.raises(TFServeError, match="cannot export a dict"):
        client.export({"not": "a model"}, "bad_export")
    assert client.find_model("bad_export") is None


def test_share_token_from_the_client(client, repository):
    client.load("hp_shared", str(repository / "half_plus_two"), wait_seconds=60)
    record = client.share("hp_shared", verbs=["predict"], expires_in_seconds=600)
    headers = {"Authorization": f"Bearer {record['token']}"}
    answer = requests.post(record["url"], json={"instances": [2.0]}, headers=headers, timeout=30)
    assert answer.status_code == 200 and answer.json() == {"predictions": [3.0]}
    assert any(token["id"] == record["id"] and token["active"] for token in client.tokens())
    client.revoke(record["id"])
    assert requests.post(record["url"], json={"instances": [2.0]}, headers=headers, timeout=30).status_code == 403
    client.unload("hp_shared")


def test_private_engine_serves_and_records_itself_owner_only(private_client, tmp_path):
    assert private_client.connection.kind == "private"
    info_path = private_engine.info_file_path()
    assert stat.S_IMODE(info_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(info_path.parent.stat().st_mode) == 0o700
    result = private_client.export(small_keras_model(), "private_model")
    assert result.version == 1
    assert private_client.predict("private_model", np.ones((1, 4))).shape == (1, 3)
    # Without the secret, the engine's own port refuses.
    assert requests.post(private_client.predict_url("private_model"), json={"instances": [[1, 1, 1, 1]]},
                         timeout=30).status_code == 401
    # A second kernel reuses the same engine.
    again = connect(private=True)
    assert again.connection.api_url == private_client.connection.api_url
    assert again.predict("private_model", np.ones((1, 4))).shape == (1, 3)


def test_private_engine_comes_back_after_it_dies(private_client):
    private_client.export(small_keras_model(), "survivor")
    pid = private_engine.read_info().pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and private_engine._alive(pid):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            break
        time.sleep(0.05)
    # The next call notices, starts the engine again with the same state, and goes through.
    described = private_client.load("survivor", str(private_engine.default_state_dir() / "models" / "survivor"),
                                    replace=True, version_policy={"latest": 2}, wait_seconds=60)
    assert private_engine.read_info().pid != pid
    assert any(s["state"] == "AVAILABLE" for s in described["model_version_status"])
    assert private_client.predict("survivor", np.ones((1, 4))).shape == (1, 3)


def test_stale_and_unsafe_entries_are_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    path = private_engine.info_file_path()
    path.parent.mkdir(parents=True)
    stale = {"pid": 999999, "rest_port": 1, "grpc_port": 2, "management_port": 3, "secret": "x",
             "state_dir": str(tmp_path), "model_repository_root": str(tmp_path), "started_at": 0.0}
    path.write_text(json.dumps(stale))
    path.chmod(0o600)
    assert private_engine.find_private_engine() is None
    assert not path.exists(), "a stale entry is removed"
    path.write_text(json.dumps({**stale, "pid": os.getpid()}))
    path.chmod(0o644)
    assert private_engine.read_info() is None, "an entry other users can read is ignored"


def test_private_engine_versions_follow_the_repository(private_client):
    """A version copied in by hand goes live by itself (the engine polls), as with TF Serving."""
    base = private_engine.default_state_dir() / "models" / "by_hand"
    write_tf1_half_plus(base, 1)
    private_client.load("by_hand", str(base), version_policy="all", wait_seconds=60)
    write_tf1_half_plus(base, 2, b=3.0)
    private_client.poll("by_hand")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = {s["version"]: s["state"] for s in private_client.model("by_hand")["model_version_status"]}
        if states.get("2") == "AVAILABLE":
            break
        time.sleep(0.1)
    assert private_client.predict("by_hand", [2.0], version=2).tolist() == [4.0]
