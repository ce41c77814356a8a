"""TF Serving's REST API on tornado, plus the list and health endpoints its users ask for.

Handlers are thin: they parse the URL and body, call the engine, and write the
answer. Errors are written as ``{"error": "..."}`` with the HTTP status TF
Serving uses for the canonical code.

Every handler streams its body (``stream_request_body``) and settles who is calling in
``prepare``, from the headers and the path alone: a caller who may not make the request is
answered before its body is read, and only an admitted :predict, :classify or :regress
keeps a body (up to ``--max_request_body_bytes``). A large :predict body is parsed and
decoded in a worker process (:class:`~jupyter_tfserve.engine.codecs.DecodeWorkers`),
so that seconds of JSON parsing never stop the event loop.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import tornado.web
from google.protobuf import json_format

from ..engine.codecs import json_encode
from ..engine.codecs.decode_workers import DecodeWorkers
from ..engine.codecs.limits import DecodeLimits
from ..engine.engine import Engine, Target
from ..engine.errors import ServingError, invalid_argument, not_found
from ..engine.manager import status_to_json
from ..wire import ENGINE_SECRET_ENV, ENGINE_SECRET_HEADER, ROUTE_KEY_HEADER, VERSION_HEADER
from .auth import Access, Authenticator
from .model_call import CallSettings, DirectModelCalls, answer_call, message_for, parse_target, with_timeout

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_DISCARDED_BODY_BYTES = 1024 * 1024 * 1024
# A request refused before its body (401, 403, 404, a malformed path) whose body is at most this large
# is answered once the body is in, read and dropped, so that a client still sending it sees the answer.
# A larger (or chunked) body is not read: the answer goes out at once and the connection is closed,
# which a client in mid-upload may see as a reset connection.
REFUSED_BODY_DRAIN_BYTES = 64 * 1024

@tornado.web.stream_request_body
class _Base(tornado.web.RequestHandler):
    """Shared error writing (TF Serving's JSON error body and status mapping) and the body policy."""

    engine: Engine

    def initialize(
        self,
        engine: Engine,
        timeout_seconds: float | None = None,
        max_body_bytes: int = 0,
        auth: Authenticator | None = None,
        decode_limits: DecodeLimits | None = None,
        decoders: DecodeWorkers | None = None,
        call_settings: CallSettings | None = None,
    ) -> None:
        self.engine = engine
        self.timeout_seconds = timeout_seconds
        self.max_body_bytes = max_body_bytes
        self.auth = auth
        self.decode_limits = decode_limits or DecodeLimits()
        self.decoders = decoders
        # One per application (make_app), shared with the httptools layer's direct path.
        self.call_settings = call_settings or CallSettings(engine, timeout_seconds, self.decode_limits, decoders)
        self._caller: Access | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._keep_body = False
        self._too_large = False

    # -- who calls, before any body ---------------------------------------------------------------

    def admit(self) -> None:
        """Raise the ServingError that answers the request, when the headers and path settle it."""

    def prepare(self) -> None:
        try:
            self.admit()
        except ServingError as error:
            self._refuse(error.code.http_status, error.message)
            return
        length = self.request.headers.get("Content-Length", "0")
        if not (self._keep_body or self._too_large) and length.isdigit() and int(length) > self.max_body_bytes:
            # A body this request does not take, larger than tornado would read: answered here, in our
            # format, rather than by tornado's bare "400 Bad Request".
            self._refuse(413, f"Request body of {length} bytes exceeds the limit of {self.max_body_bytes} bytes")

    def _refuse(self, status: int, message: str) -> None:
        headers = self.request.headers
        length = headers.get("Content-Length", "0")
        chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        if chunked or (length.isdigit() and int(length) > REFUSED_BODY_DRAIN_BYTES):
            # Tornado reads no more of the body and closes the connection once this is written; saying
            # so keeps a client from sending its next request on it.
            self.set_header("Connection", "close")
            self.write_error_json(status, self.for_caller(message))
            return
        # Answered once the (small or absent) body is in, which keeps the connection alive: tornado
        # calls the method named after the request's verb when the body ends, and this instance's
        # attribute stands in for the class's method.
        setattr(self, self.request.method.lower(),
                lambda *args: self.write_error_json(status, self.for_caller(message)))

    def data_received(self, chunk: bytes) -> None:
        if not self._keep_body:
            return  # a body this request does not take is dropped as it arrives
        self._size += len(chunk)
        if self._size > self.max_body_bytes:
            self._too_large = True
            self._keep_body = False
            self._chunks = []
            return
        self._chunks.append(chunk)

    def take_body(self) -> bytes | None:
        """The admitted body, or None once a body past ``--max_request_body_bytes`` has been answered 413."""
        body = b"".join(self._chunks)
        self._chunks = []
        if self._too_large:
            self.write_error_json(
                413, f"Request body of {self._size} bytes exceeds the limit of {self.max_body_bytes} bytes")
            return None
        return body

    def access(self) -> Access:
        """The caller's rights; raises UNAUTHENTICATED or PERMISSION_DENIED (as a ServingError)."""
        if self._caller is not None:
            return self._caller
        if self.auth is None:
            self._caller = Access(owner=True)
        else:
            headers = self.request.headers
            self._caller = self.auth.authenticate(headers.get(ENGINE_SECRET_HEADER), headers.get("Authorization"))
        return self._caller

    def require_owner(self) -> bool:
        """For endpoints that are not one model's: answers 401/403 and returns False unless the owner calls."""
        try:
            self.access().require(None, None)
            return True
        except ServingError as error:
            self.write_serving_error(error)
            return False

    # -- answers ----------------------------------------------------------------------------------

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")

    def write_json(self, body: bytes, status: int = 200) -> None:
        self.set_status(status)
        self.finish(body)

    def write_error_json(self, status: int, message: str) -> None:
        self.clear_header(VERSION_HEADER)
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json_encode.encode_json({"error": message}))

    def write_serving_error(self, error: ServingError) -> None:
        self.write_error_json(error.code.http_status, self.for_caller(error.message))

    def for_caller(self, message: str) -> str:
        """A message as the caller may read it: a share token's bearer does not see the engine's file paths."""
        return message_for(self._caller, message)

    def write_error(self, status_code: int, **kwargs) -> None:
        """Unexpected failures still answer in TF Serving's format, never tornado's HTML page."""
        reason = self._reason
        exc_info = kwargs.get("exc_info")
        if exc_info and isinstance(exc_info[1], tornado.web.HTTPError) and exc_info[1].log_message:
            reason = exc_info[1].log_message
        self.set_header("Content-Type", "application/json")
        self.finish(json_encode.encode_json({"error": reason}))

    def malformed(self) -> ServingError:
        return invalid_argument(f"Malformed request: {self.request.method} {self.request.path}")

    def parse_target(self) -> tuple[Target, re.Match]:
        parsed = parse_target(self.request.path)
        if parsed is None:
            raise self.malformed()
        return parsed


class _OwnerOnly(_Base):
    """Endpoints that are not one model's: the owner's alone, refused before any body."""

    def admit(self) -> None:
        self.access().require(None, None)


class ModelListHandler(_OwnerOnly):
    """``GET /v1/models``: every model with its versions, states and labels (not in TF Serving)."""

    def get(self) -> None:
        if not self.require_owner():
            return
        manager = self.engine.manager
        models = []
        for name in manager.model_names():
            try:
                models.append(manager.describe(name))
            except ServingError:
                continue  # removed between listing and describing
        self.write_json(json_encode.encode_json({"models": models}))


class ModelHandler(_Base):
    """Status, metadata, predict, classify and regress under ``/v1/models/{name}...``."""

    def admit(self) -> None:
        access = self.access()
        target, match = self.parse_target()
        verb = match.group("verb")
        if self.request.method == "POST":
            if match.group("metadata") or verb not in ("predict", "classify", "regress"):
                access.require(target.name, None)
                raise self.malformed()
            access.require(target.name, verb)
            self._admit_body()
        elif self.request.method == "GET":
            access.require(target.name, "metadata" if match.group("metadata") else "status")
            if verb is not None:
                raise self.malformed()
        self._target, self._verb, self._metadata = target, verb, bool(match.group("metadata"))

    def _admit_body(self) -> None:
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            # An admitted caller's oversized body is read and dropped, then answered 413: closing
            # mid-upload would make most clients report a reset connection instead of our error.
            self._too_large = True
            self._size = int(length)
            if self._size <= MAX_DISCARDED_BODY_BYTES:
                self.request.connection.set_max_body_size(self._size + 1)
            return
        self._keep_body = True
        chunked = "chunked" in self.request.headers.get("Transfer-Encoding", "").lower()
        # A chunked body's size shows as it arrives: past the limit data_received drops it (413 at the
        # end), up to the most that is read for nothing; tornado itself would answer a bare 400.
        self.request.connection.set_max_body_size(MAX_DISCARDED_BODY_BYTES if chunked else self.max_body_bytes + 1)

    async def get(self) -> None:
        try:
            target = self._target
            if self._metadata:
                self._write_metadata(target)
            else:
                statuses = self.engine.status(target)
                body = {"model_version_status": [status_to_json(status) for status in statuses]}
                if not self.access().owner:
                    for entry in body["model_version_status"]:
                        entry["status"]["error_message"] = self.for_caller(entry["status"]["error_message"])
                self.write_json(json_encode.encode_json(body))
        except ServingError as error:
            self.write_serving_error(error)

    def _write_metadata(self, target: Target) -> None:
        version, signature_map = self.engine.metadata(target)
        body = {
            "model_spec": {"name": target.name, "signature_name": "", "version": str(version)},
            "metadata": {
                "signature_def": json_format.MessageToDict(
                    signature_map, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
                )
            },
        }
        self.write_json(json_encode.encode_json(body))

    async def post(self) -> None:
        body = self.take_body()
        if body is None:
            return
        status, version, payload = await answer_call(self.call_settings, self._verb, self._target, body,
                                                     self.request.headers.get(ROUTE_KEY_HEADER), self.access())
        if version is not None:
            self.set_header(VERSION_HEADER, version)
        self.write_json(payload, status)


    async def _with_timeout(self, call):
        """V2's and Seldon's calls, under the same --rest_api_timeout_in_ms as TF Serving's."""
        return await with_timeout(self.call_settings, call)


class MalformedHandler(_OwnerOnly):
    """Anything else under ``/v1/``: TF Serving answers these as malformed requests."""

    def _malformed(self) -> None:
        if self.require_owner():
            self.write_serving_error(self.malformed())

    get = post = put = delete = patch = _malformed  # type: ignore[assignment]


class LiveHandler(_Base):
    """Liveness: the process answers HTTP."""

    def get(self) -> None:
        self.write_json(json_encode.encode_json({"status": "live"}))


class ReadyHandler(_OwnerOnly):
    """Readiness: every configured model has a version AVAILABLE (503 names those that do not)."""

    def get(self) -> None:
        if not self.require_owner():
            return
        ready, waiting = self.engine.manager.is_ready()
        if ready:
            self.write_json(json_encode.encode_json({"status": "ready"}))
        else:
            self.write_json(json_encode.encode_json({"status": "not ready", "models_not_available": waiting}), 503)


class MetricsHandler(_OwnerOnly):
    def get(self) -> None:
        from ..engine.metrics import CONTENT_TYPE

        if self.require_owner():
            self.set_header("Content-Type", CONTENT_TYPE)  # errors stay JSON
            self.finish(self.engine.metrics.exposition())


class NotFoundHandler(_Base):
    def admit(self) -> None:
        raise not_found(f"Not found: {self.request.method} {self.request.path}")


def make_app(
    engine: Engine,
    *,
    metrics_path: str | None = None,
    timeout_ms: int = 0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    auth: Authenticator | None = None,
    decode_limits: DecodeLimits | None = None,
    decode_workers: int = 2,
    control: Any = None,
) -> tornado.web.Application:
    """The REST application; ``decode_workers`` processes (0: none, decode inline) take large :predict bodies."""
    decode_limits = decode_limits or DecodeLimits()
    decoders = DecodeWorkers(decode_limits, decode_workers, drop_env=(ENGINE_SECRET_ENV,)) if decode_workers else None
    timeout_seconds = timeout_ms / 1000 if timeout_ms else None
    options = {"engine": engine, "timeout_seconds": timeout_seconds, "max_body_bytes": max_body_bytes, "auth": auth,
               "decode_limits": decode_limits, "decoders": decoders,
               "call_settings": CallSettings(engine, timeout_seconds, decode_limits, decoders)}
    routes: list = [
        (r"/v1/models/?", ModelListHandler, options),
        (r"/v1/models/[^/]+.*", ModelHandler, options),
        (r"/v1/.*", MalformedHandler, options),
        (r"/healthz", LiveHandler, options),
        (r"/readyz", ReadyHandler, options),
    ]
    from .seldon_rest import seldon_routes  # here: both build on this module's handlers
    from .v2_rest import v2_routes

    routes += v2_routes(options) + seldon_routes(options)
    if metrics_path:
        routes.insert(0, (re.escape(metrics_path), MetricsHandler, options))
    direct = DirectModelCalls(options["call_settings"], auth=auth, max_body_bytes=max_body_bytes,
                              reserved_paths=(metrics_path,) if metrics_path else ())
    return tornado.web.Application(
        routes, default_handler_class=NotFoundHandler, default_handler_args=options, compress_response=False,
        decoders=decoders, control=control,  # control: the management API, for V2's repository load/unload
        direct_model_calls=direct,  # the httptools layer's way past RequestHandler for admitted model calls
    )
