"""KServe V2's ``inference`` gRPC messages, built at import time with Triton's field numbers.

``tritonclient.grpc`` is compiled from Triton's ``grpc_service.proto``; these messages use the same
package, names and field numbers (tests/server/test_v2_grpc.py checks them against tritonclient's
own descriptor), for the methods the engine serves. Building the descriptor here, instead of
generating ``*_pb2.py`` with grpcio-tools, keeps the project free of generated code tied to one
protobuf release, and free of Triton's Python package.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
BOOL, STRING, INT64, INT32, UINT32, UINT64, FLOAT, DOUBLE, BYTES = (
    _F.TYPE_BOOL, _F.TYPE_STRING, _F.TYPE_INT64, _F.TYPE_INT32, _F.TYPE_UINT32, _F.TYPE_UINT64, _F.TYPE_FLOAT,
    _F.TYPE_DOUBLE, _F.TYPE_BYTES)
PACKAGE = "inference"
SERVICE = "GRPCInferenceService"

# name → fields (name, number, type or message name, repeated); "map:<Value>" makes a map<string, Value>.
_PARAMETERS = "map:InferParameter"
_DURATION = "StatisticDuration"
MESSAGES: dict[str, list[tuple[str, int, object, bool]]] = {
    "ServerLiveRequest": [], "ServerLiveResponse": [("live", 1, BOOL, False)],
    "ServerReadyRequest": [], "ServerReadyResponse": [("ready", 1, BOOL, False)],
    "ModelReadyRequest": [("name", 1, STRING, False), ("version", 2, STRING, False)],
    "ModelReadyResponse": [("ready", 1, BOOL, False)],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [("name", 1, STRING, False), ("version", 2, STRING, False),
                               ("extensions", 3, STRING, True)],
    "ModelMetadataRequest": [("name", 1, STRING, False), ("version", 2, STRING, False)],
    "ModelMetadataResponse.TensorMetadata": [("name", 1, STRING, False), ("datatype", 2, STRING, False),
                                             ("shape", 3, INT64, True)],
    "ModelMetadataResponse": [("name", 1, STRING, False), ("versions", 2, STRING, True),
                              ("platform", 3, STRING, False),
                              ("inputs", 4, "ModelMetadataResponse.TensorMetadata", True),
                              ("outputs", 5, "ModelMetadataResponse.TensorMetadata", True)],
    "InferParameter": [("bool_param", 1, BOOL, False), ("int64_param", 2, INT64, False),
                       ("string_param", 3, STRING, False), ("double_param", 4, DOUBLE, False),
                       ("uint64_param", 5, UINT64, False)],
    "InferTensorContents": [("bool_contents", 1, BOOL, True), ("int_contents", 2, INT32, True),
                            ("int64_contents", 3, INT64, True), ("uint_contents", 4, UINT32, True),
                            ("uint64_contents", 5, UINT64, True), ("fp32_contents", 6, FLOAT, True),
                            ("fp64_contents", 7, DOUBLE, True), ("bytes_contents", 8, BYTES, True)],
    "ModelInferRequest.InferInputTensor": [("name", 1, STRING, False), ("datatype", 2, STRING, False),
                                           ("shape", 3, INT64, True), ("parameters", 4, _PARAMETERS, True),
                                           ("contents", 5, "InferTensorContents", False)],
    "ModelInferRequest.InferRequestedOutputTensor": [("name", 1, STRING, False),
                                                     ("parameters", 2, _PARAMETERS, True)],
    "ModelInferRequest": [("model_name", 1, STRING, False), ("model_version", 2, STRING, False),
                          ("id", 3, STRING, False), ("parameters", 4, _PARAMETERS, True),
                          ("inputs", 5, "ModelInferRequest.InferInputTensor", True),
                          ("outputs", 6, "ModelInferRequest.InferRequestedOutputTensor", True),
                          ("raw_input_contents", 7, BYTES, True)],
    "ModelInferResponse.InferOutputTensor": [("name", 1, STRING, False), ("datatype", 2, STRING, False),
                                             ("shape", 3, INT64, True), ("parameters", 4, _PARAMETERS, True),
                                             ("contents", 5, "InferTensorContents", False)],
    "ModelInferResponse": [("model_name", 1, STRING, False), ("model_version", 2, STRING, False),
                           ("id", 3, STRING, False), ("parameters", 4, _PARAMETERS, True),
                           ("outputs", 5, "ModelInferResponse.InferOutputTensor", True),
                           ("raw_output_contents", 6, BYTES, True)],
    "ModelStatisticsRequest": [("name", 1, STRING, False), ("version", 2, STRING, False)],
    _DURATION: [("count", 1, UINT64, False), ("ns", 2, UINT64, False)],
    "InferStatistics": [(name, number, _DURATION, False) for number, name in enumerate(
        ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss"),
        start=1)],
    "InferBatchStatistics": [("batch_size", 1, UINT64, False), ("compute_input", 2, _DURATION, False),
                             ("compute_infer", 3, _DURATION, False), ("compute_output", 4, _DURATION, False)],
    "ModelStatistics": [("name", 1, STRING, False), ("version", 2, STRING, False),
                        ("last_inference", 3, UINT64, False), ("inference_count", 4, UINT64, False),
                        ("execution_count", 5, UINT64, False), ("inference_stats", 6, "InferStatistics", False),
                        ("batch_stats", 7, "InferBatchStatistics", True)],
    "ModelStatisticsResponse": [("model_stats", 1, "ModelStatistics", True)],
    "ModelRepositoryParameter": [("bool_param", 1, BOOL, False), ("int64_param", 2, INT64, False),
                                 ("string_param", 3, STRING, False), ("bytes_param", 4, BYTES, False)],
    "RepositoryIndexRequest": [("repository_name", 1, STRING, False), ("ready", 2, BOOL, False)],
    "RepositoryIndexResponse.ModelIndex": [("name", 1, STRING, False), ("version", 2, STRING, False),
                                           ("state", 3, STRING, False), ("reason", 4, STRING, False)],
    "RepositoryIndexResponse": [("models", 1, "RepositoryIndexResponse.ModelIndex", True)],
    "RepositoryModelLoadRequest": [("repository_name", 1, STRING, False), ("model_name", 2, STRING, False),
                                   ("parameters", 3, "map:ModelRepositoryParameter", True)],
    "RepositoryModelLoadResponse": [],
    "RepositoryModelUnloadRequest": [("repository_name", 1, STRING, False), ("model_name", 2, STRING, False),
                                     ("parameters", 3, "map:ModelRepositoryParameter", True)],
    "RepositoryModelUnloadResponse": [],
}
# The oneof each parameter message holds its value in (Triton's names).
_ONEOFS = {"InferParameter": "parameter_choice", "ModelRepositoryParameter": "parameter_choice"}
METHODS = {
    "ServerLive": "ServerLive", "ServerReady": "ServerReady", "ModelReady": "ModelReady",
    "ServerMetadata": "ServerMetadata", "ModelMetadata": "ModelMetadata", "ModelInfer": "ModelInfer",
    "ModelStatistics": "ModelStatistics", "RepositoryIndex": "RepositoryIndex",
    "RepositoryModelLoad": "RepositoryModelLoad", "RepositoryModelUnload": "RepositoryModelUnload",
}


def _add_field(message: descriptor_pb2.DescriptorProto, path: str, name: str, number: int, kind: object,
               repeated: bool) -> None:
    field = message.field.add(name=name, number=number,
                              label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
    if isinstance(kind, str) and kind.startswith("map:"):
        entry = message.nested_type.add(name="".join(p.capitalize() for p in name.split("_")) + "Entry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, label=_F.LABEL_OPTIONAL, type=STRING)
        entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL, type=_F.TYPE_MESSAGE,
                        type_name=f".{PACKAGE}.{kind[4:]}")
        field.type, field.type_name = _F.TYPE_MESSAGE, f".{PACKAGE}.{path}.{entry.name}"
    elif isinstance(kind, str):
        field.type, field.type_name = _F.TYPE_MESSAGE, f".{PACKAGE}.{kind}"
    else:
        field.type = kind  # type: ignore[assignment]


def _build() -> descriptor_pool.DescriptorPool:
    file = descriptor_pb2.FileDescriptorProto(name="jupyter_tfserve/inference_v2.proto", package=PACKAGE,
                                              syntax="proto3")
    protos: dict[str, descriptor_pb2.DescriptorProto] = {}
    for path in sorted(MESSAGES, key=lambda p: p.count(".")):  # outer messages before those nested in them
        outer, _, inner = path.partition(".")
        if inner:
            protos[path] = protos[outer].nested_type.add(name=inner)
        else:
            protos[path] = file.message_type.add(name=path)
    for path, fields in MESSAGES.items():
        for name, number, kind, repeated in fields:
            _add_field(protos[path], path, name, number, kind, repeated)
        if path in _ONEOFS:
            protos[path].oneof_decl.add(name=_ONEOFS[path])
            for field in protos[path].field:
                field.oneof_index = 0
    service = file.service.add(name=SERVICE)
    for method in METHODS:
        service.method.add(name=method, input_type=f".{PACKAGE}.{method}Request",
                           output_type=f".{PACKAGE}.{method}Response")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return pool


POOL = _build()


def message(name: str) -> type:
    """The message class for ``inference.<name>`` (``ModelInferRequest``, ``ModelInferResponse.InferOutputTensor``)."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))
