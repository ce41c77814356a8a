"""A kernel started by a real Jupyter server (its REST API) and driven over its websocket, as JupyterLab does.

Such a kernel has the server's pid in ``JPY_PARENT_PID``, so it is the real test of
how the kernel side finds its server.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field

from tornado.websocket import websocket_connect

from tests.helpers.jupyter import JupyterServerProcess


@dataclass
class Execution:
    stdout: str = ""
    stderr: str = ""
    results: list[dict] = field(default_factory=list)  # execute_result / display_data bundles
    error: dict | None = None

    @property
    def text(self) -> str:
        return self.stdout + "".join(bundle.get("text/plain", "") for bundle in self.results)


class ServerKernel:
    """``with ServerKernel(server) as kernel: kernel.execute("1 + 1")``."""

    def __init__(self, server: JupyterServerProcess) -> None:
        self.server = server
        self.kernel_id = ""

    def __enter__(self) -> ServerKernel:
        response = self.server.owner.post(self.server.url + "api/kernels", json={"name": "python3"}, timeout=60)
        response.raise_for_status()
        self.kernel_id = response.json()["id"]
        return self

    def __exit__(self, *exc) -> None:
        self.server.owner.delete(self.server.url + f"api/kernels/{self.kernel_id}", timeout=60)

    def execute(self, code: str, timeout: float = 300) -> Execution:
        return asyncio.run(asyncio.wait_for(self._execute(code), timeout))

    async def _execute(self, code: str) -> Execution:
        url = self.server.url.replace("http://", "ws://") + f"api/kernels/{self.kernel_id}/channels"
        socket = await websocket_connect(url + f"?token={self.server.token}")
        session = uuid.uuid4().hex
        msg_id = uuid.uuid4().hex
        socket.write_message(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": session, "username": "test",
                       "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        execution = Execution()
        try:
            while True:
                raw = await socket.read_message()
                if raw is None:
                    raise ConnectionError("the kernel's websocket closed")
                if not isinstance(raw, str):
                    continue
                message = json.loads(raw)
                if message.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = message["header"]["msg_type"], message["content"]
                if kind == "stream":
                    if content["name"] == "stdout":
                        execution.stdout += content["text"]
                    else:
                        execution.stderr += content["text"]
                elif kind in ("execute_result", "display_data", "update_display_data"):
                    execution.results.append(content["data"])
                elif kind == "error":
                    execution.error = content
                elif kind == "status" and content["execution_state"] == "idle":
                    return execution
        finally:
            socket.close()
