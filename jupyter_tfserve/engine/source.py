"""Find the versions of a model on disk and decide which ones should be served.

TF Serving aspires a numbered directory the moment it appears, so a version
that is still being copied fails to load (and is never retried) or loads
without its variables. This source only offers versions that look complete
and whose files have stopped changing; the manager retries any that still fail.

A SavedModel is code: its ops run as the engine's user. An engine with a model
repository (the Jupyter extension's, the private engine's) therefore also refuses a
version that someone else could have put there or could change (:class:`VersionTrust`);
a standalone engine, like TF Serving, serves what its folders hold.
"""

from __future__ import annotations

import functools
import grp
import logging
import os
import pwd
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from . import storage
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
    # Complete at its (remote) source but not brought here: too large for the bound or the disk.
    refused: bool = False


# Most entries (folders and files) one version may hold before the trust check gives up on it.
MAX_CHECKED_ENTRIES = 100_000


@dataclass(frozen=True)
class VersionTrust:
    """Which version folders an engine with a model repository serves, as ssh decides which keys it reads.

    TF Serving loads any numbered folder under a served path, following symlinks. On a
    machine shared with other users that lets anyone who can write a folder on the way,
    or swap a symlink, choose the code the engine runs. A version is served only if:

    - it resolves (symlinks followed) under an allowed path: the repository root, an
      allowed folder, or the model's own base path; so does every symlink inside it;
    - no other user can change it: the version folder, everything in it, and every folder
      from it up to that allowed path are owned by the engine's user or root and are
      neither world-writable nor group-writable, unless the group is the owner's private
      group (Debian's rule for ssh's StrictModes); a folder above the version may be
      writable by others if it is sticky (others cannot rename what is ours).

    Plain folders of the engine's own user pass unchanged, so TF Serving's semantics for
    them hold. The path offered for loading is the resolved one, so swapping a symlink
    after the check redirects nothing.
    """

    roots: tuple[Path, ...]
    uid: int = field(default_factory=os.geteuid)

    def check(self, base: Path, version_dir: Path) -> tuple[Path, str]:
        """``(resolved path, "")``, or ``(resolved path, why it is refused)``."""
        allowed = (*self.roots, Path(os.path.realpath(base)))
        resolved = Path(os.path.realpath(version_dir))
        anchor = _within(resolved, allowed)
        if anchor is None:
            return resolved, (f"refused: it resolves to {resolved}, outside the allowed paths "
                              f"({', '.join(str(path) for path in allowed)})")
        try:
            for folder in (resolved, *resolved.parents):
                why = self._changeable(folder, os.stat(folder), sticky_ok=folder != resolved)
                if why:
                    return resolved, f"refused: {why}"
                if folder == anchor:
                    break
            why = self._check_tree(resolved, allowed)
        except OSError as error:
            why = f"cannot check {error.filename}: {error.strerror}"
        return resolved, f"refused: {why}" if why else ""

    def _check_tree(self, top: Path, allowed: tuple[Path, ...]) -> str:
        """The first entry under ``top`` another user could have changed, following symlinks that stay allowed."""
        seen: set[tuple[int, int]] = set()
        pending = [str(top)]
        checked = 0
        while pending:
            folder = pending.pop()
            with os.scandir(folder) as entries:
                for entry in entries:
                    checked += 1
                    if checked > MAX_CHECKED_ENTRIES:
                        return f"{top} holds more than {MAX_CHECKED_ENTRIES} entries"
                    path = entry.path
                    if entry.is_symlink():
                        target = os.path.realpath(path)
                        if _within(Path(target), allowed) is None:
                            return f"{path} is a symlink to {target}, outside the allowed paths"
                        try:
                            status = os.stat(target)
                        except FileNotFoundError:
                            continue  # dangling: nothing to run; the load says what is missing
                        path = target
                    else:
                        status = entry.stat(follow_symlinks=False)
                    why = self._changeable(path, status, sticky_ok=False)
                    if why:
                        return why
                    if stat.S_ISDIR(status.st_mode) and (status.st_dev, status.st_ino) not in seen:
                        seen.add((status.st_dev, status.st_ino))
                        pending.append(path)
        return ""

    def _changeable(self, path: str | Path, status: os.stat_result, *, sticky_ok: bool) -> str:
        """Why another user could change ``path`` (its owner, its write bits), or "" when none can."""
        mode = stat.S_IMODE(status.st_mode)
        if status.st_uid not in (self.uid, 0):
            return (f"{path} is owned by uid {status.st_uid}, not by this engine's user (uid {self.uid}) or root; "
                    "the engine runs no model another user could change")
        if sticky_ok and mode & stat.S_ISVTX:
            return ""
        if mode & stat.S_IWOTH:
            return f"{path} is writable by every user (mode {mode:04o})"
        if mode & stat.S_IWGRP and not _private_group(status.st_gid, status.st_uid):
            return f"{path} is writable by group {status.st_gid}, which has other members (mode {mode:04o})"
        return ""


def _within(path: Path, folders: tuple[Path, ...]) -> Path | None:
    """The first of ``folders`` that is ``path`` or holds it (all already resolved)."""
    for folder in folders:
        if path == folder or folder in path.parents:
            return folder
    return None


@functools.lru_cache(maxsize=64)
def _private_group(gid: int, uid: int) -> bool:
    """Is ``gid`` the owner's own group: the owner is its only member, by primary or supplementary membership?

    Debian's ssh patch for group-writable files under a umask of 002 (user private
    groups); a group with no member at all is refused too, since it is usually a setgid
    program's. Cached per group and owner: the password file is walked once.
    """
    try:
        group = grp.getgrgid(gid)
        owner = pwd.getpwuid(uid).pw_name
    except KeyError:
        return False
    if any(member != owner for member in group.gr_mem):
        return False
    primary = [entry.pw_uid for entry in pwd.getpwall() if entry.pw_gid == gid]
    if any(member != uid for member in primary):
        return False
    return bool(primary) or owner in group.gr_mem


_trust: VersionTrust | None = None


def set_version_trust(trust: VersionTrust | None) -> None:
    """The rule :func:`list_versions` applies by default in this process (``None``: TF Serving's, none).

    Process-wide because the manager lists versions by base path alone; the engine
    process sets it once at start from its model-path policy.
    """
    global _trust
    _trust = trust


def version_trust() -> VersionTrust | None:
    return _trust


def list_versions(base_path: str | os.PathLike[str], trust: VersionTrust | None = None,
                  model: ModelConfig | None = None,
                  max_remote_version_bytes: int = storage.DEFAULT_MAX_VERSION_BYTES) -> dict[int, VersionOnDisk]:
    """Every numbered directory under ``base_path`` (``00000123`` is version 123).

    A remote base path (``s3://``, ``gs://``, ``hdfs://``, ``file://``) lists the local
    copies of its versions (:mod:`.storage`); ``model``'s version policy picks which to copy, and
    ``max_remote_version_bytes`` bounds each copy.

    Names that are not positive integers are ignored, which is what makes a
    temporary export directory (``.tmp-...``) invisible. With a :class:`VersionTrust`
    (``trust``, else the process's: see :func:`set_version_trust`), a version it refuses
    is listed as not complete, with the reason, and the path of one it accepts is resolved.
    """
    if isinstance(base_path, str) and storage.is_remote(base_path):
        return _remote_versions(base_path, model, max_remote_version_bytes)
    rule = trust or _trust
    base = Path(base_path)
    found: dict[int, VersionOnDisk] = {}
    names: dict[int, str] = {}
    try:
        entries = list(os.scandir(base))
    except FileNotFoundError:
        return found
    except OSError as error:
        log.warning("cannot list model base path %s: %s", base, error)
        return found
    for entry in entries:
        # ASCII digits only, as TF Serving's absl::SimpleAtoi: str.isdigit() also takes '²' (int() then
        # raises, and the whole model's poll with it) and U+0661 ARABIC-INDIC ONE (a second version 1).
        if not (entry.name.isascii() and entry.name.isdigit()) or not entry.is_dir(follow_symlinks=True):
            continue
        version = int(entry.name)
        if version <= 0:
            continue
        path = Path(entry.path)
        refusal = ""
        if rule is not None:
            path, refusal = rule.check(base, path)
        complete, problem = (False, refusal) if refusal else check_complete(path)
        candidate = VersionOnDisk(version, path, complete, _fingerprint(path), problem)
        # Two directory names for one version (12 and 0012): keep the first, deterministically.
        if version not in found or entry.name < names[version]:
            found[version] = candidate
            names[version] = entry.name
    return found


def _remote_versions(url: str, model: ModelConfig | None, max_version_bytes: int) -> dict[int, VersionOnDisk]:
    """The finished local copies of a remote base path, and its incomplete versions with why."""
    def wanted(versions: list[int]) -> list[int]:
        return aspired_versions(model, versions) if model is not None else versions

    copies, incomplete, _problem, refused = storage.remote_versions(url, wanted, max_version_bytes)
    found = {version: VersionOnDisk(version, path, True, (str(path),)) for version, path in copies.items()}
    for version, why in incomplete.items():
        found.setdefault(version, VersionOnDisk(version, Path(f"{url.rstrip('/')}/{version}"), False, (), why))
    for version, why in refused.items():
        found.setdefault(version, VersionOnDisk(version, Path(f"{url.rstrip('/')}/{version}"), False, (), why,
                                                refused=True))
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
