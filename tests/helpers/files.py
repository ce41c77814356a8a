"""File-mode helpers for the tests that check what is owner-only."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path


def mode(path: Path | str) -> int:
    """The permission bits of ``path`` itself (a symbolic link is not followed)."""
    return stat.S_IMODE(os.lstat(path).st_mode)


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """Run with ``mask`` (the usual desktop 0o022: files 0644, folders 0755), whatever the test runner has."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)
