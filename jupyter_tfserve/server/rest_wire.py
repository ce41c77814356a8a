"""The bytes of a REST model call that both the engine and its front-door processes must agree on.

Which paths name a model call, which request heads the fast paths take (the rest goes to tornado's
handlers, which answer it in their own words), and the head of the answer exactly as tornado's
``RequestHandler`` writes it. A front-door process (:mod:`.front_door_worker`) imports this and the
codecs, never the engine: it must start in well under a second and must not carry TensorFlow.
"""

from __future__ import annotations

import re
import time

import tornado
from tornado import httputil
from tornado.log import access_log

from ..wire import VERSION_HEADER

MODEL_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?/?$"
)
# TF Serving reads the version with absl::SimpleAtoi into an int64: ASCII digits only (superscript two is a
# digit to str.isdigit, and int() refuses it: before, a 500 answered before the caller was authenticated).
VERSION = re.compile(r"[0-9]{1,19}")
INT64_MAX = (1 << 63) - 1
CALL_VERBS = ("predict", "classify", "regress")

ModelPath = tuple[str, int | None, str | None]  # name, version, label


def parse_model_path(path: str) -> tuple[ModelPath, re.Match] | None:
    """The model, version or label a /v1/models path names, with the match; None when it names none."""
    match = MODEL_PATH.match(path)
    if match is None:
        return None
    version = match.group("version")
    if version is not None and (not VERSION.fullmatch(version) or int(version) > INT64_MAX):
        return None
    return (match.group("name"), int(version) if version is not None else None, match.group("label")), match


def call_from_head(start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders, max_body_bytes: int,
                   reserved_paths: tuple[str, ...] = ()) -> tuple[str, ModelPath] | None:
    """The verb and model of a request a fast path may answer from its head alone, or None.

    Only a plain ``POST`` over HTTP/1.1 with a known, small body and no query qualifies: everything
    else (limits, ``Expect``, chunked bodies, metadata) keeps tornado's handler and its answers.
    """
    if start_line.method != "POST" or start_line.version != "HTTP/1.1":
        return None
    path = start_line.path
    if "?" in path or path in reserved_paths:
        return None
    length = headers.get("Content-Length")
    if (length is None or not length.isdigit() or int(length) > max_body_bytes
            or "Transfer-Encoding" in headers or "Expect" in headers):
        return None
    parsed = parse_model_path(path)
    if parsed is None:
        return None
    model, match = parsed
    verb = match.group("verb")
    if verb not in CALL_VERBS or match.group("metadata"):
        return None
    return verb, model


_SERVER_HEADER = f"Server: TornadoServer/{tornado.version}\r\n".encode()
_VERSION_HEADER = next(iter(httputil.HTTPHeaders({VERSION_HEADER: ""}))).encode()  # as tornado spells it
_REASONS = httputil.responses


class Dates:
    """tornado's Date header, formatted once a second rather than once a request."""

    def __init__(self) -> None:
        self.second = -1
        self.header = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.second = second
            self.header = f"Date: {httputil.format_timestamp(second)}\r\n".encode()
        return self.header


def log_refusal(status: int, summary: str, started: float) -> None:
    """tornado's access log line for a 4xx (warning) or 5xx (error), as its handler would write it."""
    elapsed_ms = 1000.0 * (time.perf_counter() - started)
    (access_log.error if status >= 500 else access_log.warning)("%d %s %.2fms", status, summary, elapsed_ms)


def answer_bytes(status: int, version: str | None, payload: bytes, close: bool, dates: Dates) -> bytes:
    """A JSON answer as ModelHandler's RequestHandler writes it: the same status line, headers and order."""
    head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, "Unknown").encode()), _SERVER_HEADER,
            b"Content-Type: application/json\r\n", dates.now()]
    if version is not None:
        head.append(b"%s: %s\r\n" % (_VERSION_HEADER, version.encode()))
    head.append(b"Content-Length: %d\r\n" % len(payload))
    if close:
        head.append(b"Connection: close\r\n")  # added last by tornado's connection, after Content-Length
    head.append(b"\r\n")
    return b"".join(head) + payload
