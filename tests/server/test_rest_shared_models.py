"""TF Serving's REST API against TF Serving's own test models: the answers its own tests expect."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.shared


def test_predict_row_format(shared_server):
    response = shared_server.post("/v1/models/half_plus_two:predict", {"instances": [2.0, 3.0, 4.0]})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [3.0, 3.5, 4.0]}
    assert response.headers["X-TFServe-Model-Version"] == "123"


def test_predict_columnar_format(shared_server):
    response = shared_server.post("/v1/models/half_plus_two:predict", {"inputs": {"x": [[2.0], [6.0]]}})
    assert response.status_code == 200, response.text
    assert response.json() == {"outputs": [[3.0], [5.0]]}


def test_predict_tf2_export(shared_server):
    response = shared_server.post("/v1/models/half_plus_two_tf2:predict", {"instances": [1.0, 2.0, 5.0]})
    assert response.json() == {"predictions": [2.5, 3.0, 4.5]}


def test_predict_half_plus_three_and_explicit_version(shared_server):
    response = shared_server.post("/v1/models/half_plus_three/versions/123:predict", {"instances": [2.0]})
    assert response.json() == {"predictions": [4.0]}


def test_classify_and_regress_over_tf_examples(shared_server):
    classify = shared_server.post(
        "/v1/models/half_plus_two:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    )
    assert classify.status_code == 200, classify.text
    assert classify.json() == {"results": [[["", 3.0]]]}
    regress = shared_server.post(
        "/v1/models/half_plus_two:regress",
        {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}, {"x": 4.0}]},
    )
    assert regress.json() == {"results": [3.0, 4.0]}
    with_context = shared_server.post(
        "/v1/models/half_plus_two:regress",
        {"signature_name": "regress_x_to_y", "context": {"x": 8.0}, "examples": [{}, {"x": 4.0}]},
    )
    assert with_context.json() == {"results": [6.0, 4.0]}


def test_classify_with_a_signature_not_shaped_for_it_is_refused(shared_server):
    # TF Serving checks the shape, not the method name, by default (PreProcessClassification): the
    # default signature's input is "x", not the serialized tf.Examples under "inputs" Classify feeds.
    response = shared_server.post("/v1/models/half_plus_two:classify", {"examples": [{"x": 2.0}]})
    assert response.status_code == 400
    assert "No classification inputs found in SignatureDef serving_default" in response.json()["error"]


def test_metadata_matches_tf_serving(shared_server, shared_testdata):
    expected = json.loads((shared_testdata / "half_plus_two_model_metadata.json").read_text())
    expected["model_spec"]["name"] = "half_plus_two"
    response = shared_server.get("/v1/models/half_plus_two/metadata")
    assert response.status_code == 200, response.text
    assert response.json() == expected


def test_metadata_of_a_specific_version_matches_tf_serving(shared_server, shared_testdata):
    expected = json.loads((shared_testdata / "saved_model_half_plus_two_2_versions_metadata.json").read_text())
    response = shared_server.get("/v1/models/saved_model_half_plus_two_2_versions/versions/123/metadata")
    assert response.json() == expected


def test_model_status(shared_server):
    response = shared_server.get("/v1/models/half_plus_two")
    assert response.json() == {
        "model_version_status": [
            {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert shared_server.get("/v1/models/half_plus_two/versions/123").status_code == 200


def test_all_versions_policy_labels_and_default_version(shared_server):
    assert shared_server.states("saved_model_half_plus_two_2_versions") == {123: "AVAILABLE", 124: "AVAILABLE"}
    base = "/v1/models/saved_model_half_plus_two_2_versions"
    default = shared_server.post(f"{base}:predict", {"instances": [1.0]})
    assert default.headers["X-TFServe-Model-Version"] == "124"
    stable = shared_server.post(f"{base}/labels/stable:predict", {"instances": [1.0]})
    canary = shared_server.post(f"{base}/labels/canary:predict", {"instances": [1.0]})
    assert stable.headers["X-TFServe-Model-Version"] == "123"
    assert canary.headers["X-TFServe-Model-Version"] == "124"
    assert stable.json() == shared_server.post(f"{base}/versions/123:predict", {"instances": [1.0]}).json()
    labelled_status = shared_server.get(f"{base}/labels/stable").json()
    assert [s["version"] for s in labelled_status["model_version_status"]] == ["123"]


def test_stateful_tf1_counter_with_reference_variables(shared_server):
    def call(signature: str, inputs: dict | None = None) -> float:
        response = shared_server.post(
            "/v1/models/counter:predict", {"signature_name": signature, "inputs": inputs or {}}
        )
        assert response.status_code == 200, response.text
        return response.json()["outputs"]

    assert call("reset_counter") == 0.0
    assert call("incr_counter") == 1.0
    assert call("incr_counter") == 2.0
    assert call("incr_counter_by", {"delta": 5.0}) == 7.0
    assert call("get_counter") == 7.0
    assert call("reset_counter") == 0.0


def test_matrix_inputs(shared_server):
    response = shared_server.post(
        "/v1/models/matrix:predict", {"instances": [[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [[[2.5, 3.0, 3.5], [4.0, 4.5, 5.0], [5.5, 6.0, 6.5]]]}


def test_a_model_that_fails_to_load_is_reported_and_others_keep_serving(shared_server):
    status = shared_server.get("/v1/models/bad").json()["model_version_status"][0]
    assert status["version"] == "123"
    assert status["state"] == "END"
    assert status["status"]["error_code"] != "OK"
    assert status["status"]["error_message"]
    response = shared_server.post("/v1/models/bad:predict", {"instances": [1.0]})
    assert response.status_code == 404
    assert "error" in response.json()
    assert shared_server.post("/v1/models/half_plus_two:predict", {"instances": [2.0]}).status_code == 200
    ready = shared_server.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["models_not_available"] == ["bad"]


def test_list_models(shared_server):
    models = {m["name"]: m for m in shared_server.get("/v1/models").json()["models"]}
    assert set(models) == {"half_plus_two", "half_plus_two_tf2", "half_plus_three",
                           "saved_model_half_plus_two_2_versions", "counter", "matrix", "bad"}
    two = models["saved_model_half_plus_two_2_versions"]
    assert two["labels"] == {"canary": "124", "stable": "123"}
    assert two["version_policy"] == "all"
    assert [s["state"] for s in two["model_version_status"]] == ["AVAILABLE", "AVAILABLE"]


def test_prometheus_metrics_use_tf_serving_names(shared_server):
    shared_server.post("/v1/models/half_plus_two:predict", {"instances": [2.0]})
    shared_server.post("/v1/models/half_plus_two:predict", {"instances": "not a list"})
    text = shared_server.get("/monitoring/prometheus/metrics").text
    assert '# TYPE :tensorflow:serving:request_count counter' in text
    assert ':tensorflow:serving:request_count{model_name="half_plus_two",status="OK"}' in text
    assert ':tensorflow:serving:request_count{model_name="half_plus_two",status="INVALID_ARGUMENT"}' in text
    buckets = [line for line in text.splitlines() if line.startswith(":tensorflow:serving:request_latency_bucket{")]
    assert any('API="predict"' in b and 'entrypoint="REST"' in b and 'model_name="half_plus_two"' in b
               for b in buckets)
    assert ':tensorflow:serving:runtime_latency_count{API="predict",model_name="half_plus_two",runtime="TF1"}' in text
    assert "_created" not in text
