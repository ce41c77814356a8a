"""Owner-only folders, for every process of the project (standard library only).

The engine's state, the extension's files and the kernel's exports all make folders that
hold nobody else's business; one function makes them, so the Jupyter server and the
kernel can use it without loading TF Serving's protos.
"""

from __future__ import annotations

import os
from pathlib import Path


def make_private_dirs(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` and any missing parent as 0700; folders that already exist keep their mode.

    ``Path.mkdir(parents=True, mode=...)`` applies the mode to the last folder only (the
    parents get the umask's 0755): every folder this engine creates holds state that is
    nobody else's business, so each is created owner-only from the start rather than
    chmod-ed afterwards.
    """
    target = Path(path)
    missing = []
    for folder in (target, *target.parents):
        if folder.is_dir():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue
        os.chmod(folder, 0o700)  # exactly 0700 whatever the umask (only the owner bits can differ)
    return target
