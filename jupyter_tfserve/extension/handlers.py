"""``{base_url}tfserve/...``: thin, authenticated handlers in front of the engine.

``tfserve/v1/...`` is the engine's TF Serving REST API, forwarded byte for byte, for
the Jupyter user and for share-token bearers; ``tfserve/api/...`` is the engine's
management API, for the Jupyter user only. The engine itself checks the share
token's scope: these handlers never decide what a token grants, so the rule lives
in one place and holds on the engine's own port too.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import aiohttp
import tornado.web
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler

from ..wire import ROUTE_KEY_HEADER, VERSION_HEADER, bearer_token

FORWARDED_REQUEST_HEADERS = ("Content-Type", ROUTE_KEY_HEADER)
FORWARDED_RESPONSE_HEADERS = ("Content-Type", VERSION_HEADER)
ENGINE_WAIT_SECONDS = 60


class _EngineHandler(APIHandler):
    auth_resource = "tfserve"

    @property
    def supervisor(self):
        return self.settings["tfserve_supervisor"]

    def write_engine_error(self, status: int, message: str) -> None:
        """In TF Serving's format, ``{"error": ...}``, like every answer the engine gives."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message}))

    async def engine_ready(self) -> bool:
        """Wait (bounded) for the engine; answer 503 when it is not there."""
        task = self.settings["tfserve_ensure_engine"]()
        try:
            await asyncio.wait_for(asyncio.shield(task), ENGINE_WAIT_SECONDS)
            if self.supervisor.state != "running":
                await self.supervisor.wait_ready(ENGINE_WAIT_SECONDS)
            return True
        except Exception as error:
            self.write_engine_error(503, f"The tfserve engine is not available: {error}")
            return False

    async def forward(self, url: str, headers: dict[str, str]) -> None:
        """Send this request to the engine and its answer back, bodies unchanged.

        Connections to the engine are kept alive and reused (a new TCP connection per
        request cost about 1 ms at p50). A connection the engine closed (it restarted)
        fails before any byte is processed, so that one case is retried once.
        """
        if not await self.engine_ready():
            return
        for name in FORWARDED_REQUEST_HEADERS:
            if name in self.request.headers:
                headers[name] = self.request.headers[name]
        has_body = self.request.method in ("POST", "PUT", "PATCH")
        session: aiohttp.ClientSession = self.settings["tfserve_http_session"]()
        for attempt in (1, 2):
            try:
                async with session.request(self.request.method, url, data=self.request.body if has_body else None,
                                           headers=headers, allow_redirects=False) as response:
                    body = await response.read()
                    break
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as error:
                if attempt == 2:
                    self.write_engine_error(503, f"The tfserve engine did not answer: {error}")
                    return
            except (aiohttp.ClientError, TimeoutError) as error:
                self.write_engine_error(503, f"The tfserve engine did not answer: {error!r}")
                return
        self.set_status(response.status)
        for name in FORWARDED_RESPONSE_HEADERS:
            if name in response.headers:
                self.set_header(name, response.headers[name])
        self.finish(body)


class ProxyHandler(_EngineHandler):
    """The engine's TF Serving REST API, for the Jupyter user or a share token's bearer.

    A request with ``Authorization: Bearer tfs_...`` is a share-token request: it is
    forwarded with that token and nothing else, whoever's cookies it also carries, and
    the engine grants exactly what the token allows. No cookie is ever set for it.
    """

    def _share_token(self) -> str | None:
        return bearer_token(self.request.headers.get("Authorization"))

    def check_xsrf_cookie(self) -> None:
        # XSRF protects ambient credentials (cookies); a bearer token is sent on purpose.
        if self._share_token() is not None:
            return None
        return super().check_xsrf_cookie()

    def _engine_url(self, path: str) -> str:
        query = f"?{self.request.query}" if self.request.query else ""
        return f"{self.supervisor.rest_url}/v1/{quote(path, safe='/:')}{query}"

    async def _as_share_token(self, path: str, token: str) -> None:
        await self.forward(self._engine_url(path), {"Authorization": f"Bearer {token}"})

    @tornado.web.authenticated
    @authorized
    async def _as_jupyter_user(self, path: str) -> None:
        await self.forward(self._engine_url(path), dict(self.supervisor.secret_headers))

    async def get(self, path: str) -> None:
        token = self._share_token()
        if token is not None:
            await self._as_share_token(path, token)
        else:
            await self._as_jupyter_user(path)

    post = get


class ManagementProxyHandler(_EngineHandler):
    """The engine's management API, for the Jupyter user only (never a share token)."""

    async def _forward_management(self, path: str) -> None:
        query = f"?{self.request.query}" if self.request.query else ""
        await self.forward(f"{self.supervisor.management_url}/api/{quote(path, safe='/')}{query}",
                           dict(self.supervisor.secret_headers))

    @tornado.web.authenticated
    @authorized
    async def get(self, path: str) -> None:
        await self._forward_management(path)

    @tornado.web.authenticated
    @authorized
    async def post(self, path: str) -> None:
        await self._forward_management(path)

    @tornado.web.authenticated
    @authorized
    async def put(self, path: str) -> None:
        await self._forward_management(path)

    @tornado.web.authenticated
    @authorized
    async def delete(self, path: str) -> None:
        await self._forward_management(path)


class EngineStatusHandler(_EngineHandler):
    """The engine's health as the supervisor sees it (starting, running, restarting, stopped)."""

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        supervisor = self.supervisor
        self.finish(json.dumps({
            "state": supervisor.state,
            "restarts": supervisor.restarts,
            "last_exit": supervisor.last_exit,
            "pid": supervisor.process.pid if supervisor.process else None,
            "rest_port": supervisor.rest_port,
            "grpc_port": supervisor.grpc_port,
            "model_repository_root": str(supervisor.settings.model_repository_root or ""),
        }))
