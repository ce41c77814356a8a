"""KServe V2 (Open Inference Protocol) REST on the engine's REST port, beside TF Serving's API.

The handlers share TF Serving's body policy (credentials settled from the headers before any
body is read, ``--max_request_body_bytes`` enforced on the wire and again after gzip/deflate) and
its request path: an infer request is decoded once against the signature that will answer and
run through :meth:`Engine.predict`, so batching, traffic splits, shadows and metrics all apply.
Errors are V2's ``{"error": "..."}`` with KServe's statuses.
"""

from __future__ import annotations

import logging
import re
import zlib

import orjson

from ..engine.codecs import v2
from ..engine.codecs.json_encode import encode_json
from ..engine.engine import LOAD_WAIT_SECONDS, Target
from ..engine.errors import Code, ServingError, invalid_argument, not_found
from ..wire import ROUTE_KEY_HEADER, VERSION_HEADER
from .rest import ModelHandler, _OwnerOnly
from .rest_wire import VERSION

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics"]
_V2_MODEL_PATH = re.compile(
    r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?:/(?P<verb>ready|infer))?/?$"
)


def repository_index(manager) -> list[dict]:
    """Every version the engine knows, in the repository extension's states."""
    index = []
    for name in manager.model_names():
        try:
            statuses = manager.describe(name)["model_version_status"]
        except ServingError:
            continue  # removed between listing and describing
        for status in statuses:
            state = status["state"]
            index.append({"name": name, "version": status["version"],
                          "state": "READY" if state == "AVAILABLE" else
                          "LOADING" if state in ("START", "LOADING") else
                          "UNLOADING" if state == "UNLOADING" else "UNAVAILABLE",
                          "reason": status["status"].get("error_message", "")})
    return index


async def repository_action(control, engine, name: str, action: str) -> None:
    """The repository extension's load or unload of ``name``, through the management API (``control``)."""
    if control is None:
        raise ServingError(Code.UNIMPLEMENTED, "this engine has no model repository to load from "
                                               "(start it with --model_repository_root)")
    if action == "unload":
        await control.unload(name)
    elif not engine.manager.has_model(name):
        await control.load_model({"name": name, "base_path": name, "wait_seconds": LOAD_WAIT_SECONDS})


def model_statistics(engine, name: str | None, version: str | None) -> dict:
    """The statistics extension's answer: every served model, one model, or one of its versions."""
    manager = engine.manager
    if name is None:
        versions = {model: manager.available_versions(model) for model in manager.model_names()}
    else:
        manager.require(name)
        served = manager.available_versions(name)
        if version is not None:
            if not VERSION.fullmatch(version) or int(version) not in served:
                raise not_found(f"Version {version} of model {name} is not AVAILABLE (available: {served})")
            served = [int(version)]
        versions = {name: served}
    return {"model_stats": engine.statistics.model_stats(versions)}


class V2StatisticsHandler(_OwnerOnly):
    """``GET /v2/models[/{name}[/versions/{version}]]/stats``: the owner's, since the engine started."""

    def get(self, name: str | None = None, version: str | None = None) -> None:
        if not self.require_owner():
            return
        try:
            self.write_json(encode_json(model_statistics(self.engine, name, version)))
        except ServingError as error:
            self.write_serving_error(error)


class _TooLarge(Exception):
    """A decompressed body past the limit: answered 413, like one too large on the wire."""


class V2ServerHandler(_OwnerOnly):
    """``GET /v2`` (server metadata), ``/v2/health/ready`` and ``POST /v2/repository/index``: the owner's."""

    def get(self) -> None:
        if not self.require_owner():
            return
        if self.request.path.rstrip("/").endswith("/ready"):
            ready, waiting = self.engine.manager.is_ready()
            if not ready:
                self.write_error_json(503, f"Models not ready: {', '.join(waiting)}")
                return
            self.write_json(b"")
            return
        from .. import __version__

        self.write_json(encode_json({"name": "jupyter-tfserve", "version": __version__, "extensions": EXTENSIONS}))

    def post(self) -> None:
        if not self.require_owner():
            return
        self.write_json(encode_json(repository_index(self.engine.manager)))


class V2RepositoryModelHandler(_OwnerOnly):
    """``POST /v2/repository/models/{name}/load|unload``: the owner's, mapped onto the management API.

    Load adds the model from the engine's repository (``{name}`` under the repository root,
    the path rule of the management API) and answers once its versions have settled; a model
    already served is left as it is, as Triton answers a load of a loaded model. Unload
    removes the model from the config, as ``DELETE /api/models/{name}`` does.
    """

    async def post(self, name: str, action: str) -> None:
        if not self.require_owner():
            return
        try:
            await repository_action(self.application.settings.get("control"), self.engine, name, action)
        except ServingError as error:
            self.write_serving_error(error)
            return
        self.write_json(b"")


class V2LiveHandler(_OwnerOnly):
    """``GET /v2/health/live``: open like ``/healthz``, since clients probe it before anything else."""

    def admit(self) -> None:
        pass

    def get(self) -> None:
        self.write_json(b"")


class V2ModelHandler(ModelHandler):
    """Metadata, readiness and infer under ``/v2/models/{name}[/versions/{version}]``."""

    def admit(self) -> None:
        access = self.access()
        match = _V2_MODEL_PATH.match(self.request.path)
        if match is None:
            raise not_found(f"Not found: {self.request.method} {self.request.path}")
        version = match.group("version")
        if version is not None and not VERSION.fullmatch(version):
            raise invalid_argument(f"Version {version!r} is not a version number")
        self._target = Target(match.group("name"), int(version) if version is not None else None)
        self._verb = match.group("verb") or "metadata"
        if self.request.method == "POST" and self._verb == "infer":
            access.require(self._target.name, "predict")
            self._admit_body()
        elif self.request.method == "GET" and self._verb != "infer":
            access.require(self._target.name, "metadata")
        else:
            access.require(self._target.name, None)
            raise invalid_argument(f"{self.request.method} is not allowed on {self.request.path}")

    async def get(self) -> None:
        try:
            if self._verb == "ready":
                statuses = self.engine.status(self._target)
                if not any(status.state.name == "AVAILABLE" for status in statuses):
                    self.write_error_json(503, f"Model {self._target.name} is not ready")
                    return
                self.write_json(b"")
                return
            self.write_json(encode_json(self._metadata_body()))
        except ServingError as error:
            self.write_serving_error(error)

    def _metadata_body(self) -> dict:
        target, manager = self._target, self.engine.manager
        with manager.acquire(target.name, target.version, target.label) as handle:
            signature = handle.servable.signature(target.signature)
            version = handle.version
        versions = [str(status.version) for status in self.engine.status(Target(target.name))
                    if status.state.name == "AVAILABLE"]
        return {"name": target.name, "versions": versions or [str(version)], "platform": "tensorflow_savedmodel",
                "inputs": v2.tensor_metadata(signature.inputs), "outputs": v2.tensor_metadata(signature.outputs)}

    async def post(self) -> None:
        body = self.take_body()
        if body is None:
            return
        try:
            request = self._parse(self._decompress(body))
            target = Target(self._target.name, self._target.version, None, request.signature_name)
            answer = await self._with_timeout(self.engine.predict(
                target, lambda signature: v2.decode_inputs(request, signature), output_filter=request.outputs,
                entrypoint="REST", route_key=self.request.headers.get(ROUTE_KEY_HEADER)))
            entries, chunks = v2.encode_outputs(answer.outputs, request.outputs, request.binary_outputs,
                                                request.binary_default)
            response = {"model_name": answer.name, "model_version": str(answer.version), "outputs": entries}
            if isinstance(request.header.get("id"), str):
                response["id"] = request.header["id"]
            header = encode_json(response)
            self.set_header(VERSION_HEADER, str(answer.version))
            if chunks:
                self.set_header("Content-Type", "application/octet-stream")
                self.set_header(HEADER_LENGTH, str(len(header)))
                self.write_json(header + b"".join(chunks))
            else:
                self.write_json(header)
        except _TooLarge as error:
            self.write_error_json(413, str(error))
        except ServingError as error:
            self.write_serving_error(error)

    def _decompress(self, body: bytes) -> bytes:
        """A gzip or deflate body, inflated to at most the body limit (a small bomb stays small)."""
        encoding = self.request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            return body
        if encoding not in ("gzip", "deflate"):
            raise invalid_argument(f"Unsupported Content-Encoding {encoding!r} (gzip, deflate or none)")
        inflater = zlib.decompressobj(31 if encoding == "gzip" else 15)
        try:
            data = inflater.decompress(body, self.max_body_bytes + 1)
        except zlib.error as error:
            raise invalid_argument(f"The {encoding} body cannot be decompressed: {error}") from None
        if len(data) > self.max_body_bytes or inflater.unconsumed_tail:
            raise _TooLarge(f"The decompressed body exceeds the limit of {self.max_body_bytes} bytes")
        if not inflater.eof:
            raise invalid_argument(f"The {encoding} body is truncated")
        return data

    def _parse(self, body: bytes) -> v2.InferRequest:
        claimed = self.request.headers.get(HEADER_LENGTH)
        if claimed is None:
            header_bytes, binary = body, b""
        else:
            if not claimed.isdigit() or int(claimed) > len(body):
                raise invalid_argument(f"{HEADER_LENGTH} is {claimed!r}, but the body holds {len(body)} bytes")
            header_bytes, binary = body[:int(claimed)], body[int(claimed):]
        try:
            header = orjson.loads(header_bytes)
        except orjson.JSONDecodeError as error:
            raise invalid_argument(f"The infer request is not valid JSON: {error}") from None
        return v2.parse_infer(header, memoryview(binary))


def v2_routes(options: dict) -> list:
    """The V2 routes, to be placed before the engine's catch-all handler."""
    return [
        (r"/v2/health/live/?", V2LiveHandler, options),
        (r"/v2(?:/health/ready|/repository/index)?/?", V2ServerHandler, options),
        (r"/v2/repository/models/([^/]+)/(load|unload)/?", V2RepositoryModelHandler, options),
        (r"/v2/models/stats/?", V2StatisticsHandler, options),
        (r"/v2/models/([^/]+)(?:/versions/([^/]+))?/stats/?", V2StatisticsHandler, options),
        (r"/v2/models/[^/]+.*", V2ModelHandler, options),
    ]
