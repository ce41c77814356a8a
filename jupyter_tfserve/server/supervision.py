"""The engine's side of being started by someone: its secret, its ports, its proof of identity.

The process that starts the engine (the Jupyter extension, a kernel's private
engine: :mod:`jupyter_tfserve.launcher`) hands it the secret on an inherited pipe,
learns the ports the engine bound from another, and asks each HTTP port to prove
it knows the secret before sending it anything. This module answers those three,
plus one question the Jupyter proxy asks before it reads a share-token request's
body: would this token be accepted for this model and verb?
"""

from __future__ import annotations

import argparse
import json
import logging
import os

import tornado.web

from ..engine.errors import Code, ServingError
from ..launcher import (
    IDENTITY_PATH,
    TOKEN_CHECK_PATH,
    EnginePorts,
    identity_proof,
    local_address,
    ports_report,
)
from ..wire import ENGINE_SECRET_ENV, ENGINE_SECRET_HEADER, SHARE_VERBS, bearer_token
from .auth import Authenticator
from .http_front import listening_address

log = logging.getLogger(__name__)

_MAX_SECRET_BYTES = 4096
_MAX_CHALLENGE_CHARS = 128


def read_engine_secret(args: argparse.Namespace) -> str | None:
    """The owner's secret: from ``--engine_secret_fd`` (then closed), else ``$TFSERVE_ENGINE_SECRET``.

    The variable is removed from this process's environment once read, so the
    subprocesses a model's ops might start do not inherit it (a pipe leaves nothing
    behind at all, which is why the launcher uses one).
    """
    if args.engine_secret_fd >= 0:
        data = b""
        try:
            while b"\n" not in data and len(data) <= _MAX_SECRET_BYTES:
                chunk = os.read(args.engine_secret_fd, _MAX_SECRET_BYTES)
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(args.engine_secret_fd)
        return data.partition(b"\n")[0].decode(errors="replace").strip() or None
    return os.environ.pop(ENGINE_SECRET_ENV, "") or None


def report_ports(fd: int, ports: EnginePorts) -> None:
    """Tell the starter which ports were bound (one line on ``--report_ports_fd``), then close it."""
    if fd < 0:
        return
    try:
        os.write(fd, ports_report(ports))
    except OSError as error:  # the starter went away: serve anyway, as a hand-started engine would
        log.warning("could not report the ports on fd %d: %s", fd, error)
    finally:
        os.close(fd)


class IdentityHandler(tornado.web.RequestHandler):
    """``GET /tfserve-engine/identity?challenge=C``: ``{"proof": HMAC(secret, address, port, C)}``.

    Open to anyone: the answer is bound to this socket's own address and port, so
    it proves nothing about any other listener, and the secret never leaves.
    """

    def initialize(self, secret: str | None) -> None:
        self.secret = secret

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        challenge = self.get_query_argument("challenge", "")
        if not self.secret or not challenge or len(challenge) > _MAX_CHALLENGE_CHARS:
            self.set_status(400 if self.secret else 404)
            self.finish(json.dumps({"error": "send ?challenge=<random hex> to an engine started with a secret"}))
            return
        address, port = listening_address(self.request)[:2]
        self.finish(json.dumps({"proof": identity_proof(self.secret, local_address(address), port, challenge),
                                "pid": os.getpid()}))


class TokenCheckHandler(tornado.web.RequestHandler):
    """``GET /tfserve-engine/token-check?model=M&verb=V`` with the token as ``Authorization: Bearer``.

    For the owner only. 204 when the engine would accept the token for that model
    and verb (a verb that is not a share verb, or no model, checks the token
    alone: the real request then gets the engine's own answer); otherwise the
    status and ``{"error": ...}`` the engine would answer.
    """

    def initialize(self, auth: Authenticator) -> None:
        self.auth = auth

    def _fail(self, error: ServingError) -> None:
        self.set_status(error.code.http_status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": error.message}))

    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        if not self.auth.is_owner_secret(self.request.headers.get(ENGINE_SECRET_HEADER)):
            self._fail(ServingError(Code.UNAUTHENTICATED, "The management API needs the engine secret"))
            return
        token = bearer_token(self.request.headers.get("Authorization"))
        if token is None:
            self._fail(ServingError(Code.UNAUTHENTICATED, "Send the share token as 'Authorization: Bearer tfs_...'"))
            return
        model = self.get_query_argument("model", "")
        verb = self.get_query_argument("verb", "")
        try:
            access = self.auth.check_token(token)
            if model and verb in SHARE_VERBS:
                access.require(model, verb)
        except ServingError as error:
            self._fail(error)
            return
        self.set_status(204)
        self.finish()


def add_identity_route(app: tornado.web.Application, secret: str | None) -> None:
    """Answer identity challenges on ``app``'s port (ahead of its own routes, which never use the path)."""
    app.add_handlers(r".*", [(IDENTITY_PATH, IdentityHandler, {"secret": secret})])


def add_management_routes(app: tornado.web.Application, secret: str | None, auth: Authenticator) -> None:
    app.add_handlers(r".*", [(IDENTITY_PATH, IdentityHandler, {"secret": secret}),
                             (TOKEN_CHECK_PATH, TokenCheckHandler, {"auth": auth})])
