"""Model base paths in object storage (``s3://``, ``gs://``, ``hdfs://``, ``file://``), served from a local cache.

TensorFlow ≥ 2.6 reads no S3 or HDFS by itself, and a SavedModel read straight from a
bucket would be read while it is still being uploaded. So a remote base path is
mirrored: its numbered version folders are listed through fsspec, a version whose
objects look complete and have held still for one sync is copied into a temporary
folder of a local cache, checked with the same rule as a folder on disk, and renamed
into place under a name derived from its content (URL, version, object names, sizes
and ETags). The manager only ever sees those finished local copies, so it loads,
polls and retries them exactly as it does folders on disk.

Remote I/O never runs on the event loop: :func:`remote_versions` answers from the last
finished sync at once and starts the next one in a worker thread. A listing that fails
(no such bucket, bad credentials, no Hadoop client) is kept as the model's problem,
which the manager reports in its version status; other models are untouched.

What is copied is bounded: a version whose listed objects add up to more than
``--max_remote_version_bytes`` (``EngineOptions.max_remote_version_bytes``, handed to each sync
by the manager), or more than the cache folder has free, is refused before a byte is
fetched, and a copy that reads more than was listed (an object replaced by a bigger one,
a server that lies) is aborted and its partial folder removed. A refused version is
reported with why, as RESOURCE_EXHAUSTED, and the versions already served keep serving.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "file")
CACHE_ENV = "TFSERVE_REMOTE_CACHE"
_SHARD = re.compile(r"^variables/variables\.data-(\d+)-of-(\d+)$")
_workers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tfserve-storage")
MAX_VERSION_BYTES_FLAG = "--max_remote_version_bytes"
# Larger than any SavedModel TF Serving users ship in practice (a 2 GiB protobuf limit applies to the
# graph; variables of large language models run to tens of GiB), yet a bound on a mistyped base path.
DEFAULT_MAX_VERSION_BYTES = 64 << 30
_COPY_CHUNK = 1 << 20


class CopyRefused(Exception):
    """A version that is complete in its bucket but is not brought into the cache; the message says why.

    ``fetched``: bytes were read before it failed, so the same listing is not fetched again;
    ``incomplete``: what arrived is not a whole SavedModel (reported as such, not as a size refusal).
    """

    def __init__(self, message: str, fetched: bool = False, incomplete: bool = False) -> None:
        super().__init__(message)
        self.fetched, self.incomplete = fetched, incomplete


def is_remote(path: str) -> bool:
    """Is ``path`` a URL this module serves (rather than a local folder)?"""
    return "://" in path and urlsplit(path).scheme.lower() in REMOTE_SCHEMES


def cache_root() -> Path:
    """Where finished copies live: ``$TFSERVE_REMOTE_CACHE``, else the user's cache folder."""
    configured = os.environ.get(CACHE_ENV)
    base = Path(configured) if configured else Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jupyter-tfserve" / "remote"
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    return base


def _s3_options() -> dict[str, Any]:
    """s3fs options from the variables KServe (``AWS_ENDPOINT_URL``) and TF Serving (``S3_*``) users set."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT") or ""
    if endpoint and "://" not in endpoint:
        scheme = "http" if os.environ.get("S3_USE_HTTPS", "1") in ("0", "false", "False") else "https"
        endpoint = f"{scheme}://{endpoint}"
    client: dict[str, Any] = {}
    if endpoint:
        client["endpoint_url"] = endpoint
    if os.environ.get("S3_VERIFY_SSL", "1") in ("0", "false", "False"):
        client["verify"] = False
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        client["region_name"] = region
    return {"client_kwargs": client, "skip_instance_cache": True, "use_listings_cache": False}


def open_url(url: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path inside it)`` for a remote base path; ValueError says what is missing."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        import fsspec
    except ImportError:
        raise ValueError(f"{url}: remote base paths need fsspec (pip install 'jupyter-tfserve[storage]')") from None
    if scheme == "file":
        return fsspec.filesystem("file"), parts.path
    if scheme == "s3":
        try:
            import s3fs
        except ImportError:
            raise ValueError(f"{url}: s3:// base paths need s3fs (pip install s3fs)") from None
        return s3fs.S3FileSystem(**_s3_options()), f"{parts.netloc}{parts.path}"
    if scheme in ("gs", "gcs"):
        try:
            # The plain filesystem: gcsfs's default one first probes each bucket's layout over gRPC,
            # which an emulator does not answer (a minute's timeout per bucket) and listing does not need.
            from gcsfs.core import GCSFileSystem
        except ImportError:
            raise ValueError(f"{url}: gs:// base paths need gcsfs (pip install gcsfs)") from None
        # gcsfs reads STORAGE_EMULATOR_HOST itself; an emulator takes no credentials.
        token = "anon" if os.environ.get("STORAGE_EMULATOR_HOST") else None
        return GCSFileSystem(token=token, skip_instance_cache=True, use_listings_cache=False), \
            f"{parts.netloc}{parts.path}"
    try:
        from fsspec.implementations.arrow import HadoopFileSystem

        return HadoopFileSystem(host=parts.hostname or "default", port=parts.port or 8020), parts.path
    except Exception as error:  # pyarrow missing, or no libhdfs / Hadoop CLASSPATH on this machine
        raise ValueError(f"{url}: hdfs:// base paths need pyarrow and a Hadoop client (libhdfs, HADOOP_HOME, "
                         f"CLASSPATH) on this machine: {error}") from None


def complete_by_names(names: set[str]) -> tuple[bool, str]:
    """The completeness rule of :func:`source.check_complete`, on object names relative to the version."""
    if not names & {"saved_model.pb", "saved_model.pbtxt"}:
        return ("model.tflite" in names, "" if "model.tflite" in names else "no saved_model.pb yet")
    shards = [match for match in map(_SHARD.match, names) if match]
    has_index = "variables/variables.index" in names
    if not shards and not has_index:
        return True, ""
    if not has_index:
        return False, "variables/variables.index is missing"
    if not shards:
        return False, "variables/ has an index but no data shard"
    total = int(shards[0].group(2))
    present = {int(match.group(1)) for match in shards if int(match.group(2)) == total}
    if len(present) != total:
        return False, f"variables/ has {len(present)} of {total} data shards"
    return True, ""


@dataclass
class Mirror:
    """One remote base path and its local copies; all state changes happen in a worker thread under a lock."""

    url: str
    snapshot: dict[int, tuple[Path, tuple]] = field(default_factory=dict)
    problems: dict[int, str] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)
    # version -> (listing, why, incomplete) of a copy that failed: not fetched again until the listing changes.
    failed: dict[int, tuple[tuple, str, bool]] = field(default_factory=dict)
    problem: str = ""
    seen: dict[int, tuple] = field(default_factory=dict)
    offered: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    running: Future | None = None

    def sync(self, wanted: Callable[[list[int]], list[int]], max_version_bytes: int) -> None:
        """List, check and copy (at most ``max_version_bytes`` a version; 0 or less: no bound); never raises:
        a failure becomes :attr:`problem`."""
        try:
            self._sync(wanted, max_version_bytes)
            self.problem = ""
        except Exception as error:  # bucket, credentials, network: the model's status says which
            # gcsfs and s3fs say only "b/<bucket>/o" or the key for a bucket or prefix that is not there.
            missing = "no such bucket or folder: " if isinstance(error, FileNotFoundError) else ""
            message = f"cannot read base path {self.url}: {missing}{type(error).__name__}: {error}"
            if message != self.problem:
                log.warning("%s", message)
            self.problem = message

    def _sync(self, wanted: Callable[[list[int]], list[int]], max_version_bytes: int) -> None:
        fs, root = open_url(self.url)
        root = root.rstrip("/")
        entries = fs.ls(root, detail=True)
        folders = {}
        for entry in entries:
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if entry.get("type") == "directory" and name.isascii() and name.isdigit() and int(name) > 0:
                folders.setdefault(int(name), entry["name"].rstrip("/"))
        listed: dict[int, tuple] = {}
        problems: dict[int, str] = {}
        for version, folder in folders.items():
            found = fs.find(folder, detail=True)
            items = tuple(sorted(
                (name[len(folder) + 1:], _listed_size(info), str(info.get("ETag") or info.get("etag")
                                                                 or info.get("mtime") or ""))
                for name, info in found.items() if info.get("type") != "directory"))
            complete, why = complete_by_names({item[0] for item in items})
            if complete:
                listed[version] = items
            else:
                problems[version] = why
        aspired = set(wanted(sorted(listed)))
        cache = cache_root()
        snapshot = dict(self.snapshot)
        refused: dict[int, str] = {}
        failed = {version: failure for version, failure in self.failed.items() if listed.get(version) == failure[0]}
        for version in sorted(aspired):
            items = listed[version]
            target = cache / _key(self.url, version, items)
            if not target.is_dir():
                if self.seen.get(version) != items:
                    continue  # new or still changing: copy once it holds still for one sync
                if version in failed:
                    _items, why, incomplete = failed[version]
                    (problems if incomplete else refused)[version] = why
                    continue
                try:
                    _check_room(self.url, version, items, cache, max_version_bytes)
                    _copy_version(fs, self.url, version, folders[version], items, target, max_version_bytes)
                except CopyRefused as why:
                    if why.fetched:  # fetched and failed: the same listing would fail the same way
                        failed[version] = (items, str(why), why.incomplete)
                    (problems if why.incomplete else refused)[version] = str(why)
                    log.warning("%s", why)
                    continue
            snapshot[version] = (target, items)
        self.seen, self.failed = listed, failed
        for version in list(snapshot):
            self.offered[version] = self.offered.get(version, 0) + 1
        settled = all(self.offered.get(v, 0) >= 2 for v in aspired)
        for version in list(snapshot):
            gone = version not in listed or snapshot[version][1] != listed[version]
            if gone or (version not in aspired and settled):
                path, _items = snapshot.pop(version)
                self.offered.pop(version, None)
                shutil.rmtree(path, ignore_errors=True)  # a loaded version already read its files
        with self.lock:
            self.snapshot, self.problems, self.refused = snapshot, problems, refused


def _listed_size(info: dict) -> int:
    """An object's size as listed; -1 where the store does not say (then only the running total bounds it)."""
    size = info.get("size")
    return int(size) if size is not None else -1


def _check_room(url: str, version: int, items: tuple, cache: Path, limit: int) -> None:
    """Refuse, before fetching anything, a version larger than the bound or than the cache's free space."""
    total = sum(max(size, 0) for _name, size, _tag in items)
    if 0 < limit < total:
        raise CopyRefused(f"version {version} of {url} is {total} bytes, more than {MAX_VERSION_BYTES_FLAG}="
                          f"{limit}; it is not copied (raise {MAX_VERSION_BYTES_FLAG} to serve it)")
    free = shutil.disk_usage(cache).free
    if total > free:
        raise CopyRefused(f"version {version} of {url} is {total} bytes and the cache folder {cache} has only "
                          f"{free} bytes free; it is not copied (free space there, or set {CACHE_ENV} to a "
                          "larger disk)")


def _key(url: str, version: int, items: tuple) -> str:
    digest = hashlib.sha256(repr((url, version, items)).encode()).hexdigest()[:32]
    return f"{version}-{digest}"


def _copy_version(fs: Any, url: str, version: int, folder: str, items: tuple, target: Path, limit: int) -> None:
    """Copy the listed objects of one version into a temporary folder beside ``target``, then rename it in.

    Each object is read in chunks and counted, so a copy stops as soon as an object is
    longer than listed or the version passes the bound, rather than after the disk fills.
    Raises :class:`CopyRefused`; the temporary folder is removed whatever happens, so
    nothing half-copied is ever served.
    """
    from .source import check_complete

    scratch = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        total = 0
        for name, size, _tag in items:
            parts = name.rstrip("/").split("/")
            if name.startswith("/") or any(part in ("", ".", "..") for part in parts):
                raise CopyRefused(f"version {version} of {url} holds an object named {name!r}, which cannot be "
                                  "a file inside the version's folder; it is not copied", True, incomplete=True)
            if name.endswith("/") and size <= 0:  # a folder marker some upload tools write
                scratch.joinpath(*parts).mkdir(parents=True, exist_ok=True)
                continue
            source, destination = f"{folder.rstrip('/')}/{name}", scratch.joinpath(*parts)
            destination.parent.mkdir(parents=True, exist_ok=True)
            copied = 0
            with fs.open(source, "rb") as reader, open(destination, "wb") as writer:
                while chunk := reader.read(_COPY_CHUNK):
                    copied += len(chunk)
                    total += len(chunk)
                    if 0 <= size < copied:
                        raise CopyRefused(f"copy of version {version} of {url} aborted: {name} grew past its "
                                          f"listed size of {size} bytes while being copied", True)
                    if 0 < limit < total:
                        raise CopyRefused(f"copy of version {version} of {url} aborted: it passed {total} bytes, "
                                          f"more than {MAX_VERSION_BYTES_FLAG}={limit}", True)
                    writer.write(chunk)
            if 0 <= size != copied:
                raise CopyRefused(f"copy of version {version} of {url} aborted: {name} has {copied} bytes, not "
                                  f"the {size} listed (it changed while being copied)", True)
        complete, why = check_complete(scratch)
        if not complete:
            raise CopyRefused(f"the copy of {folder} is not complete ({why})", True, incomplete=True)
        os.rename(scratch, target)
        log.info("copied %s (%d bytes) to %s", folder, total, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


_mirrors: dict[str, Mirror] = {}
_mirrors_lock = threading.Lock()


def remote_versions(url: str, wanted: Callable[[list[int]], list[int]],
                    max_version_bytes: int = DEFAULT_MAX_VERSION_BYTES,
                    ) -> tuple[dict[int, Path], dict[int, str], str, dict[int, str]]:
    """``(version → local copy, version → why it is incomplete, base path problem, version → why it is
    complete in the bucket but not copied)`` from the last sync.

    Starts the next sync in a worker thread unless one is under way; ``wanted`` is the
    version policy, so only the versions it would serve are copied, each bounded by
    ``max_version_bytes`` (0 or less: no bound).
    """
    with _mirrors_lock:
        mirror = _mirrors.setdefault(url, Mirror(url))
    with mirror.lock:
        if mirror.running is None or mirror.running.done():
            mirror.running = _workers.submit(mirror.sync, wanted, max_version_bytes)
        return ({version: path for version, (path, _items) in mirror.snapshot.items()},
                dict(mirror.problems), mirror.problem, dict(mirror.refused))


def base_path_problem(url: str) -> str:
    """Why the last sync of ``url`` could not list it, or ""."""
    mirror = _mirrors.get(url)
    return mirror.problem if mirror else ""

