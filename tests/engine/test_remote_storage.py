"""Remote base paths against a real S3 server (moto on 127.0.0.1): listing, completeness, the cache, failures."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from jupyter_tfserve.engine import storage
from jupyter_tfserve.engine.source import check_complete, list_versions
from tests.helpers.models import write_tf2_half_plus
from tests.helpers.server import free_port

moto_server = pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
boto3 = pytest.importorskip("boto3", reason="boto3 comes with moto[server]")


@pytest.fixture(scope="module")
def s3_endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def fresh_mirrors():
    """Each test starts with no mirrors, and a sync a test left running finishes before the next begins."""
    yield
    for mirror in list(storage._mirrors.values()):
        if mirror.running is not None:
            mirror.running.result(timeout=60)
    storage._mirrors.clear()


@pytest.fixture
def s3(s3_endpoint, monkeypatch, tmp_path):
    """A boto3 client and the environment a KServe user sets, with a private cache for this test."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_endpoint,
                        storage.CACHE_ENV: str(tmp_path / "cache")}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    return client


def upload(client, local: Path, bucket: str, prefix: str, skip: tuple[str, ...] = ()) -> None:
    for path in sorted(local.rglob("*")):
        relative = path.relative_to(local).as_posix()
        if path.is_file() and not relative.startswith(skip):
            client.upload_file(str(path), bucket, f"{prefix}/{relative}")


def settle(url: str, wanted=lambda versions: versions, syncs: int = 3) -> tuple[dict, dict, str]:
    """Run ``syncs`` finished syncs (a new version is copied once it held still for one)."""
    for _ in range(syncs):
        storage.remote_versions(url, wanted)
        mirror = storage._mirrors[url]
        mirror.running.result(timeout=60)
    return storage.remote_versions(url, wanted)


def test_completeness_by_object_names_follows_the_disk_rule():
    assert storage.complete_by_names({"saved_model.pb"}) == (True, "")
    assert storage.complete_by_names({"model.tflite"}) == (True, "")
    assert storage.complete_by_names({"variables/variables.index"})[0] is False
    assert storage.complete_by_names({"saved_model.pb", "variables/variables.data-00000-of-00001"}) == (
        False, "variables/variables.index is missing")
    assert storage.complete_by_names({"saved_model.pb", "variables/variables.index",
                                      "variables/variables.data-00000-of-00002"}) == (
        False, "variables/ has 1 of 2 data shards")


def test_a_version_in_s3_is_copied_whole_to_the_cache_and_listed_as_local(s3, tmp_path):
    s3.create_bucket(Bucket="models")
    write_tf2_half_plus(tmp_path / "local", 1)
    upload(s3, tmp_path / "local" / "1", "models", "half/1")
    url = "s3://models/half"
    copies, incomplete, problem = settle(url)
    assert problem == "" and incomplete == {}
    assert set(copies) == {1}
    assert copies[1].parent == tmp_path / "cache"
    assert check_complete(copies[1]) == (True, "")
    def files(root: Path) -> dict[str, bytes]:  # object storage keeps files, not empty folders such as assets/
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert files(copies[1]) == files(tmp_path / "local" / "1")
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp-")]
    listed = list_versions(url)
    assert listed[1].complete and listed[1].path == copies[1]


def test_a_half_uploaded_version_is_reported_and_not_copied(s3, tmp_path):
    s3.create_bucket(Bucket="half-done")
    write_tf2_half_plus(tmp_path / "local", 3)
    upload(s3, tmp_path / "local" / "3", "half-done", "m/3", skip=("variables/variables.index",))
    copies, incomplete, problem = settle("s3://half-done/m")
    assert copies == {} and problem == ""
    assert incomplete == {3: "variables/variables.index is missing"}
    assert not list((tmp_path / "cache").iterdir())


def test_only_the_versions_the_policy_wants_are_copied_and_old_copies_are_swept(s3, tmp_path):
    s3.create_bucket(Bucket="policy")
    for version in (1, 2):
        write_tf2_half_plus(tmp_path / "local", version)
        upload(s3, tmp_path / "local" / str(version), "policy", f"m/{version}")
    latest = lambda versions: versions[-1:]  # noqa: E731
    copies, _incomplete, _problem = settle("s3://policy/m", latest)
    assert set(copies) == {2}
    assert [p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()] == ["2"]
    write_tf2_half_plus(tmp_path / "local", 3)
    upload(s3, tmp_path / "local" / "3", "policy", "m/3")
    copies, _incomplete, _problem = settle("s3://policy/m", latest, syncs=2)
    assert set(copies) == {2, 3}, "the old copy stays offered until the new one has been seen"
    copies, _incomplete, _problem = settle("s3://policy/m", latest, syncs=3)
    assert set(copies) == {3}
    assert [p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()] == ["3"]


def test_a_missing_bucket_and_bad_credentials_are_problems_not_exceptions(s3, monkeypatch):
    _copies, _incomplete, problem = settle("s3://no-such-bucket/m", syncs=1)
    assert "cannot read base path s3://no-such-bucket/m" in problem
    assert storage.base_path_problem("s3://no-such-bucket/m") == problem
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    started = time.monotonic()
    _copies, _incomplete, problem = settle("s3://unreachable/m", syncs=1)
    assert "cannot read base path s3://unreachable/m" in problem
    assert time.monotonic() - started < 60


def test_tf_serving_spelling_of_the_endpoint_is_understood(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("S3_ENDPOINT", "127.0.0.1:9000")
    monkeypatch.setenv("S3_USE_HTTPS", "0")
    monkeypatch.setenv("S3_VERIFY_SSL", "0")
    options = storage._s3_options()["client_kwargs"]
    assert options["endpoint_url"] == "http://127.0.0.1:9000" and options["verify"] is False


def test_file_urls_and_hdfs_without_a_hadoop_client(tmp_path, monkeypatch):
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
    write_tf2_half_plus(tmp_path / "base", 4)
    copies, _incomplete, problem = settle(f"file://{tmp_path / 'base'}")
    assert problem == "" and set(copies) == {4}
    assert storage.is_remote("hdfs://namenode:8020/m") and not storage.is_remote("/models/m")
    _copies, _incomplete, problem = settle("hdfs://127.0.0.1:1/m", syncs=1)
    assert "cannot read base path hdfs://127.0.0.1:1/m" in problem and "a Hadoop client" in problem


@pytest.mark.timeout(120)
def test_a_version_in_gcs_is_copied_from_the_emulator(tmp_path, monkeypatch):
    emulator = pytest.importorskip("gcp_storage_emulator.server", reason="gcp-storage-emulator is in the test extra")
    gcsfs_core = pytest.importorskip("gcsfs.core", reason="gcsfs is in the storage extra")
    port = free_port()
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket="gcs-models")
    server.start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
        write_tf2_half_plus(tmp_path / "local", 5)
        fs = gcsfs_core.GCSFileSystem(token="anon", skip_instance_cache=True)
        for path in sorted((tmp_path / "local" / "5").rglob("*")):
            if path.is_file():
                fs.put_file(str(path), f"gcs-models/m/5/{path.relative_to(tmp_path / 'local' / '5').as_posix()}")
        copies, incomplete, problem = settle("gs://gcs-models/m")
        assert problem == "" and incomplete == {}
        assert set(copies) == {5} and check_complete(copies[5]) == (True, "")
    finally:
        for mirror in list(storage._mirrors.values()):
            if mirror.running is not None:
                mirror.running.result(timeout=60)
        server.stop()
