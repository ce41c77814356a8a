"""The engine's state is its owner's alone: folders 0700, files 0600, SQLite's side files included."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat

from jupyter_tfserve.engine.config import ModelServerConfig, single_model_config, write_model_server_config
from jupyter_tfserve.server.state import StateStore


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@contextlib.contextmanager
def _umask(mask: int):
    """The usual desktop umask (files 0644, folders 0755), whatever the test runner has."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def test_state_folder_database_and_sqlite_side_files_are_owner_only_from_the_first_write(tmp_path):
    path = tmp_path / "new" / "deeper" / "state.sqlite"
    with _umask(0o022):
        store = StateStore(path)
        try:
            store.save_routing("m", {"1": 100}, None, None)
            # The side files exist while the connection is open: these are the ones another user could read.
            assert {p.name for p in path.parent.iterdir()} >= {"state.sqlite", "state.sqlite-wal", "state.sqlite-shm"}
            for name in ("state.sqlite", "state.sqlite-wal", "state.sqlite-shm"):
                assert _mode(path.parent / name) == 0o600, name
            assert _mode(tmp_path / "new") == 0o700
            assert _mode(tmp_path / "new" / "deeper") == 0o700
        finally:
            store.close()


def test_a_state_file_written_world_readable_before_is_made_owner_only(tmp_path):
    path = tmp_path / "state.sqlite"
    with _umask(0o022):
        old = sqlite3.connect(path, isolation_level=None)
        old.execute("PRAGMA journal_mode=WAL")
        old.execute("CREATE TABLE t (x)")
        old.execute("INSERT INTO t VALUES (1)")
        for name in ("state.sqlite", "state.sqlite-wal", "state.sqlite-shm"):
            os.chmod(tmp_path / name, 0o644)
        try:
            StateStore(path).close()
            for name in ("state.sqlite", "state.sqlite-wal", "state.sqlite-shm"):
                assert _mode(tmp_path / name) == 0o600, name
        finally:
            old.close()


def test_the_model_config_and_the_folders_made_for_it_are_owner_only(tmp_path):
    path = tmp_path / "state" / "sub" / "models.config"
    with _umask(0o022):
        write_model_server_config(single_model_config("m", "/models/m"), path)
    assert _mode(path) == 0o600
    assert _mode(tmp_path / "state") == 0o700 and _mode(tmp_path / "state" / "sub") == 0o700
    write_model_server_config(ModelServerConfig(), path)  # the rewrite too
    assert _mode(path) == 0o600


def test_a_folder_that_already_exists_keeps_its_mode(tmp_path):
    existing = tmp_path / "shared"
    existing.mkdir()
    existing.chmod(0o755)
    write_model_server_config(ModelServerConfig(), existing / "models.config")
    assert _mode(existing) == 0o755
