"""TF Serving's REST API on tornado, plus the list and health endpoints its users ask for.

Handlers are thin: they parse the URL and body, call the engine, and write the
answer. Errors are written as ``{"error": "..."}`` with the HTTP status TF
Serving uses for the canonical code.
"""

from __future__ import annotations

import asyncio
import logging
import re

import tornado.web
from google.protobuf import json_format

from ..engine import tensors
from ..engine.engine import Answer, Engine, Target
from ..engine.errors import Code, ServingError, invalid_argument
from ..engine.manager import status_to_json
from ..wire import ENGINE_SECRET_HEADER, ROUTE_KEY_HEADER, VERSION_HEADER
from .auth import Access, Authenticator

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_DISCARDED_BODY_BYTES = 1024 * 1024 * 1024

_MODEL_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?/?$"
)


class _Base(tornado.web.RequestHandler):
    """Shared error writing: TF Serving's JSON error body and status mapping."""

    engine: Engine

    def initialize(
        self,
        engine: Engine,
        timeout_seconds: float | None = None,
        max_body_bytes: int = 0,
        auth: Authenticator | None = None,
    ) -> None:
        self.engine = engine
        self.timeout_seconds = timeout_seconds
        self.max_body_bytes = max_body_bytes
        self.auth = auth

    def access(self) -> Access:
        """The caller's rights; raises UNAUTHENTICATED or PERMISSION_DENIED (as a ServingError)."""
        if self.auth is None:
            return Access(owner=True)
        headers = self.request.headers
        return self.auth.authenticate(headers.get(ENGINE_SECRET_HEADER), headers.get("Authorization"))

    def require_owner(self) -> bool:
        """For endpoints that are not one model's: answers 401/403 and returns False unless the owner calls."""
        try:
            self.access().require(None, None)
            return True
        except ServingError as error:
            self.write_serving_error(error)
            return False

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")

    def write_json(self, body: bytes, status: int = 200) -> None:
        self.set_status(status)
        self.finish(body)

    def write_error_json(self, status: int, message: str) -> None:
        self.clear_header(VERSION_HEADER)
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(tensors.encode_json({"error": message}))

    def write_serving_error(self, error: ServingError) -> None:
        self.write_error_json(error.code.http_status, error.message)

    def write_error(self, status_code: int, **kwargs) -> None:
        """Unexpected failures still answer in TF Serving's format, never tornado's HTML page."""
        reason = self._reason
        exc_info = kwargs.get("exc_info")
        if exc_info and isinstance(exc_info[1], tornado.web.HTTPError) and exc_info[1].log_message:
            reason = exc_info[1].log_message
        self.finish(tensors.encode_json({"error": reason}))

    def malformed(self) -> ServingError:
        return invalid_argument(f"Malformed request: {self.request.method} {self.request.path}")

    def parse_target(self, signature_name: str = "") -> tuple[Target, re.Match]:
        match = _MODEL_PATH.match(self.request.path)
        if match is None:
            raise self.malformed()
        version = match.group("version")
        if version is not None and not version.isdigit():
            raise self.malformed()
        target = Target(
            name=match.group("name"),
            version=int(version) if version is not None else None,
            label=match.group("label"),
            signature_name=signature_name,
        )
        return target, match


class ModelListHandler(_Base):
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
        self.write_json(tensors.encode_json({"models": models}))


@tornado.web.stream_request_body
class ModelHandler(_Base):
    """Status, metadata, predict, classify and regress under ``/v1/models/{name}...``."""

    def prepare(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False
        if self.request.method != "POST":
            return
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            # Read and discard the body, then answer 413: closing mid-upload would make most
            # clients report a reset connection instead of our error.
            self._too_large = True
            self._size = int(length)
            if self._size <= MAX_DISCARDED_BODY_BYTES:
                self.request.connection.set_max_body_size(self._size + 1)
            return
        self.request.connection.set_max_body_size(self.max_body_bytes + 1)

    def data_received(self, chunk: bytes) -> None:
        if self._too_large:
            return
        self._size += len(chunk)
        if self._size > self.max_body_bytes:
            self._too_large = True
            self._chunks = []
            return
        self._chunks.append(chunk)

    async def get(self) -> None:
        try:
            target, match = self.parse_target()
            self.access().require(target.name, "metadata" if match.group("metadata") else "status")
            if match.group("verb") is not None:
                raise self.malformed()
            if match.group("metadata"):
                self._write_metadata(target)
            else:
                statuses = self.engine.status(target)
                body = {"model_version_status": [status_to_json(status) for status in statuses]}
                self.write_json(tensors.encode_json(body))
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
        self.write_json(tensors.encode_json(body))

    async def post(self) -> None:
        body = b"".join(self._chunks)
        self._chunks = []
        try:
            access = self.access()
            if self._too_large:
                self.write_error_json(
                    413, f"Request body of {self._size} bytes exceeds the limit of {self.max_body_bytes} bytes"
                )
                return
            target, match = self.parse_target()
            verb = match.group("verb")
            if match.group("metadata") or verb not in ("predict", "classify", "regress"):
                access.require(target.name, None)
                raise self.malformed()
            access.require(target.name, verb)
            request = tensors.parse_predict_body(body) if verb == "predict" else tensors.parse_json_body(body)
            signature_name = request.get("signature_name", "")
            if not isinstance(signature_name, str):
                raise invalid_argument("'signature_name' attribute must be a string")
            target = Target(target.name, target.version, target.label, signature_name)
            answer = await self._with_timeout(self._call(verb, target, request))
            self.set_header(VERSION_HEADER, str(answer.version))
            self.write_json(self._encode(verb, answer))
        except ServingError as error:
            self.write_serving_error(error)

    async def _call(self, verb: str, target: Target, request: dict) -> Answer:
        route_key = self.request.headers.get(ROUTE_KEY_HEADER)
        if verb == "predict":
            row_format: list[bool] = []

            def decode(signature):
                inputs, row = tensors.decode_predict_request(request, signature)
                row_format.append(row)
                return inputs

            answer = await self.engine.predict(target, decode, entrypoint="REST", route_key=route_key)
            answer.row_format = row_format[0]
            return answer
        examples = tensors.examples_from_json(request)
        if verb == "classify":
            return await self.engine.classify(target, examples, entrypoint="REST", route_key=route_key)
        return await self.engine.regress(target, examples, entrypoint="REST", route_key=route_key)

    @staticmethod
    def _encode(verb: str, answer: Answer) -> bytes:
        if verb == "predict":
            return tensors.encode_predict_response(answer.outputs, answer.row_format)
        if verb == "classify":
            results = [[[label, score] for label, score in row] for row in answer.results]
            return tensors.encode_json({"results": results})
        return tensors.encode_json({"results": answer.results})

    async def _with_timeout(self, call):
        if not self.timeout_seconds:
            return await call
        try:
            async with asyncio.timeout(self.timeout_seconds):  # unlike wait_for, creates no extra task
                return await call
        except TimeoutError:
            raise ServingError(
                Code.DEADLINE_EXCEEDED, f"Request timed out after {self.timeout_seconds * 1000:.0f} ms"
            ) from None


class MalformedHandler(_Base):
    """Anything else under ``/v1/``: TF Serving answers these as malformed requests."""

    def _malformed(self) -> None:
        if self.require_owner():
            self.write_serving_error(self.malformed())

    get = post = put = delete = patch = _malformed  # type: ignore[assignment]


class LiveHandler(_Base):
    """Liveness: the process answers HTTP."""

    def get(self) -> None:
        self.write_json(tensors.encode_json({"status": "live"}))


class ReadyHandler(_Base):
    """Readiness: every configured model has a version AVAILABLE (503 names those that do not)."""

    def get(self) -> None:
        if not self.require_owner():
            return
        ready, waiting = self.engine.manager.is_ready()
        if ready:
            self.write_json(tensors.encode_json({"status": "ready"}))
        else:
            self.write_json(tensors.encode_json({"status": "not ready", "models_not_available": waiting}), 503)


class MetricsHandler(_Base):
    def set_default_headers(self) -> None:
        from ..engine.metrics import CONTENT_TYPE

        self.set_header("Content-Type", CONTENT_TYPE)

    def get(self) -> None:
        if self.require_owner():
            self.finish(self.engine.metrics.exposition())


class NotFoundHandler(_Base):
    def prepare(self) -> None:
        self.write_error_json(404, f"Not found: {self.request.method} {self.request.path}")


def make_app(
    engine: Engine,
    *,
    metrics_path: str | None = None,
    timeout_ms: int = 0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    auth: Authenticator | None = None,
) -> tornado.web.Application:
    options = {"engine": engine, "timeout_seconds": timeout_ms / 1000 if timeout_ms else None,
               "max_body_bytes": max_body_bytes, "auth": auth}
    routes: list = [
        (r"/v1/models/?", ModelListHandler, options),
        (r"/v1/models/[^/]+.*", ModelHandler, options),
        (r"/v1/.*", MalformedHandler, options),
        (r"/healthz", LiveHandler, options),
        (r"/readyz", ReadyHandler, options),
    ]
    if metrics_path:
        routes.insert(0, (re.escape(metrics_path), MetricsHandler, options))
    return tornado.web.Application(
        routes, default_handler_class=NotFoundHandler, default_handler_args=options, compress_response=False
    )
