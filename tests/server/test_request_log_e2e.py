"""Request logging in the real engine process: turned on through the management API, REST and gRPC logged."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from tests.engine.test_request_log import read_logs
from tests.helpers.models import write_tf1_half_plus
from tests.helpers.server import free_port

SECRET = "test-engine-secret"
OWNER = {"X-TFServe-Engine-Secret": SECRET}


def test_logging_set_from_the_management_api_records_rest_and_grpc(tmp_path, start_server):
    repository = tmp_path / "repo"
    write_tf1_half_plus(repository / "ab", 1, b=2.0)
    config = tmp_path / "state" / "models.config"
    config.parent.mkdir()
    config.write_text("model_config_list {\n}\n")
    port = free_port()
    server = start_server(
        "--require_auth", f"--management_port={port}", f"--model_repository_root={repository}",
        f"--model_config_file={config}", env={"TFSERVE_ENGINE_SECRET": SECRET},
    )
    api = f"http://127.0.0.1:{port}/api"
    loaded = requests.post(api + "/models", json={"name": "ab", "base_path": "ab", "wait_seconds": 60},
                           headers=OWNER, timeout=60)
    assert loaded.status_code == 201, loaded.text
    bad = requests.put(api + "/models/ab/logging", json={"sampling_rate": 2}, headers=OWNER, timeout=30)
    assert bad.status_code == 400 and "sampling_rate" in bad.text

    on = requests.put(api + "/models/ab/logging", json={"sampling_rate": 1.0}, headers=OWNER, timeout=30)
    assert on.status_code == 200, on.text
    assert on.json()["logging"]["sampling_rate"] == 1.0
    assert "logging_config" in config.read_text()  # kept in the config file, in TF Serving's own form
    default_prefix = config.parent / "request_logs" / "ab" / "ab"

    for i in range(10):
        response = server.post("/v1/models/ab:predict", {"instances": [[float(i)]]}, headers=OWNER)
        assert response.status_code == 200, response.text
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc_target))
    for i in range(10, 15):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "ab"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[float(i)]], np.float32)))
        stub.Predict(request, timeout=30, metadata=[(k.lower(), v) for k, v in OWNER.items()])

    # A request log is a file the engine writes: only under its state directory or an allowed folder.
    climbing = config.parent / "request_logs" / ".." / ".." / "x"
    for outside in (tmp_path / "elsewhere" / "ab", "relative/ab", climbing):
        refused = requests.put(api + "/models/ab/logging", headers=OWNER, timeout=30,
                               json={"sampling_rate": 1.0, "filename_prefix": str(outside)})
        assert refused.status_code == 403, (outside, refused.text)
    reload = model_server_config_pb2.ModelServerConfig()
    entry = reload.model_config_list.config.add(name="ab", base_path=str(repository / "ab"),
                                                model_platform="tensorflow")
    entry.logging_config.log_collector_config.filename_prefix = str(tmp_path / "elsewhere" / "ab")
    entry.logging_config.sampling_config.sampling_rate = 1.0
    model_stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(server.grpc_target))
    with pytest.raises(grpc.RpcError) as refused_reload:
        model_stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=reload), timeout=30,
                                             metadata=[(k.lower(), v) for k, v in OWNER.items()])
    assert refused_reload.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "request log may be written only under" in refused_reload.value.details()
    assert not (tmp_path / "elsewhere").exists()

    sampled_prefix = config.parent / "request_logs" / "sampled" / "ab"
    n = 400
    changed = requests.put(api + "/models/ab/logging", json={"sampling_rate": 0.2,
                                                             "filename_prefix": str(sampled_prefix)},
                           headers=OWNER, timeout=30)
    assert changed.status_code == 200, changed.text
    session = requests.Session()
    for _ in range(n):
        assert session.post(server.url + "/v1/models/ab:predict", json={"instances": [[1.0]]},
                            headers=OWNER, timeout=30).status_code == 200
    assert server.stop() == 0  # the shutdown flush writes what is queued

    full = read_logs(default_prefix)
    assert [tf.make_ndarray(r.predict_log.request.inputs["x"]).item() for r in full] == [float(i) for i in range(15)]
    assert [tf.make_ndarray(r.predict_log.response.outputs["y"]).item() for r in full] == \
        [0.5 * i + 2.0 for i in range(15)]
    assert {r.log_metadata.model_spec.version.value for r in full} == {1}
    sampled = read_logs(sampled_prefix)
    sd = math.sqrt(n * 0.2 * 0.8)
    assert n * 0.2 - 5 * sd <= len(sampled) <= n * 0.2 + 5 * sd
    assert all(r.log_metadata.sampling_config.sampling_rate == 0.2 for r in sampled)


def test_warmup_written_from_a_log_is_replayed_when_the_version_loads(tmp_path, start_server):
    from tests.helpers.server import run_cli

    base = tmp_path / "ab"
    write_tf1_half_plus(base, 1)
    prefix = tmp_path / "logs" / "ab"
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "ab" base_path: "{base}" logging_config {{ '
                      f'log_collector_config {{ type: "file" filename_prefix: "{prefix}" }} '
                      f'sampling_config {{ sampling_rate: 1.0 }} }} }} }}\n')
    server = start_server(f"--model_config_file={config}")
    server.wait_for_state("ab", 1)
    for i in range(5):
        assert server.post("/v1/models/ab:predict", {"instances": [[float(i)]]}).status_code == 200
    assert server.stop() == 0

    staging = tmp_path / "staging"
    write_tf1_half_plus(staging, 2, b=3.0)
    refused = run_cli(["warmup-from-log", f"{prefix}*", f"--saved_model_dir={tmp_path / 'nowhere'}"])
    assert refused.returncode == 1 and "not a SavedModel version directory" in refused.stderr
    written = run_cli(["warmup-from-log", f"{prefix}*", f"--saved_model_dir={staging / '2'}", "--model_name=ab"])
    assert written.returncode == 0, written.stderr
    assert "wrote 5 warmup requests" in written.stdout
    warmup = staging / "2" / "assets.extra" / "tf_serving_warmup_requests"
    from tensorflow_serving.apis import prediction_log_pb2

    records = [prediction_log_pb2.PredictionLog.FromString(raw)
               for raw in tf.data.TFRecordDataset(str(warmup)).as_numpy_iterator()]
    assert len(records) == 5 and not any(r.predict_log.HasField("response") for r in records)

    (staging / "2").rename(base / "2")
    server = start_server(f"--model_config_file={config}")
    server.wait_for_state("ab", 2)
    assert "model ab version 2: replayed 5 warmup requests" in server.log_text()
    assert server.post("/v1/models/ab:predict", {"instances": [[2.0]]}).json()["predictions"] == [[4.0]]
