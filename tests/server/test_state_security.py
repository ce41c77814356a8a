"""The engine's state is its owner's alone, and a revocation made by any engine on the file holds everywhere.

Two ``jupyter lab`` of one user share one state file, and an engine orphaned by a SIGKILLed
Jupyter keeps running beside the new one: each engine writes through its own SQLite
connection, so these tests use two stores on one file, and a second process for the
revocation, as the two engines would.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import pytest

from jupyter_tfserve.engine.config import ModelServerConfig, single_model_config, write_model_server_config
from jupyter_tfserve.engine.errors import Code, ServingError
from jupyter_tfserve.server.auth import Authenticator
from jupyter_tfserve.server.state import StateStore
from tests.helpers.files import mode, umask
from tests.helpers.server import REPO


def test_state_folder_database_and_sqlite_side_files_are_owner_only_from_the_first_write(tmp_path):
    path = tmp_path / "new" / "deeper" / "state.sqlite"
    with umask(0o022):
        store = StateStore(path)
        try:
            store.save_routing("m", {"1": 100}, None, None)
            # The side files exist while the connection is open: these are the ones another user could read.
            assert {p.name for p in path.parent.iterdir()} >= {"state.sqlite", "state.sqlite-wal", "state.sqlite-shm"}
            for name in ("state.sqlite", "state.sqlite-wal", "state.sqlite-shm"):
                assert mode(path.parent / name) == 0o600, name
            assert mode(tmp_path / "new") == 0o700
            assert mode(tmp_path / "new" / "deeper") == 0o700
        finally:
            store.close()


def test_a_state_file_written_world_readable_before_is_made_owner_only(tmp_path):
    path = tmp_path / "state.sqlite"
    with umask(0o022):
        old = sqlite3.connect(path, isolation_level=None)
        old.execute("PRAGMA journal_mode=WAL")
        old.execute("CREATE TABLE t (x)")
        old.execute("INSERT INTO t VALUES (1)")
        for name in ("state.sqlite", "state.sqlite-wal", "state.sqlite-shm"):
            os.chmod(tmp_path / name, 0o644)
        try:
            StateStore(path).close()
            for name in ("state.sqlite", "state.sqlite-wal", "state.sqlite-shm"):
                assert mode(tmp_path / name) == 0o600, name
        finally:
            old.close()


def test_the_model_config_and_the_folders_made_for_it_are_owner_only(tmp_path):
    path = tmp_path / "state" / "sub" / "models.config"
    with umask(0o022):
        write_model_server_config(single_model_config("m", "/models/m"), path)
    assert mode(path) == 0o600
    assert mode(tmp_path / "state") == 0o700 and mode(tmp_path / "state" / "sub") == 0o700
    write_model_server_config(ModelServerConfig(), path)  # the rewrite too
    assert mode(path) == 0o600


def test_a_folder_that_already_exists_keeps_itsmode(tmp_path):
    existing = tmp_path / "shared"
    existing.mkdir()
    existing.chmod(0o755)
    write_model_server_config(ModelServerConfig(), existing / "models.config")
    assert mode(existing) == 0o755


def test_a_revocation_by_another_engine_on_the_same_file_is_refused_on_the_next_request(tmp_path):
    first, second = StateStore(tmp_path / "state.sqlite"), StateStore(tmp_path / "state.sqlite")
    try:
        mine, theirs = Authenticator(first, "s1", True), Authenticator(second, "s2", True)
        token, record = mine.create_token("m")
        assert theirs.check_token(token).model == "m"  # now cached by the second engine
        assert theirs.check_token(token).model == "m"
        mine.revoke_token(record.id)
        with pytest.raises(ServingError) as raised:
            theirs.check_token(token)
        assert raised.value.code is Code.PERMISSION_DENIED and "revoked" in raised.value.message
        # And the other way round: a token the second engine mints works on the first.
        other, _ = theirs.create_token("m")
        assert mine.check_token(other).model == "m"
    finally:
        first.close()
        second.close()


_REVOKE = """
import sys
from jupyter_tfserve.server.auth import Authenticator
from jupyter_tfserve.server.state import StateStore
store = StateStore(sys.argv[1])
Authenticator(store, "other-engine", True).revoke_token(sys.argv[2])
store.close()
"""


def test_a_revocation_from_another_process_is_seen(tmp_path):
    """The orphaned engine's case: the revocation comes through another process's connection."""
    store = StateStore(tmp_path / "state.sqlite")
    try:
        auth = Authenticator(store, "s", True)
        token, record = auth.create_token("m")
        assert auth.check_token(token).token_id == record.id
        subprocess.run([sys.executable, "-c", _REVOKE, str(tmp_path / "state.sqlite"), record.id], check=True,
                       cwd=REPO, timeout=60)
        with pytest.raises(ServingError) as raised:
            auth.check_token(token)
        assert raised.value.code is Code.PERMISSION_DENIED
    finally:
        store.close()


def test_the_per_request_revocation_check_costs_microseconds(tmp_path):
    """One PRAGMA data_version per token check; measured here so a slower check is noticed."""
    store = StateStore(tmp_path / "state.sqlite")
    try:
        auth = Authenticator(store, "s", True)
        token, _ = auth.create_token("m")
        auth.check_token(token)
        count = 2000
        started = time.perf_counter()
        for _ in range(count):
            store.data_version()
        pragma = (time.perf_counter() - started) / count
        started = time.perf_counter()
        for _ in range(count):
            auth.check_token(token)
        check = (time.perf_counter() - started) / count
        print(f"data_version {pragma * 1e6:.1f} us; whole token check {check * 1e6:.1f} us")
        assert pragma < 200e-6  # ~2-5 us on a laptop; generous for a loaded CI machine
    finally:
        store.close()
