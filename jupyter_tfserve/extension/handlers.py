"""``{base_url}tfserve/...``: thin, authenticated handlers in front of the engine.

``tfserve/v1/...`` is the engine's TF Serving REST API and ``tfserve/v2/...`` its KServe
V2 API, forwarded byte for byte, for the Jupyter user and for share-token bearers;
``tfserve/api/...`` is the engine's management API, for the Jupyter user only. The
engine itself checks the share token's scope: these handlers never decide what a
token grants, so the rule lives in one place and holds on the engine's own port too.

No request body is read before its credential is known to be good. Tornado reads
a body before calling a handler unless the handler streams it, so these handlers
stream (``stream_request_body``), and ``prepare`` (which runs after the headers,
before the first body byte is read) settles the credential: the Jupyter user is
authenticated and authorized there; a share token is put to the engine (one
owner-only question to its management port, remembered for a few seconds) for
the model and verb the path names. A refusal is answered at once and the body is
never read (Tornado then closes the connection; a client that sent
``Expect: 100-continue`` never sends it at all).

A share-token request skips jupyter_server's identity step (``IdentityProvider.get_user``):
it is never the Jupyter user, whatever cookies it carries, and no login cookie is set or
cleared for it. Jupyter's host check, CORS headers and origin check still apply.

Bodies go to the engine as the chunks Tornado handed over, through the extension's own
keep-alive client (``engine_client.py``), and answers come back as the engine wrote them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from urllib.parse import quote, urlencode

import tornado.web
from jupyter_core.utils import ensure_async
from jupyter_server import CallContext
from jupyter_server.auth.decorator import allow_unauthenticated, authorized
from jupyter_server.auth.utils import HTTP_METHOD_TO_AUTH_ACTION
from jupyter_server.base.handlers import APIHandler

from ..launcher import TOKEN_CHECK_PATH
from ..wire import ROUTE_KEY_HEADER, VERSION_HEADER, bearer_token
from .engine_client import EngineClient, EngineResponse, EngineUnavailable

FORWARDED_REQUEST_HEADERS = ("Content-Type", ROUTE_KEY_HEADER)
FORWARDED_RESPONSE_HEADERS = ("Content-Type", VERSION_HEADER)
ENGINE_WAIT_SECONDS = 60
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
MANAGEMENT_BODY_LIMIT = 1024 * 1024  # the engine's own management limit
DEFAULT_BODY_LIMIT = 64 * 1024 * 1024
# A token the engine accepted is asked about again after this long. The engine checks every request
# itself, so a token revoked meanwhile is still refused; only its body is read first.
TOKEN_CHECK_SECONDS = 5.0
TOKEN_CHECK_ENTRIES = 4096
# models/<name>[/versions/<n> | /labels/<label>][:<verb>]: the model and verb a share token must grant.
_MODEL_PATH = re.compile(r"models/(?P<model>[^/:]+)(?:/(?:versions|labels)/[^/:]+)?(?::(?P<verb>[A-Za-z]+))?")
# A V2 body-carrying path: only .../infer has a model and verb a share token may hold (its "predict").
_V2_INFER_PATH = re.compile(r"models/(?P<model>[^/]+)(?:/versions/[^/]+)?/infer")
_UNSET = object()
# What a share token's bearer may send to tfserve/v1 and tfserve/v2 (OPTIONS: CORS preflight).
_SHARE_TOKEN_METHODS = frozenset({"GET", "POST", "OPTIONS"})


class AcceptedTokens:
    """Which (token, model, verb) the engine accepted lately: digests only, bounded, short-lived."""

    def __init__(self, lifetime: float = TOKEN_CHECK_SECONDS, entries: int = TOKEN_CHECK_ENTRIES) -> None:
        self.lifetime = lifetime
        self.entries = entries
        self._until: dict[str, float] = {}

    @staticmethod
    def key(engine_secret: str, token: str, model: str, verb: str) -> str:
        # The engine's secret is in the key: a restarted engine (new secret) is asked afresh.
        return hashlib.sha256("\0".join((engine_secret, token, model, verb)).encode()).hexdigest()

    def __contains__(self, key: str) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if until <= time.monotonic():
            del self._until[key]
            return False
        return True

    def add(self, key: str) -> None:
        if len(self._until) >= self.entries:
            self._until.clear()
        self._until[key] = time.monotonic() + self.lifetime


@tornado.web.stream_request_body
class _EngineHandler(APIHandler):
    auth_resource = "tfserve"
    body_limit = MANAGEMENT_BODY_LIMIT

    @property
    def supervisor(self):
        return self.settings["tfserve_supervisor"]

    def write_engine_error(self, status: int, message: str) -> None:
        """In TF Serving's format, ``{"error": ...}``, like every answer the engine gives."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message}))

    async def prepare(self) -> None:
        """After the headers, before any body byte: Jupyter's checks, then this handler's credential."""
        self._chunks: list[bytes] = []
        await self.prepare_jupyter()
        if self._finished:
            return
        await self.admit()
        if self._finished or self.request.method not in BODY_METHODS:
            return
        length = self.request.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.body_limit:
            self.write_engine_error(413, f"Request body of {length} bytes is larger than the limit of "
                                         f"{self.body_limit} bytes")
            return
        self.request.connection.set_max_body_size(self.body_limit)

    async def prepare_jupyter(self) -> None:
        """Jupyter's own ``prepare``: its host check, the Jupyter identity, CORS, XSRF, the origin check."""
        await super().prepare()

    async def admit(self) -> None:
        """Refuse (raise or finish) unless the request's credential is good; the Jupyter user by default."""
        await self.require_jupyter_user()

    async def require_jupyter_user(self) -> None:
        """What ``@tornado.web.authenticated`` and ``@authorized`` check, done before the body is read."""
        user = self.current_user
        if not user:
            raise tornado.web.HTTPError(403)
        action = HTTP_METHOD_TO_AUTH_ACTION[self.request.method.upper()]
        if not await ensure_async(self.authorizer.is_authorized(self, user, action, self.auth_resource)):
            raise tornado.web.HTTPError(403, f"User is not authorized to {action} on resource: "
                                             f"{self.auth_resource}.")

    def data_received(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    @property
    def engine_client(self) -> EngineClient:
        return self.settings["tfserve_engine_client"]

    async def ask_engine(self, method: str, url: str, headers: dict[str, str],
                         body: list[bytes] | None = None) -> EngineResponse | None:
        """One request to the engine; None once a 503 (it did not answer) or a 400 (unsendable) is written."""
        try:
            return await self.engine_client.request(method, url, headers, body)
        except EngineUnavailable as error:
            self.write_engine_error(503, f"The tfserve engine did not answer: {error}")
        except TimeoutError:
            self.write_engine_error(503, f"The tfserve engine did not answer within "
                                         f"{self.engine_client.timeout:.0f} s")
        except ValueError as error:
            self.write_engine_error(400, str(error))
        return None

    def relay(self, response: EngineResponse, header_names: tuple[str, ...] = FORWARDED_RESPONSE_HEADERS) -> None:
        """Answer with the engine's status, body and the named headers (its Content-Type included)."""
        self.set_status(response.status)
        for name in header_names:
            value = response.headers.get(name.lower())
            if value is not None:
                self.set_header(name, value)
        # APIHandler.finish sets Content-Type itself: give it the engine's.
        self.finish(response.body or None, set_content_type=response.headers.get("content-type", "application/json"))

    async def engine_ready(self) -> bool:
        """Wait (bounded) for the engine; answer 503 when it is not there."""
        task = self.settings["tfserve_ensure_engine"]()
        if task.done() and not task.cancelled() and task.exception() is None and self.supervisor.running:
            return True  # the usual case, without a wait_for task and a shield per request
        try:
            await asyncio.wait_for(asyncio.shield(task), ENGINE_WAIT_SECONDS)
            if not self.supervisor.running:
                await self.supervisor.wait_ready(ENGINE_WAIT_SECONDS)
            return True
        except Exception as error:
            self.write_engine_error(503, f"The tfserve engine is not available: {error}")
            return False

    async def forward(self, url: str, headers: dict[str, str]) -> None:
        """Send this request to the engine and its answer back, bodies unchanged.

        Through the extension's EngineClient (engine_client.py): keep-alive connections, the
        body sent as the chunks it arrived in, and one retry when a pooled connection turns
        out closed (the engine restarted) before any byte of the answer; 503 otherwise.
        """
        if not await self.engine_ready():
            return
        request_headers = self.request.headers
        for name in FORWARDED_REQUEST_HEADERS:
            value = request_headers.get(name)
            if value is not None:
                headers[name] = value
        method = self.request.method
        response = await self.ask_engine(method, url, headers, self._chunks if method in BODY_METHODS else None)
        if response is not None:
            self.relay(response)


class ProxyHandler(_EngineHandler):
    """The engine's TF Serving REST API, for the Jupyter user or a share token's bearer.

    A request with ``Authorization: Bearer tfs_...`` is a share-token request: it is
    forwarded with that token and nothing else, whoever's cookies it also carries, and
    the engine grants exactly what the token allows. No cookie is ever set for it.
    Its body is read only once the engine has said the token is good for the model
    and verb the path names.
    """

    @property
    def body_limit(self) -> int:  # type: ignore[override]
        return self.settings.get("tfserve_max_request_body_bytes", DEFAULT_BODY_LIMIT)

    _bearer: object = _UNSET  # the share token (str), None, or not read yet

    def _share_token(self) -> str | None:
        if self._bearer is _UNSET:
            self._bearer = bearer_token(self.request.headers.get("Authorization"))
        return self._bearer  # type: ignore[return-value]

    def check_xsrf_cookie(self) -> None:
        # XSRF protects ambient credentials (cookies); a bearer token is sent on purpose.
        if self._share_token() is not None:
            return None
        return super().check_xsrf_cookie()

    async def prepare_jupyter(self) -> None:
        """Jupyter's full ``prepare`` for the Jupyter user; for a share token, its checks minus the identity.

        jupyter_server's identity step (``IdentityProvider.get_user``) is not run for a share
        token's bearer: it would look for the Jupyter token and the login cookie, could make
        the request the Jupyter user (a login cookie sent along), and may set a cookie (an
        anonymous user's where Jupyter runs without auth) or clear one (a stale cookie). None
        of that is for a share token, which is forwarded alone and has no Jupyter identity.
        What stays is what does not depend on who asks: the host check, CORS headers and the
        origin check. XSRF is for ambient credentials (cookies) and is skipped as before; the
        methods are ``@allow_unauthenticated`` (checked here, in ``admit``).
        """
        if self._share_token() is None:
            await super().prepare_jupyter()
            return
        CallContext.set(CallContext.JUPYTER_HANDLER, self)
        self.current_user = self._jupyter_current_user = None  # never the Jupyter user
        if not self.check_host():
            raise tornado.web.HTTPError(403)
        if self.request.method not in _SHARE_TOKEN_METHODS:  # refused before any token check or body
            raise tornado.web.HTTPError(405)
        self.set_cors_headers()
        if not self.check_origin():
            raise tornado.web.HTTPError(404)

    async def admit(self) -> None:
        token = self._share_token()
        if token is None:
            await self.require_jupyter_user()
        elif self.request.method in BODY_METHODS:
            await self._check_share_token(token, self.path_args[0] if self.path_args else "")

    def _model_and_verb(self, path: str) -> tuple[str, str]:
        """What a share token must hold for a request with a body to this path ("" and "": nothing does)."""
        match = _MODEL_PATH.fullmatch(path)
        return (match["model"], match["verb"] or "") if match else ("", "")

    async def _check_share_token(self, token: str, path: str) -> None:
        """Ask the engine whether it would take ``token`` here; relay its refusal (and finish) if not."""
        model, verb = self._model_and_verb(path)
        if not await self.engine_ready():
            return
        supervisor = self.supervisor
        accepted: AcceptedTokens = self.settings["tfserve_accepted_tokens"]
        key = accepted.key(supervisor.secret, token, model, verb)
        if key in accepted:
            return
        url = f"{supervisor.management_url}{TOKEN_CHECK_PATH}?{urlencode({'model': model, 'verb': verb})}"
        response = await self.ask_engine("GET", url, {**supervisor.secret_headers, "Authorization": f"Bearer {token}"})
        if response is None:
            return
        if response.status == 204:
            accepted.add(key)
            return
        self.relay(response, ())

    api_prefix = "v1"

    def _engine_url(self, path: str) -> str:
        query = f"?{self.request.query}" if self.request.query else ""
        return f"{self.supervisor.rest_url}/{self.api_prefix}/{quote(path, safe='/:')}{query}"

    async def _as_share_token(self, path: str, token: str) -> None:
        await self.forward(self._engine_url(path), {"Authorization": f"Bearer {token}"})

    @tornado.web.authenticated
    @authorized
    async def _as_jupyter_user(self, path: str) -> None:
        await self.forward(self._engine_url(path), dict(self.supervisor.secret_headers))

    # A share token's bearer has no Jupyter identity: these two authenticate in prepare() (a share
    # token, or the Jupyter user through _as_jupyter_user's decorators), so they must not be refused
    # where the server runs with allow_unauthenticated_access=False.
    @allow_unauthenticated
    async def get(self, path: str) -> None:
        token = self._share_token()
        if token is not None:
            await self._as_share_token(path, token)
        else:
            await self._as_jupyter_user(path)

    post = get


class V2ProxyHandler(ProxyHandler):
    """The engine's KServe V2 REST API (``/v2/...``), with the same credentials rule as ``tfserve/v1``.

    A share token's "predict" verb is V2 infer on its model; its body is read only once the
    engine has accepted the token for that. GETs (metadata, readiness) are judged by the
    engine itself, which maps them to the token's "metadata" verb.
    """

    api_prefix = "v2"

    def _model_and_verb(self, path: str) -> tuple[str, str]:
        match = _V2_INFER_PATH.fullmatch(path)
        return (match["model"], "predict") if match else ("", "")


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


class DeployHandler(_EngineHandler):
    """``GET tfserve/api/deploy?target=...``: the manifests ``jupyter tfserve deploy`` would write, as YAML text.

    For the panel's Deploy dialog. The running config comes from the engine's
    management API (``GET /api/config``), as ``%tfserve deploy`` takes it, so the YAML
    is what that magic would write for the same query; nothing is written or uploaded.
    Owner only, as the management API: the config names every model's base path.
    Query: ``target`` (kubernetes, kserve, kserve-runtime), optional ``model`` (one model
    of the config), ``storage_uri``, ``image`` and ``name``. Bad input is a 400 with the
    command's one-line message.
    """

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        from ..deploy.cli import DeployError, running_manifests, yaml_text

        if not await self.engine_ready():
            return
        supervisor = self.supervisor
        response = await self.ask_engine("GET", f"{supervisor.management_url}/api/config",
                                         dict(supervisor.secret_headers))
        if response is None:
            return
        if response.status != 200:
            self.relay(response, ())
            return
        try:
            running = json.loads(response.body)
            files, notes = running_manifests(
                running, self.get_query_argument("target", "kubernetes"),
                model=self.get_query_argument("model", ""), name=self.get_query_argument("name", "tfserve") or
                "tfserve", image=self.get_query_argument("image", ""),
                storage_uri=self.get_query_argument("storage_uri", ""))
        except DeployError as error:
            self.write_engine_error(400, str(error))
            return
        except ValueError as error:  # a model name with nothing to name a Kubernetes object after, bad JSON
            self.write_engine_error(400, f"{type(error).__name__}: {error}")
            return
        self.finish(yaml_text(files, notes), set_content_type="application/yaml; charset=utf-8")
