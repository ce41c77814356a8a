"""Find the versions of a model on disk and decide which ones should be served.

TF Serving aspires a numbered directory the moment it appears, so a version
that is still being copied fails to load (and is never retried) or loads
without its variables. This source only offers versions that look complete
and whose files have stopped changing; the manager retries any that still fail.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .config import ModelConfig

log = logging.getLogger(__name__)

_VARIABLES_SHARD = re.compile(r"^variables\.data-(\d+)-of-(\d+)$")
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
TFLITE_FILE = "model.tflite"


@dataclass(frozen=True)
class VersionOnDisk:
    version: int
    path: Path
    complete: bool
    fingerprint: tuple
    problem: str = ""


def list_versions(base_path: str | os.PathLike[str]) -> dict[int, VersionOnDisk]:
    """Every numbered directory under ``base_path`` (``00000123`` is version 123).

    Names that are not positive integers are ignored, which is what makes a
    temporary export directory (``.tmp-...``) invisible.
    """
    base = Path(base_path)
    found: dict[int, VersionOnDisk] = {}
    try:
        entries = list(os.scandir(base))
    except FileNotFoundError:
        return found
    except OSError as error:
        log.warning("cannot list model base path %s: %s", base, error)
        return found
    for entry in entries:
        if not entry.name.isdigit() or not entry.is_dir(follow_symlinks=True):
            continue
        version = int(entry.name)
        if version <= 0:
            continue
        path = Path(entry.path)
        complete, problem = check_complete(path)
        candidate = VersionOnDisk(version, path, complete, _fingerprint(path), problem)
        # Two directory names for one version (12 and 0012): keep the first, deterministically.
        if version not in found or str(path) < str(found[version].path):
            found[version] = candidate
    return found


def check_complete(version_dir: Path) -> tuple[bool, str]:
    """Does the directory hold a whole SavedModel (or a TFLite model)? Returns (complete, what is missing).

    A ``model.tflite`` is one file: it is complete once it holds still for a poll, which
    the source checks for every new version anyway.
    """
    if not any((version_dir / name).is_file() for name in SAVED_MODEL_FILES):
        if (version_dir / TFLITE_FILE).is_file():
            return True, ""
        return False, "no saved_model.pb yet"
    variables = version_dir / "variables"
    if not variables.is_dir():
        return True, ""
    names = set(os.listdir(variables))
    shards = [m for m in map(_VARIABLES_SHARD.match, names) if m]
    if not shards and "variables.index" not in names:
        return True, ""  # an empty variables/ directory: a graph without variables
    if "variables.index" not in names:
        return False, "variables/variables.index is missing"
    if not shards:
        return False, "variables/ has an index but no data shard"
    total = int(shards[0].group(2))
    present = {int(m.group(1)) for m in shards if int(m.group(2)) == total}
    if len(present) != total:
        return False, f"variables/ has {len(present)} of {total} data shards"
    return True, ""


def _fingerprint(version_dir: Path) -> tuple:
    """Names, sizes and modification times of every file: changes while a copy is under way."""
    items = []
    for root, _dirs, files in os.walk(version_dir):
        for name in files:
            try:
                stat = os.stat(os.path.join(root, name))
            except OSError:
                continue
            items.append((os.path.relpath(os.path.join(root, name), version_dir), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(items))


def aspired_versions(model: ModelConfig, available_on_disk: list[int]) -> list[int]:
    """Apply the model's version policy (default: the latest one) to complete versions."""
    versions = sorted(available_on_disk)
    policy = model.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return versions
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in versions if v in wanted]
    count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions > 0 else 1
    return versions[-count:]


def describe_policy(model: ModelConfig) -> str:
    policy = model.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return "all"
    if choice == "specific":
        return "specific " + ",".join(str(v) for v in policy.specific.versions)
    count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions > 0 else 1
    return f"latest {count}"
