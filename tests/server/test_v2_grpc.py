"""KServe V2's gRPC service on the engine's gRPC port, driven by ``tritonclient.grpc`` unchanged."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from jupyter_tfserve.server.protos import inference_v2
from tests.server.test_v2_rest import (  # noqa: F401 - the fixtures, shared
    REPOSITORY_DRIVER,
    repository_server,
    run_driver,
    v2_server,
)

GRPC_DRIVER = r'''
import json, sys
import numpy as np
import tritonclient.grpc as g
from tritonclient.utils import InferenceServerException

client = g.InferenceServerClient(sys.argv[1])
out = {"live": client.is_server_live(), "ready": client.is_server_ready(),
       "model_ready": client.is_model_ready("tf2"), "unknown_ready": client.is_model_ready("nope"),
       "metadata": client.get_model_metadata("tf2", as_json=True),
       "server": client.get_server_metadata(as_json=True),
       "index": client.get_model_repository_index(as_json=True)}
x = g.InferInput("x", [3], "FP32")
x.set_data_from_numpy(np.array([1, 2, 3], dtype=np.float32))
result = client.infer("tf2", [x], request_id="g1")
out["raw"] = result.as_numpy("y").tolist()
out["id"] = result.get_response().id
text = g.InferInput("text", [2], "BYTES")
text.set_data_from_numpy(np.array([b"ab", b"xyz"], dtype=object))
result = client.infer("tf2", [text], parameters={"signature_name": "strings"},
                      outputs=[g.InferRequestedOutput("upper_bytes")])
out["upper"] = [v.decode() for v in result.as_numpy("upper_bytes").tolist()]
out["only_requested"] = result.as_numpy("length") is None
errors = {}
for key, call in {"unknown_model": lambda: client.get_model_metadata("nope"),
                  "unknown_infer": lambda: client.infer("nope", [x]),
                  "wrong_input": lambda: client.infer("tf2", [text]),
                  "stats_unknown": lambda: client.get_inference_statistics("nope")}.items():
    try:
        call()
        errors[key] = None
    except InferenceServerException as error:
        errors[key] = {"status": error.status(), "message": error.message()}
out["errors"] = errors
out["stats"] = client.get_inference_statistics("tf2", as_json=True)
out["all_stats"] = client.get_inference_statistics(as_json=True)
print(json.dumps(out))
'''

FIELDS_DRIVER = r'''
import json, sys
from tritonclient.grpc import service_pb2
out = {}
for name in json.loads(sys.argv[1]):
    d = service_pb2.DESCRIPTOR.message_types_by_name[name.split(".")[0]]
    for part in name.split(".")[1:]:
        d = d.nested_types_by_name[part]
    out[name] = sorted([f.name, f.number, f.type, f.is_repeated] for f in d.fields)
print(json.dumps(out))
'''


def test_tritonclient_grpc_drives_the_v2_service(v2_server):  # noqa: F811
    out = run_driver(GRPC_DRIVER, v2_server.grpc_target)
    assert out["live"] and out["ready"] and out["model_ready"] and out["unknown_ready"] is False
    metadata = out["metadata"]
    assert metadata["platform"] == "tensorflow_savedmodel" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1"]}]
    assert sorted(m["name"] for m in out["index"]["models"]) == ["tf1", "tf2"]
    assert out["raw"] == [2.5, 3.0, 3.5] and out["id"] == "g1"
    assert out["upper"] == ["AB", "XYZ"] and out["only_requested"]
    assert out["errors"]["unknown_model"]["status"] == "StatusCode.NOT_FOUND"
    assert out["errors"]["unknown_infer"]["status"] == "StatusCode.NOT_FOUND"
    assert out["errors"]["wrong_input"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "'text'" in out["errors"]["wrong_input"]["message"]
    assert out["errors"]["stats_unknown"]["status"] == "StatusCode.NOT_FOUND"
    (stats,) = out["stats"]["model_stats"]
    assert stats["name"] == "tf2" and stats["version"] == "1"
    inference = stats["inference_stats"]
    assert int(inference["success"]["count"]) >= 2 and int(inference["success"]["ns"]) > 0  # the two infers above
    assert int(inference["fail"]["count"]) >= 1  # the wrong input
    assert int(stats["inference_count"]) >= 5  # 3 + 2 items
    assert int(stats["last_inference"]) > 0
    assert sorted(entry["name"] for entry in out["all_stats"]["model_stats"]) == ["tf1", "tf2"]


def test_messages_carry_tritons_field_numbers():
    names = list(inference_v2.MESSAGES)
    theirs = run_driver(FIELDS_DRIVER, json.dumps(names))
    for name in names:
        descriptor = inference_v2.POOL.FindMessageTypeByName(f"inference.{name}")
        ours = sorted([f.name, f.number, f.type, f.is_repeated] for f in descriptor.fields)
        missing = [field for field in theirs[name] if field not in ours]
        assert all(field in theirs[name] for field in ours), (name, ours, theirs[name])
        # Triton's newer fields the engine does not fill (memory usage, response statistics) may be absent.
        assert not missing or name == "ModelStatistics", (name, missing)


def test_hostile_grpc_infer_requests_are_invalid_argument_and_the_server_keeps_serving(v2_server):  # noqa: F811
    request_type = inference_v2.message("ModelInferRequest")
    with grpc.insecure_channel(v2_server.grpc_target) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=request_type.SerializeToString,
                                    response_deserializer=inference_v2.message("ModelInferResponse").FromString)

        def request(shape, raw=None, datatype="FP32", fp32=()):
            message = request_type(model_name="tf2")
            tensor = message.inputs.add(name="x", datatype=datatype, shape=shape)
            tensor.contents.fp32_contents.extend(fp32)
            if raw is not None:
                message.raw_input_contents.append(raw)
            return message

        hostile = [request([1 << 40], b"\0" * 8), request([3], b"\0" * 8), request([2], b"\0" * 8, "INT32"),
                   request([2, 2], b"\0" * 16), request([3], fp32=[1.0])]
        for message in hostile:
            with pytest.raises(grpc.RpcError) as caught:
                infer(message, timeout=30)
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        answer = infer(request([2], fp32=[2.0, 4.0]), timeout=30)
        assert np.frombuffer(answer.raw_output_contents[0], "<f4").tolist() == [3.0, 4.0]


def test_tritonclient_grpc_loads_and_unloads_models_of_the_repository(repository_server):  # noqa: F811
    out = run_driver(REPOSITORY_DRIVER, repository_server.grpc_target, "grpc")
    assert out["before"] is False and out["loaded"] is True and out["unloaded"] is False
    assert out["answer"] == [3.0, 4.0]
    assert [(entry["name"], entry["state"]) for entry in out["index"]] == [("tf2", "READY")]
    missing = out["errors"]["missing"]
    assert missing["status"] == "StatusCode.NOT_FOUND" and "does not exist" in missing["message"]
    assert out["errors"]["unload_missing"]["status"] == "StatusCode.NOT_FOUND"
