"""Who may call the engine: the owner (holding the engine secret) or a share token's bearer.

A standalone engine, like TF Serving, answers anyone who can reach its port. Run
with ``--require_auth`` (the Jupyter extension always does), every request needs
either the engine secret, which only the process that started the engine holds,
or a share token.

A share token grants one model and a few verbs until it expires or is revoked.
It is shown once, at creation; the store keeps only its SHA-256 (the token holds
256 random bits, so a slow password hash would add nothing) and compares digests
in constant time. Tokens look like ``tfs_<id>_<secret>``: the id finds the record
without scanning, and lets a user name the token to revoke without its secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from ..engine.errors import Code, ServingError, invalid_argument
from ..wire import (  # noqa: F401 (re-exported: the engine's modules import them from here)
    DEFAULT_SHARE_VERBS,
    ENGINE_SECRET_ENV,
    ENGINE_SECRET_HEADER,
    SHARE_VERBS,
    TOKEN_PREFIX,
    bearer_token,
)
from .state import StateStore, TokenRecord

DEFAULT_TOKEN_LIFETIME_SECONDS = 24 * 3600
MAX_TOKEN_LIFETIME_SECONDS = 365 * 24 * 3600


def secret_matches(secret: str | None, presented: str | None) -> bool:
    """Is ``presented`` the engine secret (compared in constant time)? Never, when there is no secret."""
    return bool(secret) and presented is not None and hmac.compare_digest(presented.encode(), secret.encode())


@dataclass(frozen=True)
class Access:
    """What the caller may do: everything (owner) or some verbs on one model (share token)."""

    owner: bool
    model: str = ""
    verbs: tuple[str, ...] = ()
    token_id: str = ""

    def require(self, model: str | None, verb: str | None) -> None:
        """Raise PERMISSION_DENIED unless the caller may use ``verb`` on ``model``.

        ``model=None`` stands for anything that is not one model's endpoint (the model
        list, metrics, management): only the owner reaches those.
        """
        if self.owner:
            return
        if model is None or verb is None:
            raise ServingError(Code.PERMISSION_DENIED, "A share token grants access to one model's endpoints only")
        if model != self.model:
            raise ServingError(Code.PERMISSION_DENIED, f"This share token does not grant access to model {model}")
        if verb not in self.verbs:
            raise ServingError(
                Code.PERMISSION_DENIED,
                f"This share token does not grant '{verb}' on model {model} (it grants: {', '.join(self.verbs)})",
            )


OWNER = Access(owner=True)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    """Turns a request's credentials into an :class:`Access`, or raises 401/403 in TF Serving's format."""

    def __init__(
        self,
        store: StateStore,
        engine_secret: str | None,
        require_auth: bool,
        *,
        default_lifetime_seconds: float = DEFAULT_TOKEN_LIFETIME_SECONDS,
        clock=time.time,
    ) -> None:
        self.store = store
        self.default_lifetime_seconds = default_lifetime_seconds
        # Token records by id, updated on this engine's own create and revoke. Another engine may
        # write the same state file (two Jupyter servers of one user, or an engine orphaned by a
        # SIGKILLed Jupyter): SQLite's data_version, read before each use of the cache, changes
        # when it does, and the cache is then dropped, so a revocation made anywhere is refused
        # on the next request here, for one pragma per request rather than a row read.
        self._records: dict[str, TokenRecord | None] = {}
        self._data_version = store.data_version()
        self._secret = engine_secret or ""
        self.require_auth = require_auth
        self._clock = clock

    def is_owner_secret(self, presented: str | None) -> bool:
        return secret_matches(self._secret, presented)

    def authenticate(self, engine_secret: str | None, authorization: str | None) -> Access:
        if self.is_owner_secret(engine_secret):
            return OWNER
        token = bearer_token(authorization)
        if token is not None:
            return self.check_token(token)
        if not self.require_auth:
            return OWNER
        raise ServingError(
            Code.UNAUTHENTICATED,
            "Authentication required: send a share token as 'Authorization: Bearer tfs_...'",
        )

    def check_token(self, token: str) -> Access:
        token_id = token[len(TOKEN_PREFIX):].partition("_")[0]
        record = self._record(token_id) if token_id else None
        # Compare against a dummy digest when the id is unknown, so timing does not tell ids apart.
        expected = record.token_hash if record is not None else hash_token(secrets.token_hex(16))
        if not hmac.compare_digest(hash_token(token).encode(), expected.encode()) or record is None:
            raise ServingError(Code.UNAUTHENTICATED, "Invalid share token")
        if record.revoked_at is not None:
            raise ServingError(Code.PERMISSION_DENIED, "This share token has been revoked")
        if self._clock() >= record.expires_at:
            raise ServingError(Code.UNAUTHENTICATED, "This share token has expired")
        return Access(owner=False, model=record.model, verbs=record.verbs, token_id=record.id)

    def _record(self, token_id: str) -> TokenRecord | None:
        version = self.store.data_version()
        if version != self._data_version:  # another connection committed: every cached row may be stale
            self._records.clear()
            self._data_version = version
        if token_id in self._records:
            return self._records[token_id]
        record = self.store.token(token_id)
        if record is not None:  # unknown ids are not cached: a flood of guesses must not grow memory
            self._records[token_id] = record
        return record

    # -- the owner's side: create, list, revoke --------------------------------------------------

    def create_token(
        self, model: str, verbs: list[str] | tuple[str, ...] | None = None,
        lifetime_seconds: float | None = None, description: str = "",
    ) -> tuple[str, TokenRecord]:
        """A new token (returned once, never stored) and its record."""
        if not isinstance(model, str) or not model:
            raise invalid_argument("'model' must name the model the token grants")
        chosen = tuple(DEFAULT_SHARE_VERBS if verbs is None else verbs)
        unknown = [verb for verb in chosen if verb not in SHARE_VERBS]
        if unknown or not chosen:
            raise invalid_argument(
                f"'verbs' must be a non-empty subset of {', '.join(SHARE_VERBS)}; got {list(chosen)}"
            )
        lifetime = self.default_lifetime_seconds if lifetime_seconds is None else lifetime_seconds
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or not (
            0 < lifetime <= MAX_TOKEN_LIFETIME_SECONDS
        ):
            raise invalid_argument(
                f"'expires_in_seconds' must be between 1 and {MAX_TOKEN_LIFETIME_SECONDS}; got {lifetime!r}"
            )
        if not isinstance(description, str) or len(description) > 200:
            raise invalid_argument("'description' must be a string of at most 200 characters")
        token_id = secrets.token_hex(6)
        token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        now = self._clock()
        record = TokenRecord(token_id, hash_token(token), model, tuple(dict.fromkeys(chosen)), description,
                             now, now + lifetime, None)
        self.store.add_token(record)
        self._records[token_id] = record
        return token, record

    def revoke_token(self, token_id: str) -> TokenRecord:
        record = self.store.token(token_id)
        if record is None:
            raise ServingError(Code.NOT_FOUND, f"No share token with id {token_id}")
        self.store.revoke_token(token_id, self._clock())
        revoked = self.store.token(token_id)
        self._records[token_id] = revoked
        return revoked  # type: ignore[return-value]
