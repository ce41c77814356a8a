"""TF Serving's gRPC services on grpc.aio, with the official ``tensorflow-serving-api`` stubs.

The servicers translate protos to the engine's request path and back; canonical
codes from the engine become gRPC status codes unchanged.

What gRPC lets us do before a message is read, and what not: grpc.aio receives a unary call's
whole message (up to the receive limit, TF Serving's 2 GiB - 1) and parses it on the event loop
before the method runs. An interceptor (:class:`RefuseBeforeReading`) sees the method and the
metadata first: a call whose credentials fail is refused there, by a handler that never asks for
the message, so the server neither takes nor parses it. A caller who may call the method gets its
message parsed as TF Serving would; its tensors are then converted within the request's
:class:`~jupyter_tfserve.engine.codecs.DecodeLimits`, a large request's on a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence

import grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from ..engine.codecs import tensor_proto
from ..engine.codecs.decode_workers import WORKER_MIN_BYTES
from ..engine.codecs.limits import DecodeBudget, DecodeLimits
from ..engine.config import ConfigError, validate_model_server_config
from ..engine.engine import Engine, Target, serialized_examples
from ..engine.errors import ServingError, invalid_argument, redact_paths
from ..engine.manager import State
from ..wire import ENGINE_SECRET_HEADER, ROUTE_KEY_HEADER
from .auth import Authenticator
from .control import PathPolicy
from .profiler_service import ProfilerService

log = logging.getLogger(__name__)

_STATE_NUMBERS = {
    State.START: get_model_status_pb2.ModelVersionStatus.START,
    State.LOADING: get_model_status_pb2.ModelVersionStatus.LOADING,
    State.AVAILABLE: get_model_status_pb2.ModelVersionStatus.AVAILABLE,
    State.UNLOADING: get_model_status_pb2.ModelVersionStatus.UNLOADING,
    State.END: get_model_status_pb2.ModelVersionStatus.END,
}


def target_from_spec(spec) -> Target:
    if not spec.name:
        raise invalid_argument("Missing ModelSpec name")
    choice = spec.WhichOneof("version_choice")
    return Target(
        name=spec.name,
        version=spec.version.value if choice == "version" else None,
        label=spec.version_label if choice == "version_label" else None,
        signature_name=spec.signature_name,
    )


def _fill_spec(spec, name: str, version: int, signature_name: str = "") -> None:
    spec.name = name
    spec.version.value = version
    spec.signature_name = signature_name


_SECRET_KEY = ENGINE_SECRET_HEADER.lower()
_ROUTE_KEY = ROUTE_KEY_HEADER.lower()


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}


def _authorize(auth: Authenticator | None, context, model: str | None, verb: str | None) -> dict[str, str]:
    """Check the call's credentials (metadata, as REST's headers); returns the metadata."""
    metadata = _metadata(context)
    if auth is not None:
        access = auth.authenticate(metadata.get(_SECRET_KEY), metadata.get("authorization"))
        access.require(model, verb)
    return metadata


def _for_caller(auth: Authenticator | None, context, message: str) -> str:
    """A message as the caller may read it: a share token's bearer does not see the engine's file paths."""
    if auth is None or not message:
        return message
    metadata = _metadata(context)
    try:
        owner = auth.authenticate(metadata.get(_SECRET_KEY), metadata.get("authorization")).owner
    except ServingError:
        owner = False
    return message if owner else redact_paths(message)


async def _abort(context: grpc.aio.ServicerContext, error: ServingError, auth: Authenticator | None = None) -> None:
    await context.abort(getattr(grpc.StatusCode, error.code.name, grpc.StatusCode.UNKNOWN),
                        _for_caller(auth, context, error.message))


# The verb each method needs of a share token; methods absent here are the owner's alone.
_METHOD_VERBS = {
    "/tensorflow.serving.PredictionService/Predict": "predict",
    "/tensorflow.serving.PredictionService/Classify": "classify",
    "/tensorflow.serving.PredictionService/Regress": "regress",
    "/tensorflow.serving.PredictionService/GetModelMetadata": "metadata",
    "/tensorflow.serving.ModelService/GetModelStatus": "status",
    "/tensorflow.serving.PredictionService/MultiInference": None,  # classify or regress, per task
    "/inference.GRPCInferenceService/ModelInfer": "predict",  # KServe V2 (server/v2_grpc.py)
    "/inference.GRPCInferenceService/ModelMetadata": "metadata",
    "/inference.GRPCInferenceService/ModelReady": "metadata",
    "/inference.GRPCInferenceService/ServerLive": "metadata",
}


class RefuseBeforeReading(grpc.aio.ServerInterceptor):
    """Refuses a call whose credentials fail from its metadata, before its message is read.

    Without it, an unauthenticated caller's message (up to 2 GiB) was received and parsed on the
    event loop before the method found the credentials wanting. The method still checks the model
    the message names; here only what the metadata settles is checked: the credentials themselves,
    an owner-only method, and a share token's verbs.
    """

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth

    async def intercept_service(self, continuation, details):
        metadata = {key: value for key, value in (details.invocation_metadata or ()) if isinstance(value, str)}
        try:
            access = self.auth.authenticate(metadata.get(_SECRET_KEY), metadata.get("authorization"))
            if not access.owner:
                method = details.method
                if method not in _METHOD_VERBS:
                    access.require(None, None)
                verb = _METHOD_VERBS[method]
                if verb is not None:
                    access.require(access.model, verb)
                elif not {"classify", "regress"} & set(access.verbs):
                    access.require(access.model, "classify")
        except ServingError as error:
            return grpc.stream_unary_rpc_method_handler(_refusal(error))
        return await continuation(details)


def _refusal(error: ServingError):
    async def refuse(request_iterator, context) -> None:  # never iterated: the message is not read
        await _abort(context, error)

    return refuse


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """TF Serving's PredictionService.

    Predict answers in the typed fields (``float_val``, ...) as TF Serving does by default
    (``Tensor::AsProtoField``), because clients read them directly; ``tensor_content=True``
    answers in ``tensor_content`` instead (TF Serving's ``--enable_serialization_as_tensor_content``),
    cheaper for large outputs but readable only by clients that decode with ``tf.make_ndarray``.
    """

    def __init__(self, engine: Engine, auth: Authenticator | None = None, tensor_content: bool = False,
                 decode_limits: DecodeLimits | None = None) -> None:
        self.engine = engine
        self.auth = auth
        self.tensor_content = tensor_content
        self.decode_limits = decode_limits or DecodeLimits()

    async def Predict(self, request, context):
        try:
            target = target_from_spec(request.model_spec)
            metadata = _authorize(self.auth, context, target.name, "predict")
            limits = self.decode_limits
            converted = None
            if tensor_proto.tensor_protos_size_hint(request.inputs) >= WORKER_MIN_BYTES:
                # Off the event loop, in steps that let it run (strings a slice at a time).
                converted = await asyncio.to_thread(tensor_proto.convert_tensor_protos, request.inputs,
                                                    DecodeBudget(limits, request.ByteSize))
            answer = await self.engine.predict(
                target,
                lambda signature: tensor_proto.decode_tensor_protos(
                    request.inputs, signature, DecodeBudget(limits, request.ByteSize), converted),
                output_filter=list(request.output_filter),
                entrypoint="GRPC",
                route_key=metadata.get(_ROUTE_KEY),
            )
            response = predict_pb2.PredictResponse()
            _fill_spec(response.model_spec, answer.name, answer.version, answer.signature_name)
            for alias, array in answer.outputs.items():
                tensor_proto.numpy_to_tensor_proto(array, tensor_content=self.tensor_content,
                                                   out=response.outputs[alias])
        except ServingError as error:
            await _abort(context, error, self.auth)
        return response

    async def Classify(self, request, context):
        try:
            target = target_from_spec(request.model_spec)
            metadata = _authorize(self.auth, context, target.name, "classify")
            answer = await self.engine.classify(target, serialized_examples(request.input), entrypoint="GRPC",
                                             route_key=metadata.get(_ROUTE_KEY))
        except ServingError as error:
            await _abort(context, error, self.auth)
        response = classification_pb2.ClassificationResponse()
        _fill_spec(response.model_spec, answer.name, answer.version, answer.signature_name)
        _fill_classifications(response.result, answer.results)
        return response

    async def Regress(self, request, context):
        try:
            target = target_from_spec(request.model_spec)
            metadata = _authorize(self.auth, context, target.name, "regress")
            answer = await self.engine.regress(target, serialized_examples(request.input), entrypoint="GRPC",
                                             route_key=metadata.get(_ROUTE_KEY))
        except ServingError as error:
            await _abort(context, error, self.auth)
        response = regression_pb2.RegressionResponse()
        _fill_spec(response.model_spec, answer.name, answer.version, answer.signature_name)
        _fill_regressions(response.result, answer.results)
        return response

    async def MultiInference(self, request, context):
        try:
            if not request.tasks:
                raise invalid_argument("Inference request should have at least one task")
            examples = serialized_examples(request.input)
            first = request.tasks[0].model_spec
            response = inference_pb2.MultiInferenceResponse()
            seen_signatures = set()
            for task in request.tasks:
                spec = task.model_spec
                if spec.name != first.name or spec.WhichOneof("version_choice") != first.WhichOneof("version_choice") \
                        or spec.version.value != first.version.value or spec.version_label != first.version_label:
                    raise invalid_argument("Input request contains multiple models or versions; all tasks must "
                                           "name the same model and version")
                if spec.signature_name in seen_signatures:
                    raise invalid_argument("Duplicate evaluation of signature: " + (spec.signature_name or
                                                                                    "serving_default"))
                seen_signatures.add(spec.signature_name)
                target = target_from_spec(spec)
                _authorize(self.auth, context, target.name, task.method_name.rpartition("/")[2] or None)
                result = response.results.add()
                if task.method_name == "tensorflow/serving/classify":
                    answer = await self.engine.classify(target, examples, entrypoint="GRPC")
                    _fill_classifications(result.classification_result, answer.results)
                elif task.method_name == "tensorflow/serving/regress":
                    answer = await self.engine.regress(target, examples, entrypoint="GRPC")
                    _fill_regressions(result.regression_result, answer.results)
                else:
                    raise invalid_argument(f"Unsupported signature method_name: {task.method_name}")
                _fill_spec(result.model_spec, answer.name, answer.version, answer.signature_name)
        except ServingError as error:
            await _abort(context, error, self.auth)
        return response

    async def GetModelMetadata(self, request, context):
        try:
            target = target_from_spec(request.model_spec)
            _authorize(self.auth, context, target.name, "metadata")
            if list(request.metadata_field) != ["signature_def"]:
                raise invalid_argument("Metadata field signature_def must be requested; nothing else is available")
            version, signature_map = self.engine.metadata(target, entrypoint="GRPC")
        except ServingError as error:
            await _abort(context, error, self.auth)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _fill_spec(response.model_spec, target.name, version)
        response.metadata["signature_def"].Pack(signature_map)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, engine: Engine, auth: Authenticator | None = None, paths: PathPolicy | None = None) -> None:
        self.engine = engine
        self.auth = auth
        self.paths = paths

    async def GetModelStatus(self, request, context):
        try:
            target = target_from_spec(request.model_spec)
            _authorize(self.auth, context, target.name, "status")
            statuses = self.engine.status(target)
        except ServingError as error:
            await _abort(context, error, self.auth)
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in statuses:
            entry = response.model_version_status.add()
            entry.version = status.version
            entry.state = _STATE_NUMBERS[status.state]
            entry.status.error_code = status.error_code.value
            entry.status.error_message = _for_caller(self.auth, context, status.error_message)
        return response

    async def HandleReloadConfigRequest(self, request, context):
        """As TF Serving: the status goes in the response and, when not OK, in the RPC status too."""
        response = model_management_pb2.ReloadConfigResponse()
        try:
            _authorize(self.auth, context, None, None)
            validate_model_server_config(request.config, "ReloadConfigRequest")
            config = request.config
            if self.paths is not None:  # the management API's path rule holds here too
                config = self.paths.check_config(config, self.engine.manager.config)
            await self.engine.reload_config(config)
        except ConfigError as error:
            log.error("ReloadConfig failed: %s", error)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except ServingError as error:
            log.error("ReloadConfig failed: %s", error.message)
            await _abort(context, error)
        return response


def _fill_classifications(result, rows) -> None:
    for row in rows:
        classifications = result.classifications.add()
        for label, score in row:
            entry = classifications.classes.add()
            entry.label = label
            entry.score = score


def _fill_regressions(result, values) -> None:
    for value in values:
        result.regressions.add().value = value


# TF Serving's gRPC server accepts messages up to INT32_MAX bytes (server.cc:
# builder.SetMaxMessageSize(std::numeric_limits<int32_t>::max()), which sets the receive limit);
# the send limit stays gRPC's default, none.
MAX_MESSAGE_BYTES = 2**31 - 1
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_SIMPLE_ATOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)[ \t\n\v\f\r]*", re.ASCII)

ChannelArgument = tuple[str, int | str]


class ChannelArgumentError(ValueError):
    """An entry of --grpc_channel_arguments that is not ``key=value``."""


def parse_channel_arguments(text: str) -> list[ChannelArgument]:
    """``--grpc_channel_arguments`` as TF Serving's ``parseGrpcChannelArgs`` reads it.

    Entries are split at every comma, then each at ``=`` into key and value; a value that
    ``absl::SimpleAtoi`` reads as an int32 (surrounding whitespace and a sign allowed) is passed as
    an integer, anything else as a string (gRPC ignores, with a log line, a string where it wants an
    integer). TF Serving indexes past the end of the split for an entry without ``=`` (an empty
    entry, a trailing comma): undefined behaviour there, an error here. Like TF Serving, text after
    a second ``=`` is dropped; we say so in the log.
    """
    arguments: list[ChannelArgument] = []
    if not text:
        return arguments
    for entry in text.split(","):
        pieces = entry.split("=")
        if len(pieces) < 2:
            raise ChannelArgumentError(f"--grpc_channel_arguments entry {entry!r} is not key=value "
                                       f"(in {text!r})")
        key, value = pieces[0], pieces[1]
        if len(pieces) > 2:
            log.warning("--grpc_channel_arguments entry %r: using %r as the value of %s and dropping the rest, "
                        "as TF Serving does", entry, value, key)
        match = _SIMPLE_ATOI.fullmatch(value)
        number = int(match.group(1)) if match else None
        if number is not None and _INT32_MIN <= number <= _INT32_MAX:
            arguments.append((key, number))
        else:
            arguments.append((key, value))
    return arguments


def server_options(channel_arguments: Sequence[ChannelArgument] = ()) -> list[ChannelArgument]:
    """The grpc.aio server's options: TF Serving's message limit, then the user's arguments.

    Each key appears once, with its last value: an argument overrides our default (so
    ``grpc.max_receive_message_length`` lowers or raises the limit) and a later duplicate an
    earlier one, which TF Serving's own test harness relies on when it appends
    ``grpc.so_reuseaddr=1`` to a test's arguments.
    """
    options: dict[str, int | str] = {
        "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
        # Two servers must not share a port silently (gRPC turns SO_REUSEPORT on by default).
        "grpc.so_reuseport": 0,
    }
    for key, value in channel_arguments:
        options.pop(key, None)
        options[key] = value
    return list(options.items())


def make_grpc_server(engine: Engine, auth: Authenticator | None = None, *,
                     channel_arguments: Sequence[ChannelArgument] = (),
                     response_tensor_content: bool = False, enable_profiler: bool = False,
                     paths: PathPolicy | None = None,
                     decode_limits: DecodeLimits | None = None, control=None) -> grpc.aio.Server:
    interceptors = [RefuseBeforeReading(auth)] if auth is not None else []
    server = grpc.aio.server(options=server_options(channel_arguments), interceptors=interceptors)
    if enable_profiler:
        server.add_generic_rpc_handlers([ProfilerService(auth)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(engine, auth, tensor_content=response_tensor_content, decode_limits=decode_limits), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(engine, auth, paths), server)
    from .v2_grpc import add_inference_service  # here: v2_grpc builds on this module's helpers

    add_inference_service(server, engine, auth, control)
    return server
