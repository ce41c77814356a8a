"""The management API, on its own port, for the owner only (the engine secret).

JSON in, JSON out, errors as ``{"error": "..."}`` with the status TF Serving uses
for the canonical code. The handlers parse HTTP and call :class:`Control`; every
rule lives there.

``GET/POST /api/models``, ``GET/DELETE /api/models/{name}``,
``DELETE /api/models/{name}/versions/{v}``, ``PUT /api/models/{name}/labels``,
``PUT /api/models/{name}/batching``, ``PUT/DELETE /api/models/{name}/routing``,
``POST /api/models/{name}/promote``, ``POST /api/models/{name}/poll``, ``GET /api/models/{name}/windows?seconds=60``,
``GET/POST /api/tokens``, ``DELETE /api/tokens/{id}``.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import tornado.web

from ..engine.errors import Code, ServingError, invalid_argument
from ..wire import ENGINE_SECRET_HEADER
from .auth import Authenticator
from .control import Control

log = logging.getLogger(__name__)

MAX_MANAGEMENT_BODY_BYTES = 1024 * 1024


class _ManagementHandler(tornado.web.RequestHandler):
    def initialize(self, control: Control, auth: Authenticator) -> None:
        self.control = control
        self.auth = auth

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")

    def prepare(self) -> None:
        if not self.auth.is_owner_secret(self.request.headers.get(ENGINE_SECRET_HEADER)):
            self._fail(ServingError(Code.UNAUTHENTICATED, "The management API needs the engine secret"))

    def _fail(self, error: ServingError) -> None:
        self.set_status(error.code.http_status)
        self.finish(orjson.dumps({"error": error.message}))

    def body(self) -> Any:
        if len(self.request.body) > MAX_MANAGEMENT_BODY_BYTES:
            raise invalid_argument("request body too large for the management API")
        if not self.request.body.strip():
            return {}
        try:
            return orjson.loads(self.request.body)
        except orjson.JSONDecodeError as error:
            raise invalid_argument(f"request body is not valid JSON: {error}") from None

    async def answer(self, operation, *args, status: int = 200) -> None:
        """Run one Control operation and write its result, or its error."""
        try:
            result = operation(*args)
            if hasattr(result, "__await__"):
                result = await result
        except ServingError as error:
            self._fail(error)
            return
        self.set_status(status)
        self.finish(orjson.dumps(result))

    def write_error(self, status_code: int, **kwargs) -> None:
        self.finish(orjson.dumps({"error": self._reason}))


class ModelsHandler(_ManagementHandler):
    async def get(self) -> None:
        await self.answer(lambda: {"models": self.control.list_models()})

    async def post(self) -> None:
        await self.answer(lambda: self.control.load_model(self.body()), status=201)


class ConfigHandler(_ManagementHandler):
    async def get(self) -> None:
        await self.answer(self.control.running_config)


class ModelHandler(_ManagementHandler):
    async def get(self, name: str) -> None:
        await self.answer(self.control.describe, name)

    async def delete(self, name: str) -> None:
        await self.answer(self.control.unload, name)


class VersionHandler(_ManagementHandler):
    async def delete(self, name: str, version: str) -> None:
        await self.answer(self.control.unload, name, int(version))


class LabelsHandler(_ManagementHandler):
    async def put(self, name: str) -> None:
        def set_labels():
            body = self.body()
            if not isinstance(body, dict) or "labels" not in body:
                raise invalid_argument("send {\"labels\": {\"stable\": 1, ...}, \"replace\": true|false}")
            return self.control.set_labels(name, body["labels"], bool(body.get("replace", True)))

        await self.answer(set_labels)


class BatchingHandler(_ManagementHandler):
    async def put(self, name: str) -> None:
        await self.answer(lambda: self.control.set_batching(name, self.body()))


class LoggingHandler(_ManagementHandler):
    async def put(self, name: str) -> None:
        await self.answer(lambda: self.control.set_logging(name, self.body()))


class RoutingHandler(_ManagementHandler):
    async def put(self, name: str) -> None:
        await self.answer(lambda: self.control.set_routing(name, self.body()))

    async def delete(self, name: str) -> None:
        await self.answer(self.control.set_routing, name, {})


class PromoteHandler(_ManagementHandler):
    async def post(self, name: str) -> None:
        def promote():
            body = self.body()
            if not isinstance(body, dict) or "version" not in body:
                raise invalid_argument("send {\"version\": N}")
            return self.control.promote(name, body["version"])

        await self.answer(promote)


class PollHandler(_ManagementHandler):
    async def post(self, name: str) -> None:
        await self.answer(self.control.poll, name)


class WindowsHandler(_ManagementHandler):
    async def get(self, name: str) -> None:
        await self.answer(self.control.windows, name, self.get_query_argument("seconds", "60"))


class TokensHandler(_ManagementHandler):
    async def get(self) -> None:
        await self.answer(lambda: {"tokens": self.control.list_tokens()})

    async def post(self) -> None:
        await self.answer(lambda: self.control.create_token(self.body()), status=201)


class TokenHandler(_ManagementHandler):
    async def delete(self, token_id: str) -> None:
        await self.answer(self.control.revoke_token, token_id)


class NotFoundHandler(_ManagementHandler):
    def prepare(self) -> None:
        super().prepare()
        if not self._finished:
            self._fail(ServingError(Code.NOT_FOUND, f"No management endpoint {self.request.method} "
                                                    f"{self.request.path}"))


def make_management_app(control: Control, auth: Authenticator) -> tornado.web.Application:
    options = {"control": control, "auth": auth}
    name = r"([A-Za-z0-9][A-Za-z0-9_.-]*)"
    routes = [
        (r"/api/config/?", ConfigHandler, options),
        (r"/api/models/?", ModelsHandler, options),
        (rf"/api/models/{name}/?", ModelHandler, options),
        (rf"/api/models/{name}/versions/([0-9]+)/?", VersionHandler, options),
        (rf"/api/models/{name}/labels/?", LabelsHandler, options),
        (rf"/api/models/{name}/batching/?", BatchingHandler, options),
        (rf"/api/models/{name}/routing/?", RoutingHandler, options),
        (rf"/api/models/{name}/logging/?", LoggingHandler, options),
        (rf"/api/models/{name}/promote/?", PromoteHandler, options),
        (rf"/api/models/{name}/windows/?", WindowsHandler, options),
        (rf"/api/models/{name}/poll/?", PollHandler, options),
        (r"/api/tokens/?", TokensHandler, options),
        (r"/api/tokens/([0-9a-f]+)/?", TokenHandler, options),
    ]
    return tornado.web.Application(routes, default_handler_class=NotFoundHandler, default_handler_args=options)
