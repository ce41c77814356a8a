"""KServe V2's ``inference.GRPCInferenceService`` on the engine's gRPC port.

The messages come from :mod:`.protos.inference_v2` (Triton's field numbers, so ``tritonclient.grpc``
works unchanged). ModelInfer turns the request into the same V2 request the REST door decodes: typed
``contents`` are packed as the binary tensor extension would carry them, so one codec
(:mod:`~jupyter_tfserve.engine.codecs.v2`) validates every claim and one engine call
(:meth:`Engine.predict`) answers. Outputs go back in ``raw_output_contents``, the only place
``tritonclient``'s ``as_numpy`` reads numeric outputs from.
"""

from __future__ import annotations

import logging
import struct

import grpc
import numpy as np

from .. import __version__
from ..engine.codecs import v2
from ..engine.engine import Engine, Target
from ..engine.errors import ServingError, invalid_argument
from ..engine.manager import State
from .auth import Authenticator
from .grpc_server import _abort, _authorize
from .protos.inference_v2 import PACKAGE, SERVICE, message
from .v2_rest import model_statistics, repository_action, repository_index

log = logging.getLogger(__name__)

_CONTENT_FIELDS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def _version(text: str) -> int | None:
    if not text:
        return None
    if not text.isdigit() or len(text) > 19:
        raise invalid_argument(f"Version {text!r} is not a version number")
    return int(text)


def _parameters(entries) -> dict:
    return {key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in entries.items()
            if value.WhichOneof("parameter_choice")}


def _packed(tensor) -> bytes:
    """An input's typed contents as the binary tensor extension carries them."""
    field = _CONTENT_FIELDS.get(tensor.datatype)
    if field is None:
        raise invalid_argument(f"Input {tensor.name!r}: datatype {tensor.datatype!r} has no typed contents")
    values = getattr(tensor.contents, field)
    if tensor.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(value)) + value for value in values)
    try:
        return np.asarray(values, dtype=v2.WIRE_DTYPES[tensor.datatype]).tobytes()
    except OverflowError as error:
        raise invalid_argument(f"Input {tensor.name!r}: {error}") from None


def infer_request(request) -> v2.InferRequest:
    """A gRPC ModelInferRequest as the codec's V2 request (header plus binary tensor data)."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise invalid_argument(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    inputs, chunks = [], []
    for index, tensor in enumerate(request.inputs):
        data = raw[index] if raw else _packed(tensor)
        chunks.append(data)
        inputs.append({"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape),
                       "parameters": {"binary_data_size": len(data)}})
    header = {"inputs": inputs, "parameters": _parameters(request.parameters),
              "outputs": [{"name": output.name, "parameters": {"binary_data": True}} for output in request.outputs]}
    parsed = v2.parse_infer(header, memoryview(b"".join(chunks)))
    parsed.binary_default = True
    return parsed


class InferenceService:
    """The V2 methods, each authorized as the REST door authorizes them (verbs of one model, or the owner)."""

    def __init__(self, engine: Engine, auth: Authenticator | None, control=None) -> None:
        self.engine = engine
        self.auth = auth
        self.control = control  # the management API, for the repository's load and unload

    async def ServerLive(self, request, context):
        return message("ServerLiveResponse")(live=True)

    async def ServerReady(self, request, context):
        try:
            _authorize(self.auth, context, None, None)
        except ServingError as error:
            await _abort(context, error, self.auth)
        return message("ServerReadyResponse")(ready=self.engine.manager.is_ready()[0])

    async def ServerMetadata(self, request, context):
        try:
            _authorize(self.auth, context, None, None)
        except ServingError as error:
            await _abort(context, error, self.auth)
        return message("ServerMetadataResponse")(name="jupyter-tfserve", version=__version__,
                                                 extensions=["model_repository", "statistics"])

    async def ModelReady(self, request, context):
        try:
            _authorize(self.auth, context, request.name, "metadata")
            statuses = self.engine.status(Target(request.name, _version(request.version)))
            ready = any(status.state is State.AVAILABLE for status in statuses)
        except ServingError as error:
            if error.code.name != "NOT_FOUND":
                await _abort(context, error, self.auth)
            ready = False
        return message("ModelReadyResponse")(ready=ready)

    async def ModelMetadata(self, request, context):
        try:
            _authorize(self.auth, context, request.name, "metadata")
            target = Target(request.name, _version(request.version))
            with self.engine.manager.acquire(target.name, target.version, None) as handle:
                signature = handle.servable.signature(target.signature)
            versions = [str(s.version) for s in self.engine.status(Target(request.name)) if s.state is State.AVAILABLE]
        except ServingError as error:
            await _abort(context, error, self.auth)
        response = message("ModelMetadataResponse")(name=request.name, versions=versions,
                                                    platform="tensorflow_savedmodel")
        for field, specs in (("inputs", signature.inputs), ("outputs", signature.outputs)):
            for entry in v2.tensor_metadata(specs):
                getattr(response, field).add(**entry)
        return response

    async def ModelInfer(self, request, context):
        try:
            _authorize(self.auth, context, request.model_name, "predict")
            parsed = infer_request(request)
            target = Target(request.model_name, _version(request.model_version), None, parsed.signature_name)
            answer = await self.engine.predict(target, lambda signature: v2.decode_inputs(parsed, signature),
                                               output_filter=parsed.outputs, entrypoint="GRPC")
            entries, chunks = v2.encode_outputs(answer.outputs, parsed.outputs, set(answer.outputs), True)
        except ServingError as error:
            await _abort(context, error, self.auth)
        response = message("ModelInferResponse")(model_name=answer.name, model_version=str(answer.version),
                                                 id=request.id, raw_output_contents=chunks)
        for entry in entries:
            response.outputs.add(name=entry["name"], datatype=entry["datatype"], shape=entry["shape"])
        return response

    async def RepositoryIndex(self, request, context):
        try:
            _authorize(self.auth, context, None, None)
        except ServingError as error:
            await _abort(context, error, self.auth)
        response = message("RepositoryIndexResponse")()
        for entry in repository_index(self.engine.manager):
            if not request.ready or entry["state"] == "READY":
                response.models.add(**entry)
        return response


    async def ModelStatistics(self, request, context):
        try:
            _authorize(self.auth, context, None, None)
            answer = model_statistics(self.engine, request.name or None, request.version or None)
        except ServingError as error:
            await _abort(context, error, self.auth)
        response = message("ModelStatisticsResponse")()
        for entry in answer["model_stats"]:
            stats = response.model_stats.add()
            for key in ("name", "version", "last_inference", "inference_count", "execution_count"):
                setattr(stats, key, entry[key])
            for key, duration in entry["inference_stats"].items():
                getattr(stats.inference_stats, key).count = duration["count"]
                getattr(stats.inference_stats, key).ns = duration["ns"]
        return response


    async def RepositoryModelLoad(self, request, context):
        return await self._repository(request, context, "load")

    async def RepositoryModelUnload(self, request, context):
        return await self._repository(request, context, "unload")

    async def _repository(self, request, context, action: str):
        try:
            _authorize(self.auth, context, None, None)
            await repository_action(self.control, self.engine, request.model_name, action)
        except ServingError as error:
            await _abort(context, error, self.auth)
        return message(f"RepositoryModel{action.title()}Response")()


def add_inference_service(server: grpc.aio.Server, engine: Engine, auth: Authenticator | None,
                          control=None) -> None:
    """Register the V2 service on ``server``."""
    service = InferenceService(engine, auth, control)
    handlers = {}
    for name in ("ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata", "ModelInfer",
                 "RepositoryIndex", "ModelStatistics", "RepositoryModelLoad", "RepositoryModelUnload"):
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            getattr(service, name), request_deserializer=message(f"{name}Request").FromString,
            response_serializer=message(f"{name}Response").SerializeToString)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(f"{PACKAGE}.{SERVICE}", handlers)])
