"""``{base_url}tfserve/...``: thin, authenticated handlers in front of the engine."""

from __future__ import annotations

import asyncio
import json

import tornado.web
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

FORWARDED_RESPONSE_HEADERS = ("Content-Type", "X-TFServe-Model-Version")
ENGINE_WAIT_SECONDS = 60


class _EngineHandler(APIHandler):
    auth_resource = "tfserve"

    @property
    def supervisor(self):
        return self.settings["tfserve_supervisor"]

    async def engine_ready(self) -> bool:
        """Wait (bounded) for the engine; answer 503 in TF Serving's format when it is not there."""
        task = self.settings["tfserve_ensure_engine"]()
        try:
            await asyncio.wait_for(asyncio.shield(task), ENGINE_WAIT_SECONDS)
            if self.supervisor.state != "running":
                await self.supervisor.wait_ready(ENGINE_WAIT_SECONDS)
            return True
        except Exception as error:
            self.set_status(503)
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"error": f"The tfserve engine is not available: {error}"}))
            return False


class ProxyHandler(_EngineHandler):
    """The engine's TF Serving REST API, forwarded without changing a byte of either body."""

    async def _forward(self, path: str) -> None:
        if not await self.engine_ready():
            return
        request = HTTPRequest(
            f"{self.supervisor.rest_url}/v1/{path}",
            method=self.request.method,
            body=self.request.body if self.request.method == "POST" else None,
            headers={"Content-Type": self.request.headers.get("Content-Type", "application/json")},
            request_timeout=300,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (HTTPClientError, OSError) as error:
            self.set_status(503)
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"error": f"The tfserve engine did not answer: {error}"}))
            return
        self.set_status(response.code)
        for header in FORWARDED_RESPONSE_HEADERS:
            if header in response.headers:
                self.set_header(header, response.headers[header])
        self.finish(response.body)

    @tornado.web.authenticated
    @authorized
    async def get(self, path: str) -> None:
        await self._forward(path)

    @tornado.web.authenticated
    @authorized
    async def post(self, path: str) -> None:
        await self._forward(path)


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
        }))
