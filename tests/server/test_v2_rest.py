"""KServe V2 REST on the engine's REST port, driven by Triton's own ``tritonclient.http`` and by raw bodies.

``tritonclient`` pins protobuf < 7, which the project's TF Serving API cannot share, so it lives in its
own virtual environment (``.venv/triton-client``, made by dev.sh, or ``TFSERVE_TRITON_PYTHON``) and is
driven from a subprocess: the client is used exactly as its users use it.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests

from jupyter_tfserve.engine.codecs import v2
from jupyter_tfserve.engine.signature import SignatureSpec, TensorSpec
from tests.helpers.models import write_tf1_half_plus, write_tf2_half_plus
from tests.helpers.server import ServerProcess

REPO = Path(__file__).resolve().parents[2]
TRITON_PYTHON = Path(os.environ.get("TFSERVE_TRITON_PYTHON", REPO / ".venv" / "triton-client" / "bin" / "python"))

HTTP_DRIVER = r'''
import json, sys
import numpy as np
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

client = http.InferenceServerClient(sys.argv[1])
out = {"live": client.is_server_live(), "ready": client.is_server_ready(),
       "model_ready": client.is_model_ready("tf2"), "metadata": client.get_model_metadata("tf2"),
       "server": client.get_server_metadata(), "index": client.get_model_repository_index()}
x = http.InferInput("x", [3], "FP32")
x.set_data_from_numpy(np.array([1, 2, 3], dtype=np.float32))  # binary by default
result = client.infer("tf2", [x], request_id="r1")
out["binary"] = result.as_numpy("y").tolist()
out["binary_response"] = result.get_response()
x_json = http.InferInput("x", [3], "FP32")
x_json.set_data_from_numpy(np.array([4, 6, 8], dtype=np.float32), binary_data=False)
result = client.infer("tf2", [x_json], outputs=[http.InferRequestedOutput("y", binary_data=False)],
                      model_version="1")
out["json"] = result.as_numpy("y").tolist()
out["json_response"] = result.get_response()
x_gzip = http.InferInput("x", [2], "FP32")
x_gzip.set_data_from_numpy(np.array([10, 20], dtype=np.float32))
out["gzip"] = client.infer("tf2", [x_gzip], request_compression_algorithm="gzip").as_numpy("y").tolist()
text = http.InferInput("text", [2], "BYTES")
text.set_data_from_numpy(np.array([b"ab", b"xyz"], dtype=object))
result = client.infer("tf2", [text], parameters={"signature_name": "strings"})
out["strings"] = {"length": result.as_numpy("length").tolist(),
                  "upper": [v.decode() for v in result.as_numpy("upper_bytes").tolist()]}
errors = {}
for key, call in {"unknown_model": lambda: client.get_model_metadata("nope"),
                  "unknown_infer": lambda: client.infer("nope", [x]),
                  "wrong_input": lambda: client.infer("tf2", [text])}.items():
    try:
        call()
        errors[key] = None
    except InferenceServerException as error:
        errors[key] = {"status": error.status(), "message": error.message()}
out["errors"] = errors
out["unknown_ready"] = client.is_model_ready("nope")
out["stats"] = client.get_inference_statistics("tf2")
out["version_stats"] = client.get_inference_statistics("tf2", model_version="1")
out["all_stats"] = client.get_inference_statistics()
try:
    client.get_inference_statistics("tf2", model_version="7")
    out["missing_version_stats"] = None
except InferenceServerException as error:
    out["missing_version_stats"] = error.status()
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def v2_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2")
    write_tf2_half_plus(root / "tf2", 1)
    write_tf1_half_plus(root / "tf1", 1)
    config = root / "models.config"
    config.write_text('model_config_list {\n'
                      f'  config {{ name: "tf2" base_path: "{root / "tf2"}" }}\n'
                      f'  config {{ name: "tf1" base_path: "{root / "tf1"}" }}\n'
                      '}\n')
    server = ServerProcess([f"--model_config_file={config}", "--max_request_body_bytes=1000000"],
                           root / "server.log")
    try:
        server.wait_for_port()
        for model in ("tf1", "tf2"):
            server.wait_for_state(model, 1)
        yield server
    finally:
        server.stop()


def run_driver(script: str, target: str, *arguments: str) -> dict:
    if not TRITON_PYTHON.exists():
        pytest.skip(f"tritonclient's virtual environment is not at {TRITON_PYTHON} (dev.sh makes it)")
    done = subprocess.run([str(TRITON_PYTHON), "-c", script, target, *arguments], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_tritonclient_http_drives_every_v2_endpoint(v2_server):
    out = run_driver(HTTP_DRIVER, f"127.0.0.1:{v2_server.rest_port}")
    assert out["live"] and out["ready"] and out["model_ready"]
    assert out["unknown_ready"] is False
    metadata = out["metadata"]
    assert metadata["platform"] == "tensorflow_savedmodel" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1]}]
    assert metadata["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1]}]
    assert "binary_tensor_data" in out["server"]["extensions"]
    assert sorted((e["name"], e["state"]) for e in out["index"]) == [("tf1", "READY"), ("tf2", "READY")]
    assert out["binary"] == [2.5, 3.0, 3.5]
    assert out["binary_response"]["id"] == "r1"
    assert out["binary_response"]["outputs"][0]["parameters"]["binary_data_size"] == 12
    assert out["json"] == [4.0, 5.0, 6.0]
    assert out["json_response"]["outputs"][0]["data"] == [4.0, 5.0, 6.0]
    assert out["gzip"] == [7.0, 12.0]
    assert out["strings"] == {"length": [2, 3], "upper": ["AB", "XYZ"]}
    assert out["errors"]["unknown_model"]["status"] == "404"
    assert out["errors"]["unknown_infer"]["status"] == "404"
    assert out["errors"]["wrong_input"]["status"] == "400"
    assert "'text'" in out["errors"]["wrong_input"]["message"]
    assert {"model_repository", "statistics"} <= set(out["server"]["extensions"])
    (stats,) = out["stats"]["model_stats"]
    assert stats["name"] == "tf2" and stats["version"] == "1"
    assert [(e["name"], e["version"]) for e in out["version_stats"]["model_stats"]] == [("tf2", "1")]
    inference = stats["inference_stats"]
    assert inference["success"]["count"] >= 4 and inference["success"]["ns"] > 0  # binary, JSON, gzip, strings
    assert inference["fail"]["count"] >= 1  # the wrong input
    assert stats["inference_count"] >= 3 + 3 + 2 + 2
    assert sorted(entry["name"] for entry in out["all_stats"]["model_stats"]) == ["tf1", "tf2"]
    assert out["missing_version_stats"] == "404"


def binary_body(header: dict, *chunks: bytes) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + b"".join(chunks), {"Inference-Header-Content-Length": str(len(head))}


def floats(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def x_input(shape, size=None, datatype="FP32", data=None) -> dict:
    item = {"name": "x", "shape": shape, "datatype": datatype}
    if size is not None:
        item["parameters"] = {"binary_data_size": size}
    if data is not None:
        item["data"] = data
    return item


HOSTILE = {
    "claimed size past the body": binary_body({"inputs": [x_input([2], 1 << 40)]}, floats(1, 2)),
    "huge shape, few bytes": binary_body({"inputs": [x_input([1 << 40], 8)]}, floats(1, 2)),
    "size and shape disagree": binary_body({"inputs": [x_input([3], 8)]}, floats(1, 2)),
    "trailing bytes": binary_body({"inputs": [x_input([2], 8)]}, floats(1, 2, 3)),
    "header length past the body": (json.dumps({"inputs": []}).encode(),
                                    {"Inference-Header-Content-Length": "99999"}),
    "wrong datatype": binary_body({"inputs": [x_input([2], 8, "INT32")]}, floats(1, 2)),
    "wrong rank": (json.dumps({"inputs": [x_input([1, 2], data=[1, 2])]}).encode(), {}),
    "too few values": (json.dumps({"inputs": [x_input([3], data=[1, 2])]}).encode(), {}),
    "text in FP32": (json.dumps({"inputs": [x_input([1], data=["a"])]}).encode(), {}),
    "negative dim": (json.dumps({"inputs": [x_input([-5], data=[])]}).encode(), {}),
    "not JSON": (b"{nope", {}),
    "no inputs": (b"{}", {}),
    "bad gzip": (b"\x1f\x8bnot really gzip", {"Content-Encoding": "gzip"}),
    "truncated gzip": (gzip.compress(json.dumps({"inputs": [x_input([1], data=[1])]}).encode())[:-6],
                       {"Content-Encoding": "gzip"}),
    "unknown encoding": (b"{}", {"Content-Encoding": "br"}),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_infer_bodies_get_v2_errors_and_the_server_keeps_serving(v2_server, case):
    body, headers = HOSTILE[case]
    response = requests.post(f"{v2_server.url}/v2/models/tf2/infer", data=body, headers=headers, timeout=30)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"} and response.json()["error"]
    ok = requests.post(f"{v2_server.url}/v2/models/tf2/infer", timeout=30,
                       json={"inputs": [x_input([1], data=[2.0])]})
    assert ok.json()["outputs"][0]["data"] == [3.0]


def test_bytes_elements_claiming_more_than_the_body_are_refused(v2_server):
    text = {"name": "text", "shape": [1 << 30], "datatype": "BYTES", "parameters": {"binary_data_size": 8}}
    body, headers = binary_body({"inputs": [text], "parameters": {"signature_name": "strings"}},
                                struct.pack("<I", 1 << 31) + b"abcd")
    response = requests.post(f"{v2_server.url}/v2/models/tf2/infer", data=body, headers=headers, timeout=30)
    assert response.status_code == 400 and "BYTES" in response.json()["error"]
    text["shape"] = [1]
    body, headers = binary_body({"inputs": [text], "parameters": {"signature_name": "strings"}},
                                struct.pack("<I", 1 << 31) + b"abcd")
    response = requests.post(f"{v2_server.url}/v2/models/tf2/infer", data=body, headers=headers, timeout=30)
    assert response.status_code == 400 and "claims" in response.json()["error"]


def test_compressed_bodies_are_bounded_after_inflating(v2_server):
    bomb = zlib.compress(b"[" + b" " * 5_000_000 + b"]")  # 5 MB of nothing, past the 1 MB limit
    response = requests.post(f"{v2_server.url}/v2/models/tf2/infer", data=bomb,
                             headers={"Content-Encoding": "deflate"}, timeout=30)
    assert response.status_code == 413 and "limit" in response.json()["error"]
    good = zlib.compress(json.dumps({"inputs": [x_input([2], data=[0.0, 2.0])]}).encode())
    response = requests.post(f"{v2_server.url}/v2/models/tf2/infer", data=good,
                             headers={"Content-Encoding": "deflate"}, timeout=30)
    assert response.json()["outputs"][0]["data"] == [2.0, 3.0]


def test_unknown_paths_and_versions_answer_in_v2_format(v2_server):
    for path, status in {"/v2/models/tf2/versions/7": 404, "/v2/models/tf2/versions/x": 400,
                         "/v2/models/nope/ready": 404, "/v2/models/tf2/bogus": 404}.items():
        response = requests.get(v2_server.url + path, timeout=30)
        assert response.status_code == status, (path, response.text)
        assert "error" in response.json()


def test_a_share_token_reaches_v2_infer_and_metadata_of_its_model_and_nothing_else(tmp_path, start_server):
    import grpc

    from jupyter_tfserve.server.protos import inference_v2
    from tests.helpers.server import free_port

    secret = "v2-test-secret"
    write_tf2_half_plus(tmp_path / "repo" / "tf2", 1)
    write_tf1_half_plus(tmp_path / "repo" / "tf1", 1)
    config = tmp_path / "models.config"
    config.write_text("model_config_list {\n}\n")
    management = free_port()
    server = start_server("--require_auth", f"--management_port={management}",
                          f"--state_db={tmp_path / 'state.sqlite'}", f"--model_repository_root={tmp_path / 'repo'}",
                          f"--model_config_file={config}", env={"TFSERVE_ENGINE_SECRET": secret})
    owner = {"X-TFServe-Engine-Secret": secret}
    api = f"http://127.0.0.1:{management}/api"
    for name in ("tf1", "tf2"):
        loaded = requests.post(f"{api}/models", json={"name": name, "base_path": name, "wait_seconds": 60},
                               headers=owner, timeout=60)
        assert loaded.status_code == 201, loaded.text
    created = requests.post(f"{api}/tokens", json={"model": "tf2", "verbs": ["predict", "metadata"]},
                            headers=owner, timeout=30)
    bearer = {"Authorization": f"Bearer {created.json()['token']}"}
    infer = {"inputs": [x_input([1], data=[2.0])]}
    assert requests.post(f"{server.url}/v2/models/tf2/infer", json=infer, headers=bearer,
                         timeout=30).json()["outputs"][0]["data"] == [3.0]
    assert requests.get(f"{server.url}/v2/models/tf2", headers=bearer, timeout=30).json()["name"] == "tf2"
    assert requests.get(f"{server.url}/v2/models/tf2/ready", headers=bearer, timeout=30).status_code == 200
    assert requests.get(f"{server.url}/v2/health/live", timeout=30).status_code == 200
    refused = [("POST", "/v2/models/tf1/infer"), ("GET", "/v2/models/tf1"), ("GET", "/v2"),
               ("GET", "/v2/health/ready"), ("POST", "/v2/repository/index"),
               ("POST", "/seldon/ns/tf1/api/v1.0/predictions"), ("POST", "/api/v1.0/predictions")]
    for method, path in refused:
        response = requests.request(method, server.url + path, json=infer, headers=bearer, timeout=30)
        assert response.status_code == 403, (path, response.text)
    assert requests.post(f"{server.url}/v2/models/tf2/infer", json=infer, timeout=30).status_code == 401
    assert requests.post(f"{server.url}/seldon/ns/tf2/api/v1.0/predictions", json={"data": {"ndarray": [2.0]}},
                         headers=bearer, timeout=30).json()["data"]["ndarray"] == [3.0]

    metadata = [("authorization", bearer["Authorization"])]
    with grpc.insecure_channel(server.grpc_target) as channel:
        def call(method: str, **fields):
            stub = channel.unary_unary(f"/inference.GRPCInferenceService/{method}",
                                       request_serializer=inference_v2.message(f"{method}Request").SerializeToString,
                                       response_deserializer=inference_v2.message(f"{method}Response").FromString)
            return stub(inference_v2.message(f"{method}Request")(**fields), metadata=metadata, timeout=30)

        assert call("ModelMetadata", name="tf2").platform == "tensorflow_savedmodel"
        for method, fields in [("ModelMetadata", {"name": "tf1"}), ("ModelInfer", {"model_name": "tf1"}),
                               ("RepositoryIndex", {}), ("ServerMetadata", {})]:
            with pytest.raises(grpc.RpcError) as caught:
                call(method, **fields)
            assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED, (method, caught.value.details())


@pytest.mark.parametrize("tf_dtype", sorted(set(v2.DATATYPES) - {14, 17}))  # BF16, UINT16: not in NUMPY_DTYPES
def test_every_datatype_round_trips_in_binary_and_json(tf_dtype):
    spec = TensorSpec("t", "t:0", tf_dtype, (-1, 2))
    signature = SignatureSpec("serving_default", "predict", {"t": spec}, {"t": spec})
    datatype = v2.DATATYPES[tf_dtype]
    if datatype == "BYTES":
        array = np.array([[b"a", b""], [b"\xff\x00", b"xyz"]], dtype=object)
    elif datatype == "BOOL":
        array = np.array([[True, False], [False, True]])
    else:
        array = np.array([[0, 1], [2, 100]], dtype=spec.dtype)
    entries, chunks = v2.encode_outputs({"t": array}, [], set(), True)
    assert entries[0]["datatype"] == datatype and entries[0]["shape"] == [2, 2]
    header = {"inputs": [{**entries[0], "name": "t"}]}
    decoded = v2.decode_inputs(v2.parse_infer(header, memoryview(chunks[0])), signature)["t"]
    assert decoded.dtype == spec.dtype and decoded.tolist() == array.tolist()
    if datatype != "BYTES":
        entries, _ = v2.encode_outputs({"t": array}, ["t"], set(), False)
        request = v2.parse_infer({"inputs": [{**entries[0], "name": "t"}]}, memoryview(b""))
        assert v2.decode_inputs(request, signature)["t"].tolist() == array.tolist()


REPOSITORY_DRIVER = r'''
import importlib, json, sys
import numpy as np
from tritonclient.utils import InferenceServerException

protocol = sys.argv[2]  # "http" or "grpc": the same calls through either client
triton = importlib.import_module("tritonclient." + protocol)
client = triton.InferenceServerClient(sys.argv[1])
out = {"before": client.is_model_ready("tf2")}
client.load_model("tf2")
out["loaded"] = client.is_model_ready("tf2")
x = triton.InferInput("x", [2], "FP32")
x.set_data_from_numpy(np.array([2, 4], dtype=np.float32))
out["answer"] = client.infer("tf2", [x]).as_numpy("y").tolist()
client.load_model("tf2")  # a loaded model: left as it is
index = client.get_model_repository_index(**({"as_json": True} if protocol == "grpc" else {}))
out["index"] = index["models"] if protocol == "grpc" else index
client.unload_model("tf2")
out["unloaded"] = client.is_model_ready("tf2")
errors = {}
calls = {"missing": lambda: client.load_model("nope"), "unload_missing": lambda: client.unload_model("nope")}
for key, call in calls.items():
    try:
        call()
        errors[key] = None
    except InferenceServerException as error:
        errors[key] = {"status": error.status(), "message": error.message()}
out["errors"] = errors
print(json.dumps(out))
'''


@pytest.fixture
def repository_server(tmp_path):
    """An engine with a model repository (tf2 in it, not loaded) and an empty config: V2 load/unload's ground."""
    root = tmp_path / "repo"
    write_tf2_half_plus(root / "tf2", 1)
    config = tmp_path / "models.config"
    config.write_text("model_config_list {\n}\n")
    server = ServerProcess([f"--model_config_file={config}", f"--model_repository_root={root}"],
                           tmp_path / "server.log")
    try:
        server.wait_for_port()
        yield server
    finally:
        server.stop()


def test_tritonclient_loads_and_unloads_models_of_the_repository(repository_server):
    out = run_driver(REPOSITORY_DRIVER, f"127.0.0.1:{repository_server.rest_port}", "http")
    assert out["before"] is False and out["loaded"] is True and out["unloaded"] is False
    assert out["answer"] == [3.0, 4.0]
    assert [(e["name"], e["state"]) for e in out["index"]] == [("tf2", "READY")]
    assert out["errors"]["missing"]["status"] == "404", out["errors"]
    assert "nope does not exist" in out["errors"]["missing"]["message"]
    assert out["errors"]["unload_missing"]["status"] == "404", out["errors"]
