"""Raw HTTP/1.1 exchanges with the engine's REST port, for tests that compare answers byte for byte."""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.helpers.models import write_tf1_half_plus, write_tf2_half_plus
from tests.helpers.server import ServerProcess, free_port, write_monitoring_config

SECRET = "direct-calls-secret"
OWNER = f"X-TFServe-Engine-Secret: {SECRET}\r\n"

# The model calls the fast paths take, and refusals they must word as tornado's handler does; each is
# (path, body) on an engine serving half (versions 1 and 2, label stable: 1) and tf2 (version 1).
MODEL_CALLS = {
    "predict rows": ("/v1/models/half:predict", b'{"instances": [1.0, 2.0, 5.0]}'),
    "predict columns": ("/v1/models/half/versions/1:predict", b'{"inputs": {"x": [1.0, 2.0]}}'),
    "predict by label": ("/v1/models/half/labels/stable:predict", b'{"instances": [4.0]}'),
    "predict a tf2 module": ("/v1/models/tf2:predict", b'{"instances": [[1.0], [2.0]]}'),
    "a named signature": ("/v1/models/half:predict",
                          b'{"signature_name": "regress_x2_to_y3", "instances": [[1.0], [3.0]]}'),
    "classify": ("/v1/models/half:classify", b'{"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}]}'),
    "regress": ("/v1/models/half:regress", b'{"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}'),
    "json that does not parse": ("/v1/models/half:predict", b'{"instances": [1.0,'),
    "a wrong dtype": ("/v1/models/half:predict", b'{"instances": ["a", "b"]}'),
    "an unknown model": ("/v1/models/nosuch:predict", b'{"instances": [1.0]}'),
    "an unknown version": ("/v1/models/half/versions/9:predict", b'{"instances": [1.0]}'),
    "an unknown label": ("/v1/models/half/labels/gone:predict", b'{"instances": [1.0]}'),
    "an unknown signature": ("/v1/models/half:predict", b'{"signature_name": "nope", "instances": [1.0]}'),
    "an empty body": ("/v1/models/half:predict", b""),
}


@contextlib.contextmanager
def engines_for_model_calls(root: Path, flag_sets: Sequence[Sequence[str]]) -> Iterator[tuple[list, str]]:
    """One engine per flag set, all serving MODEL_CALLS' models with the same state (share tokens), owner-only
    (``--require_auth``) with metrics; the first also has the management API, whose URL comes with them."""
    write_tf1_half_plus(root / "half", 1)
    write_tf1_half_plus(root / "half", 2, b=3.0)
    write_tf2_half_plus(root / "tf2", 1)
    config = root / "models.config"
    config.write_text(f"""model_config_list {{
  config {{ name: "half" base_path: "{root / 'half'}" model_version_policy {{ all {{}} }}
           version_labels {{ key: "stable" value: 1 }} }}
  config {{ name: "tf2" base_path: "{root / 'tf2'}" }}
}}
""")
    monitoring = write_monitoring_config(root / "monitoring.config")
    port = free_port()
    servers: list[ServerProcess] = []
    try:
        for number, flags in enumerate(flag_sets):
            management = [f"--management_port={port}"] if number == 0 else []
            server = ServerProcess(["--require_auth", f"--state_db={root / 'state.sqlite'}",
                                    f"--monitoring_config_file={monitoring}", f"--model_config_file={config}",
                                    *management, *flags],
                                   root / f"engine{number}.log", env={"TFSERVE_ENGINE_SECRET": SECRET})
            servers.append(server)
            server.session.headers["X-TFServe-Engine-Secret"] = SECRET
            server.wait_for_port()
            server.wait_for_versions("half", {1, 2}, timeout=120)
            server.wait_for_versions("tf2", {1}, timeout=120)
        yield servers, f"http://127.0.0.1:{port}/api"
    finally:
        for server in servers:
            server.stop()


def post(path: str, body: bytes, extra: str = OWNER) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def read_answer(sock: socket.socket, answer: bytes = b"") -> tuple[bytes, bytes]:
    """One answer read to its Content-Length (or to the close), and the bytes received after it."""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            return answer, b""
        answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


def exchange(port: int, data: bytes) -> bytes:
    """One exchange on a new connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        return read_answer(sock)[0]


def without_date(answer: bytes) -> bytes:
    return re.sub(rb"Date: [^\r]*\r\n", b"", answer)


class EnginePair:
    """Two engines on the same models and state, for tests that require them to answer alike."""

    def __init__(self, first: ServerProcess, second: ServerProcess, api: str) -> None:
        self.first, self.second, self.api = first, second, api

    def same(self, data: bytes) -> bytes:
        """One raw request to each on a new connection; the answers must be the same bytes (the Date aside)."""
        first = without_date(exchange(self.first.rest_port, data))
        assert first == without_date(exchange(self.second.rest_port, data))
        return first
