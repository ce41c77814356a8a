"""Seldon Core v1's predictions endpoint: every SeldonMessage form in, the same form out, Seldon's errors."""

from __future__ import annotations

import base64

import pytest
import requests

from tests.helpers.models import write_tf2_half_plus
from tests.server.test_v2_rest import v2_server  # noqa: F401 - the two-model server, shared

SELDON = "/seldon/prod/tf2/api/v1.0/predictions"


def post(server, path: str, body) -> requests.Response:
    return requests.post(server.url + path, json=body, timeout=30)


def test_every_form_answers_in_its_own_form(v2_server):  # noqa: F811
    ndarray = post(v2_server, SELDON, {"data": {"ndarray": [1.0, 2.0]}})
    assert ndarray.status_code == 200, ndarray.text
    assert ndarray.json() == {"data": {"names": ["y"], "ndarray": [2.5, 3.0]}, "meta": {}}
    tensor = post(v2_server, SELDON, {"data": {"names": ["x"], "tensor": {"shape": [3], "values": [0, 2, 4]}},
                                      "meta": {"puid": "p1"}})
    assert tensor.json() == {"data": {"names": ["y"], "tensor": {"shape": [3], "values": [2.0, 3.0, 4.0]}},
                             "meta": {"puid": "p1"}}
    tftensor = post(v2_server, SELDON, {"data": {"tftensor": {
        "dtype": "DT_FLOAT", "tensorShape": {"dim": [{"size": "2"}]}, "floatVal": [6.0, 8.0]}}})
    answer = tftensor.json()
    assert answer["meta"] == {} and answer["data"]["names"] == ["y"]
    assert answer["data"]["tftensor"]["dtype"] == "DT_FLOAT" and answer["data"]["tftensor"]["floatVal"] == [5.0, 6.0]
    json_data = post(v2_server, SELDON, {"jsonData": {"signature_name": "multi",
                                                      "inputs": {"a": [[1.0, 2.0]], "b": [10]}}})
    assert json_data.json() == {"jsonData": {"outputs": {"scaled": [[2.0, 4.0]], "sum": [13.0]}}, "meta": {}}
    strings = post(v2_server, SELDON, {"jsonData": {"signature_name": "strings",
                                                    "instances": [{"b64": base64.b64encode(b"ab").decode()}]}})
    assert strings.json() == {"jsonData": {"predictions": [{"length": 2, "upper_bytes": {"b64": "QUI="}}]},
                              "meta": {}}  # TF Serving writes *_bytes outputs in base64


def seldon_error(response: requests.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"status"} and body["status"]["status"] == 1 and body["status"]["code"] == -1
    assert body["status"]["reason"] == "MICROSERVICE_BAD_DATA"
    return body["status"]["info"]


BAD = {
    "no data": {"meta": {}},
    "two forms": {"data": {"ndarray": [1], "tensor": {"shape": [1], "values": [1]}}},
    "shape claims more values": {"data": {"tensor": {"shape": [1 << 40], "values": [1.0]}}},
    "negative shape": {"data": {"tensor": {"shape": [-1], "values": []}}},
    "bad tftensor": {"data": {"tftensor": {"dtype": "DT_NOPE"}}},
    "strings for floats": {"data": {"ndarray": ["a", "b"]}},
    "strData": {"strData": "hello"},
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_messages_get_seldons_error_body_and_the_server_keeps_serving(v2_server, case):  # noqa: F811
    assert seldon_error(post(v2_server, SELDON, BAD[case]))
    assert post(v2_server, SELDON, {"data": {"ndarray": [0.0]}}).json()["data"]["ndarray"] == [2.0]


def test_the_bare_path_needs_exactly_one_model(v2_server, start_server, tmp_path):  # noqa: F811
    info = seldon_error(post(v2_server, "/api/v1.0/predictions", {"data": {"ndarray": [1.0]}}))
    assert "tf1" in info and "tf2" in info
    assert seldon_error(post(v2_server, "/seldon/prod/nope/api/v1.0/predictions",
                             {"data": {"ndarray": [1.0]}}), 404)
    write_tf2_half_plus(tmp_path / "only", 1)
    single = start_server("--model_name=only", f"--model_base_path={tmp_path / 'only'}")
    single.wait_for_state("only", 1)
    answer = post(single, "/api/v1.0/predictions", {"data": {"ndarray": [1.0, 3.0]}})
    assert answer.json() == {"data": {"names": ["y"], "ndarray": [2.5, 3.5]}, "meta": {}}
