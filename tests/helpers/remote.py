"""Object-storage servers for tests (moto for S3, gcp-storage-emulator for GCS) and what every remote test does.

The S3 and GCS engine tests run the same scenarios (a version goes live while requests
flow; a missing bucket is one model's status): the scenarios live here once, and both
stores come as one shape, :class:`ObjectStore` (make a bucket, upload a folder, the
environment an engine needs to reach it), from :func:`moto_s3` and :func:`gcs_store`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.server import ServerProcess, free_port

log = logging.getLogger(__name__)

Put = Callable[[Path, str], None]  # (local file, "bucket/key") -> uploaded


def upload_tree(put: Put, local: Path, prefix: str, skip: tuple[str, ...] = ()) -> None:
    """Upload every file under ``local`` to ``prefix/<relative path>``, leaving out names starting with ``skip``."""
    for path in sorted(local.rglob("*")):
        relative = path.relative_to(local).as_posix()
        if path.is_file() and not relative.startswith(skip):
            put(path, f"{prefix}/{relative}")


def s3_put(client) -> Put:
    """A :data:`Put` through a boto3 S3 client: the key's first part is the bucket."""
    def put(local: Path, key: str) -> None:
        bucket, _, name = key.partition("/")
        client.upload_file(str(local), bucket, name)

    return put


@dataclass
class ObjectStore:
    """A running S3 or GCS server for one test, as the engine and the test see it."""

    scheme: str  # "s3" or "gs"
    endpoint: str
    env: dict[str, str]  # what a user of this store sets for the engine (endpoint, credentials, cache folder)
    put: Put
    make_bucket: Callable[[str], None]
    client: object = None  # the store's own client (boto3 for S3), for what a test does beyond uploading

    def upload(self, local: Path, prefix: str, skip: tuple[str, ...] = ()) -> None:
        """Every file under ``local`` to ``bucket/prefix/...`` (``prefix`` starts with the bucket)."""
        upload_tree(self.put, local, prefix, skip)

    def url(self, path: str) -> str:
        return f"{self.scheme}://{path}"


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


@contextmanager
def moto_s3(cache: Path) -> Iterator[ObjectStore]:
    """moto's S3 server on 127.0.0.1 (a thread of this process), with ``cache`` as the engine's remote cache."""
    import boto3
    import moto.server

    server = moto.server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    try:
        yield ObjectStore("s3", endpoint, {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint,
                                           "TFSERVE_REMOTE_CACHE": str(cache)},
                          s3_put(client), lambda bucket: client.create_bucket(Bucket=bucket), client)
    finally:
        server.stop()


@contextmanager
def gcs_store(cache: Path) -> Iterator[ObjectStore]:
    """gcp-storage-emulator on 127.0.0.1, with ``cache`` as the engine's remote cache."""
    from gcsfs.core import GCSFileSystem

    with gcs_emulator() as endpoint:
        fs = GCSFileSystem(token="anon", endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False)
        yield ObjectStore("gs", endpoint, {"STORAGE_EMULATOR_HOST": endpoint, "TFSERVE_REMOTE_CACHE": str(cache)},
                          gcs_put(endpoint), fs.mkdir)


def predict(server: ServerProcess, model: str) -> tuple[float, int]:
    """``(prediction for 2.0, version that answered)``; AssertionError on any non-200 answer."""
    response = server.post(f"/v1/models/{model}:predict", {"instances": [2.0]})
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0], int(response.headers["X-TFServe-Model-Version"])


def versions_seen_while(server: ServerProcess, model: str, publish: Callable[[], None],
                        version: int, timeout: float = 90) -> tuple[set[int], list[str]]:
    """Predict in a loop while ``publish()`` uploads ``version`` and until it alone is AVAILABLE.

    Returns the versions that answered and the failed requests, so a test can require
    both versions and no failure: the switch must happen under load without a gap.
    """
    failures: list[str] = []
    seen: set[int] = set()
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set() and len(seen) + len(failures) < 100_000:
            try:
                seen.add(predict(server, model)[1])
            except AssertionError as error:
                failures.append(str(error))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        publish()
        server.wait_for_versions(model, {version}, timeout=timeout)
    finally:
        stop.set()
        worker.join(timeout=60)
    return seen, failures


def version_status(server: ServerProcess, model: str, version: int | None = None) -> dict:
    """The model's status entry for ``version`` (the first entry if None), or {} when there is none yet."""
    response = server.get(f"/v1/models/{model}")
    if response.status_code != 200:
        return {}
    entries = response.json()["model_version_status"]
    if version is None:
        return entries[0] if entries else {}
    return next((entry for entry in entries if int(entry["version"]) == version), {})


def wait_for_error(server: ServerProcess, model: str, needle: str, version: int | None = None,
                   timeout: float = 60) -> dict:
    """Wait until ``model``'s status (for ``version``) has an error message containing ``needle``; return it."""
    server.wait_until(lambda: needle in version_status(server, model, version).get("status", {}).get(
        "error_message", ""), timeout, f"{needle!r} in the status of {model}")
    return version_status(server, model, version)


def cached_versions(cache: Path) -> list[str]:
    """The version numbers of the finished copies in a remote cache folder, and any leftover .tmp folder names."""
    return sorted(p.name if p.name.startswith(".tmp") else p.name.split("-")[0] for p in cache.iterdir())


@contextmanager
def gcs_emulator() -> Iterator[str]:
    """A gcp-storage-emulator (in memory) on 127.0.0.1 in this process; yields ``STORAGE_EMULATOR_HOST``.

    In-process because it is a plain ``http.server`` thread with nothing to install; the
    engine under test reaches it over HTTP like any GCS endpoint.
    """
    from gcp_storage_emulator.server import create_server

    # One INFO line per request, and a traceback whenever a client closes a read early.
    logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
    server = create_server("127.0.0.1", free_port(), in_memory=True)
    server.start()
    host, port = server._api._httpd.server_address[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def gcs_put(endpoint: str) -> Put:
    """A :data:`Put` into the emulator at ``endpoint`` through gcsfs (the client the engine uses)."""
    from gcsfs.core import GCSFileSystem

    fs = GCSFileSystem(token="anon", endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False)

    def put(local: Path, key: str) -> None:
        fs.put_file(str(local), key)

    return put
