"""A REST :predict, :classify or :regress call, once admitted: body → engine → answer bytes.

Both HTTP layers run it: tornado's ``ModelHandler.post`` and the httptools front door's direct path
(:class:`DirectModelCalls`), which takes the common request (an admitted caller, a body of known
size under the decode-worker threshold) without building a tornado ``RequestHandler``. Whatever the
direct path does not admit goes to tornado's handler, which refuses it in its own words, so every
refusal, limit and early answer stays where issue 13's tests pin them.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from tornado import httputil

from ..engine.codecs import json_body, json_encode, json_example, json_predict
from ..engine.codecs.decode_workers import WORKER_MIN_BYTES, DecodedBody, DecodeWorkers
from ..engine.codecs.limits import DecodeBudget, DecodeLimits
from ..engine.engine import LOAD_WAIT_SECONDS, Answer, Engine, Target
from ..engine.errors import Code, ServingError, redact_paths
from ..engine.signature import SignatureSpec
from ..wire import ENGINE_SECRET_HEADER, ROUTE_KEY_HEADER
from .auth import OWNER, Access, Authenticator
from .deadlines import DeadlineExceeded, Deadlines
from .rest_wire import Dates, answer_bytes, call_from_head, log_refusal, parse_model_path

log = logging.getLogger(__name__)

@dataclass
class CallSettings:
    """What a model call needs from the REST application, whichever HTTP layer carried it."""

    engine: Engine
    timeout_seconds: float | None
    decode_limits: DecodeLimits
    decoders: DecodeWorkers | None


def message_for(caller: Access | None, message: str) -> str:
    """A message as the caller may read it: a share token's bearer does not see the engine's file paths."""
    return message if caller is None or caller.owner else redact_paths(message)


async def answer_call(settings: CallSettings, verb: str, target: Target, body: bytes, route_key: str | None,
                      caller: Access) -> tuple[int, str | None, bytes]:
    """The status, the model version that answered (None for an error) and the JSON body."""
    try:
        if verb == "predict" and settings.decoders is not None and len(body) >= WORKER_MIN_BYTES:
            answer = await with_timeout(settings, _predict_elsewhere(settings, target, body, route_key))
        else:
            parse = json_body.parse_predict_body if verb == "predict" else json_body.parse_json_body
            request = parse(body)
            target = Target(target.name, target.version, target.label, json_body.request_signature_name(request))
            answer = await with_timeout(settings, _call(settings, verb, target, request, body, route_key))
        return 200, str(answer.version), _encode(verb, answer)
    except ServingError as error:
        return error.code.http_status, None, json_encode.encode_json({"error": message_for(caller, error.message)})


async def _call(settings: CallSettings, verb: str, target: Target, request: dict, body: bytes,
                route_key: str | None) -> Answer:
    engine = settings.engine
    if verb == "predict":
        row_format: list[bool] = []

        def decode(signature):
            inputs, row = json_predict.decode_predict_request(
                request, signature, DecodeBudget(settings.decode_limits, len(body), body))
            row_format.append(row)
            return inputs

        answer = await engine.predict(target, decode, entrypoint="REST", route_key=route_key)
        answer.row_format = row_format[0]
        return answer
    examples = json_example.examples_from_json(request)
    if verb == "classify":
        return await engine.classify(target, examples, entrypoint="REST", route_key=route_key)
    return await engine.regress(target, examples, entrypoint="REST", route_key=route_key)


async def _predict_elsewhere(settings: CallSettings, target: Target, body: bytes, route_key: str | None) -> Answer:
    """A large :predict body, parsed and decoded by a worker process for the version likely to answer."""
    assert settings.decoders is not None
    decoded = await settings.decoders.decode(body, await likely_signatures(settings.engine, target))
    answer, _ = await predict_decoded(settings, target, decoded, body, route_key)
    return answer


async def likely_signatures(engine: Engine, target: Target) -> dict[str, SignatureSpec]:
    """The signatures of the version a plain lookup gives (the latest, or the one named), for decoding elsewhere.

    The body is decoded before the engine picks the version, so when its pick has other inputs (a
    traffic split between versions that differ, a reload in between), it is decoded again inline.
    No such version: {} (the engine answers why; the body is still checked first, as inline).
    """
    manager = engine.manager
    if manager.is_loading(target.name, target.version, target.label):
        await manager.wait_for_load(target.name, target.version, target.label, LOAD_WAIT_SECONDS)
    try:
        with manager.acquire(target.name, target.version, target.label) as handle:
            return dict(handle.servable.signatures)
    except ServingError:
        return {}


async def predict_decoded(settings: CallSettings, target: Target, decoded: DecodedBody, body: bytes,
                          route_key: str | None) -> tuple[Answer, bool]:
    """A :predict whose body was decoded elsewhere; also whether it had to be decoded again here (stale)."""
    target = Target(target.name, target.version, target.label, decoded.signature_name)
    row_format: list[bool] = []
    stale: list[bool] = []

    def decode(signature):
        if decoded.signature is not None and signature.inputs == decoded.signature.inputs:
            if decoded.error is not None:
                raise decoded.error
            row_format.append(decoded.row_format)
            return decoded.inputs
        log.info("model %s: decoding a %d-byte body on the event loop (the answering version's inputs "
                 "differ from those it was decoded for)", target.name, len(body))
        stale.append(True)
        inputs, row = json_predict.decode_predict_request(json_body.parse_predict_body(body), signature,
                                                          DecodeBudget(settings.decode_limits, len(body), body))
        row_format.append(row)
        return inputs

    answer = await settings.engine.predict(target, decode, entrypoint="REST", route_key=route_key)
    answer.row_format = row_format[0]
    return answer, bool(stale)


def _encode(verb: str, answer: Answer) -> bytes:
    if verb == "predict":
        return json_encode.encode_predict_response(answer.outputs, answer.row_format)
    if verb == "classify":
        results = [[[label, score] for label, score in row] for row in answer.results]
        return json_encode.encode_json({"results": results})
    return json_encode.encode_json({"results": answer.results})


async def with_timeout(settings: CallSettings, call):
    if not settings.timeout_seconds:
        return await call
    try:
        return await _deadlines.run(settings.timeout_seconds, call)
    except DeadlineExceeded:
        raise ServingError(
            Code.DEADLINE_EXCEEDED, f"Request timed out after {settings.timeout_seconds * 1000:.0f} ms"
        ) from None


_deadlines = Deadlines()  # the REST loop's; its timers live on whichever loop awaits it


def parse_target(path: str) -> tuple[Target, re.Match] | None:
    """The model, version or label a /v1/models path names, with the match; None when it names none."""
    parsed = parse_model_path(path)
    if parsed is None:
        return None
    (name, version, label), match = parsed
    return Target(name=name, version=version, label=label), match


# -- the httptools layer's direct path ----------------------------------------------------------------


class DirectModelCalls:
    """Admits a :predict/:classify/:regress request from its head alone, or leaves it to tornado (None)."""

    def __init__(self, settings: CallSettings, *, auth: Authenticator | None, max_body_bytes: int,
                 reserved_paths: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self.auth = auth
        self.max_body_bytes = min(max_body_bytes, WORKER_MIN_BYTES - 1)
        self.reserved_paths = reserved_paths
        self.dates = Dates()
        self.counted = settings.engine.metrics.rest_direct_calls

    def admit(self, start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders,
              remote_ip: str) -> DirectCall | None:
        call = call_from_head(start_line, headers, self.max_body_bytes, self.reserved_paths)
        if call is None:
            return None
        verb, (name, version, label) = call
        target = Target(name, version, label)
        try:
            caller = OWNER if self.auth is None else self.auth.authenticate(
                headers.get(ENGINE_SECRET_HEADER), headers.get("Authorization"))
            caller.require(target.name, verb)
        except ServingError:
            return None  # tornado's handler answers the refusal, before the body, as it always has
        self.counted.inc()
        return DirectCall(self, verb, target, caller, headers.get(ROUTE_KEY_HEADER),
                          f"POST {start_line.path} ({remote_ip})")


class DirectCall:
    """One admitted call on the direct path: runs it and writes the answer as tornado's handler would."""

    __slots__ = ("caller", "calls", "route_key", "started", "summary", "target", "verb")

    def __init__(self, calls: DirectModelCalls, verb: str, target: Target, caller: Access,
                 route_key: str | None, summary: str) -> None:
        self.calls, self.verb, self.target, self.caller, self.route_key = calls, verb, target, caller, route_key
        self.summary = summary
        self.started = time.perf_counter()

    async def answer(self, body: bytes, close: bool) -> bytes:
        """The whole HTTP answer: the bytes ModelHandler's RequestHandler writes for the same call."""
        try:
            status, version, payload = await answer_call(self.calls.settings, self.verb, self.target, body,
                                                         self.route_key, self.caller)
        except Exception:
            log.exception("Uncaught exception in %s", self.verb)  # tornado's write_error: a 500 in our format
            status, version, payload = 500, None, json_encode.encode_json({"error": "Internal Server Error"})
        if status >= 400:
            log_refusal(status, self.summary, self.started)
        return answer_bytes(status, version, payload, close, self.calls.dates)
