"""What must survive a restart besides the model config: routing, batching and share tokens.

The model config itself stays in TF Serving's text format (it can be handed to
``tensorflow_model_server`` unchanged); everything TF Serving has no file for lives
here, in SQLite, where every change is one transaction: a crash leaves the old
state or the new one, never half of each.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from ..private_files import make_private_dirs

log = logging.getLogger(__name__)

# SQLite's own files beside the database in WAL mode: the log and the shared-memory index. Both
# hold recent rows (token hashes, routing) and SQLite creates them with the database's mode.
SIDE_FILE_SUFFIXES = ("-wal", "-shm", "-journal")

SCHEMA = """
CREATE TABLE IF NOT EXISTS routing (
    model TEXT PRIMARY KEY,
    split TEXT,
    shadow TEXT,
    shadow_tolerance REAL
);
CREATE TABLE IF NOT EXISTS batching (
    model TEXT PRIMARY KEY,
    parameters TEXT
);
CREATE TABLE IF NOT EXISTS share_tokens (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    model TEXT NOT NULL,
    verbs TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL
);
"""


@dataclass(frozen=True)
class TokenRecord:
    id: str
    token_hash: str
    model: str
    verbs: tuple[str, ...]
    description: str
    created_at: float
    expires_at: float
    revoked_at: float | None

    def to_json(self) -> dict:
        """Everything but the hash: the list a user reads to find a token to revoke."""
        return {
            "id": self.id,
            "model": self.model,
            "verbs": list(self.verbs),
            "description": self.description,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        }


class StateStore:
    """A small SQLite file (or memory, for a standalone engine); safe to call from any thread."""

    def __init__(self, path: str | Path | None) -> None:
        target = ":memory:"
        if path:
            target = str(path)
            _create_owner_only(Path(path))
        self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        if path:
            _tighten(Path(path))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: it changes when another connection commits to the file.

        Another engine on the same file (two Jupyter servers of one user, or an engine
        orphaned by a SIGKILLed Jupyter) writes through its own connection; this number is
        how a cache of rows learns about it, at the cost of one pragma (a read of the WAL
        index in shared memory, no disk I/O). This connection's own commits leave it as it is.
        """
        with self._lock:
            return self._db.execute("PRAGMA data_version").fetchone()[0]

    def _write(self, sql: str, parameters: tuple) -> int:
        with self._lock:
            cursor = self._db.execute(sql, parameters)
            return cursor.rowcount

    def _read(self, sql: str, parameters: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, parameters).fetchall()

    # -- routing ---------------------------------------------------------------------------------

    def save_routing(self, model: str, split: dict | None, shadow: str | None, tolerance: float | None) -> None:
        if split is None and shadow is None:
            self._write("DELETE FROM routing WHERE model = ?", (model,))
            return
        self._write(
            "INSERT OR REPLACE INTO routing (model, split, shadow, shadow_tolerance) VALUES (?, ?, ?, ?)",
            (model, json.dumps(split) if split is not None else None, shadow, tolerance),
        )

    def routing(self) -> dict[str, tuple[dict | None, str | None, float | None]]:
        rows = self._read("SELECT model, split, shadow, shadow_tolerance FROM routing")
        return {model: (json.loads(split) if split else None, shadow, tolerance)
                for model, split, shadow, tolerance in rows}

    # -- batching --------------------------------------------------------------------------------

    def save_batching(self, model: str, parameters: dict | None) -> None:
        """``None`` removes the model's own setting (it falls back to the server's flags)."""
        if parameters is None:
            self._write("DELETE FROM batching WHERE model = ?", (model,))
        else:
            self._write("INSERT OR REPLACE INTO batching (model, parameters) VALUES (?, ?)",
                        (model, json.dumps(parameters)))

    def batching(self) -> dict[str, dict | None]:
        return {model: json.loads(parameters) for model, parameters in
                self._read("SELECT model, parameters FROM batching")}

    # -- share tokens ----------------------------------------------------------------------------

    def add_token(self, record: TokenRecord) -> None:
        self._write(
            "INSERT INTO share_tokens (id, token_hash, model, verbs, description, created_at, expires_at, revoked_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (record.id, record.token_hash, record.model, ",".join(record.verbs), record.description,
             record.created_at, record.expires_at, record.revoked_at),
        )

    def token(self, token_id: str) -> TokenRecord | None:
        rows = self._read(_TOKEN_SELECT + " WHERE id = ?", (token_id,))
        return _token(rows[0]) if rows else None

    def tokens(self) -> list[TokenRecord]:
        return [_token(row) for row in self._read(_TOKEN_SELECT + " ORDER BY created_at")]

    def revoke_token(self, token_id: str, when: float) -> bool:
        return self._write(
            "UPDATE share_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (when, token_id)
        ) > 0


def _create_owner_only(path: Path) -> None:
    """The folder (0700 where created) and an empty database file (0600) before SQLite opens it.

    SQLite creates its ``-wal`` and ``-shm`` files with the mode of the database file, so
    a database created 0600 keeps its side files owner-only from their first write; a
    database created by ``sqlite3.connect`` gets the umask's 0644 and so do they.
    """
    make_private_dirs(path.parent)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # an existing file is left to SQLite as it is (``_tighten`` then fixes its mode)
    os.close(descriptor)


def _tighten(path: Path) -> None:
    """0600 on the database and its side files, for a state file written before they were owner-only."""
    for candidate in (path, *(path.with_name(path.name + suffix) for suffix in SIDE_FILE_SUFFIXES)):
        try:
            if candidate.stat().st_mode & 0o077:
                candidate.chmod(0o600)
                log.info("state file %s was readable by other users; it is now owner-only", candidate)
        except FileNotFoundError:
            continue


_TOKEN_SELECT = (
    "SELECT id, token_hash, model, verbs, description, created_at, expires_at, revoked_at FROM share_tokens"
)


def _token(row: tuple) -> TokenRecord:
    token_id, token_hash, model, verbs, description, created_at, expires_at, revoked_at = row
    return TokenRecord(token_id, token_hash, model, tuple(v for v in verbs.split(",") if v), description,
                       created_at, expires_at, revoked_at)
