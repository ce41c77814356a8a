"""Remote base paths against a real S3 server (moto on 127.0.0.1): listing, completeness, the cache, failures."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from jupyter_tfserve.engine import storage
from jupyter_tfserve.engine.source import check_complete, list_versions
from tests.helpers.models import write_tf2_half_plus
from tests.helpers.remote import cached_versions, gcs_store, moto_s3, s3_put, upload_tree
from tests.helpers.server import free_port

pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
pytest.importorskip("boto3", reason="boto3 comes with moto[server]")


@pytest.fixture(scope="module")
def s3_store(tmp_path_factory):
    with moto_s3(tmp_path_factory.mktemp("cache")) as store:
        yield store


@pytest.fixture(autouse=True)
def fresh_mirrors():
    """Each test starts with no mirrors, and a sync a test left running finishes before the next begins."""
    yield
    for mirror in list(storage._mirrors.values()):
        if mirror.running is not None:
            mirror.running.result(timeout=60)
    storage._mirrors.clear()


@pytest.fixture
def s3(s3_store, monkeypatch, tmp_path):
    """A boto3 client and the environment a KServe user sets, with a private cache for this test."""
    for name, value in {**s3_store.env, storage.CACHE_ENV: str(tmp_path / "cache")}.items():
        monkeypatch.setenv(name, value)
    return s3_store.client


def upload(client, local: Path, bucket: str, prefix: str, skip: tuple[str, ...] = ()) -> None:
    upload_tree(s3_put(client), local, f"{bucket}/{prefix}", skip)


def settle(url: str, wanted=lambda versions: versions, syncs: int = 3,
           max_version_bytes: int = storage.DEFAULT_MAX_VERSION_BYTES) -> tuple[dict, dict, str, dict]:
    """Run ``syncs`` finished syncs (a new version is copied once it held still for one).

    Returns (copies, incomplete, base path problem, refused) as :func:`storage.remote_versions` does.
    """
    for _ in range(syncs):
        storage.remote_versions(url, wanted, max_version_bytes)
        mirror = storage._mirrors[url]
        mirror.running.result(timeout=60)
    return storage.remote_versions(url, wanted, max_version_bytes)


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
    copies, incomplete, problem, refused = settle(url)
    assert problem == "" and incomplete == {} and refused == {}
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
    copies, incomplete, problem, refused = settle("s3://half-done/m")
    assert copies == {} and problem == "" and refused == {}
    assert incomplete == {3: "variables/variables.index is missing"}
    assert not list((tmp_path / "cache").iterdir())


def test_only_the_versions_the_policy_wants_are_copied_and_old_copies_are_swept(s3, tmp_path):
    s3.create_bucket(Bucket="policy")
    for version in (1, 2):
        write_tf2_half_plus(tmp_path / "local", version)
        upload(s3, tmp_path / "local" / str(version), "policy", f"m/{version}")
    latest = lambda versions: versions[-1:]  # noqa: E731
    copies, _incomplete, _problem, _refused = settle("s3://policy/m", latest)
    assert set(copies) == {2}
    assert [p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()] == ["2"]
    write_tf2_half_plus(tmp_path / "local", 3)
    upload(s3, tmp_path / "local" / "3", "policy", "m/3")
    copies, _incomplete, _problem, _refused = settle("s3://policy/m", latest, syncs=2)
    assert set(copies) == {2, 3}, "the old copy stays offered until the new one has been seen"
    copies, _incomplete, _problem, _refused = settle("s3://policy/m", latest, syncs=3)
    assert set(copies) == {3}
    assert [p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()] == ["3"]


def test_a_missing_bucket_and_bad_credentials_are_problems_not_exceptions(s3, monkeypatch):
    _copies, _incomplete, problem, _refused = settle("s3://no-such-bucket/m", syncs=1)
    assert "cannot read base path s3://no-such-bucket/m" in problem
    assert storage.base_path_problem("s3://no-such-bucket/m") == problem
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    started = time.monotonic()
    _copies, _incomplete, problem, _refused = settle("s3://unreachable/m", syncs=1)
    assert "cannot read base path s3://unreachable/m" in problem
    assert time.monotonic() - started < 60


@pytest.fixture
def copies_made(monkeypatch) -> list[int]:
    """The versions the mirror started copying (the real copy runs; only the call is noted)."""
    started: list[int] = []
    real = storage._copy_version

    def copy(fs, url, version, *args):
        started.append(version)
        return real(fs, url, version, *args)

    monkeypatch.setattr(storage, "_copy_version", copy)
    return started


def version_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def test_the_default_bound_is_64_gib_and_the_engine_flag_sets_the_engines():
    from jupyter_tfserve.engine.engine import Engine, EngineOptions
    from jupyter_tfserve.server.app import engine_options
    from jupyter_tfserve.server.cli import build_parser

    assert EngineOptions().max_remote_version_bytes == storage.DEFAULT_MAX_VERSION_BYTES == 64 << 30
    args = build_parser().parse_args(["serve", "--max_remote_version_bytes=1000"])
    assert engine_options(args).max_remote_version_bytes == 1000
    assert Engine(engine_options(args)).manager._max_remote_version_bytes == 1000
    assert engine_options(build_parser().parse_args(["serve"])).max_remote_version_bytes == 64 << 30


def test_a_version_over_the_bound_is_refused_from_its_listing_before_anything_is_fetched(
        s3, tmp_path, copies_made):
    s3.create_bucket(Bucket="bounded")
    write_tf2_half_plus(tmp_path / "local", 1)
    upload(s3, tmp_path / "local" / "1", "bounded", "m/1")
    size = version_bytes(tmp_path / "local" / "1")
    copies, incomplete, problem, refused = settle("s3://bounded/m", max_version_bytes=size - 1)
    assert copies == {} and incomplete == {} and problem == ""
    assert refused == {1: f"version 1 of s3://bounded/m is {size} bytes, more than --max_remote_version_bytes="
                          f"{size - 1}; it is not copied (raise --max_remote_version_bytes to serve it)"}
    assert copies_made == [], "refused from the listing, before a copy began"
    assert list((tmp_path / "cache").iterdir()) == []
    listed = list_versions("s3://bounded/m", max_remote_version_bytes=size - 1)
    assert listed[1].refused and not listed[1].complete and "--max_remote_version_bytes" in listed[1].problem

    # Exactly the version's size is allowed; a refusal from the listing is checked again each sync (two here:
    # list_versions above started one with the lower bound, which the first waits for).
    copies, _incomplete, _problem, refused = settle("s3://bounded/m", syncs=2, max_version_bytes=size)
    assert set(copies) == {1} and refused == {}
    assert copies_made == [1]


def test_a_version_larger_than_the_caches_free_space_is_refused(s3, tmp_path, monkeypatch, copies_made):
    s3.create_bucket(Bucket="full-disk")
    write_tf2_half_plus(tmp_path / "local", 1)
    upload(s3, tmp_path / "local" / "1", "full-disk", "m/1")
    size = version_bytes(tmp_path / "local" / "1")
    real_usage = shutil.disk_usage
    cache = tmp_path / "cache"

    def nearly_full(path):  # the cache folder's disk has 100 bytes left; every other disk is as it is
        usage = real_usage(path)
        return type(usage)(usage.total, usage.total - 100, 100) if Path(path) == cache else usage

    monkeypatch.setattr(storage.shutil, "disk_usage", nearly_full)
    copies, _incomplete, problem, refused = settle("s3://full-disk/m")
    assert copies == {} and problem == ""
    assert refused[1].startswith(f"version 1 of s3://full-disk/m is {size} bytes and the cache folder {cache} "
                                 "has only 100 bytes free; it is not copied")
    assert copies_made == [] and list(cache.iterdir()) == []
    monkeypatch.setattr(storage.shutil, "disk_usage", real_usage)
    copies, _incomplete, _problem, refused = settle("s3://full-disk/m", syncs=1)
    assert set(copies) == {1} and refused == {}


def test_an_object_that_grows_after_the_listing_aborts_the_copy_and_leaves_nothing(s3, tmp_path, monkeypatch):
    s3.create_bucket(Bucket="growing")
    write_tf2_half_plus(tmp_path / "local", 1)
    upload(s3, tmp_path / "local" / "1", "growing", "m/1")
    shard = "variables/variables.data-00000-of-00001"
    listed_size = (tmp_path / "local" / "1" / shard).stat().st_size
    bigger = (tmp_path / "local" / "1" / shard).read_bytes() + b"\0" * 4096
    real = storage._copy_version
    replaced: list[int] = []

    def replace_then_copy(fs, url, version, *args):
        """Another writer replaces the shard with a bigger one between the listing and the copy."""
        if not replaced:
            s3.put_object(Bucket="growing", Key=f"m/1/{shard}", Body=bigger)
            replaced.append(version)
        return real(fs, url, version, *args)

    monkeypatch.setattr(storage, "_copy_version", replace_then_copy)
    storage.remote_versions("s3://growing/m", lambda versions: versions)
    storage._mirrors["s3://growing/m"].running.result(timeout=60)  # the first sync lists it
    copies, _incomplete, problem, refused = settle("s3://growing/m", syncs=1)  # the second copies it
    assert replaced == [1] and copies == {} and problem == ""
    assert refused == {1: f"copy of version 1 of s3://growing/m aborted: {shard} grew past its listed size of "
                          f"{listed_size} bytes while being copied"}
    assert list((tmp_path / "cache").iterdir()) == [], "the partial copy is removed"
    # The listing now says the new size: once it holds still for a sync, the new bytes are copied.
    copies, _incomplete, _problem, refused = settle("s3://growing/m", syncs=2)
    assert set(copies) == {1} and refused == {}
    assert (copies[1] / shard).read_bytes() == bigger
    assert cached_versions(tmp_path / "cache") == ["1"]


def test_a_store_that_lists_no_sizes_is_still_bounded_while_copying(s3, tmp_path, monkeypatch, copies_made):
    s3.create_bucket(Bucket="unsized")
    write_tf2_half_plus(tmp_path / "local", 1)
    upload(s3, tmp_path / "local" / "1", "unsized", "m/1")
    size = version_bytes(tmp_path / "local" / "1")
    monkeypatch.setattr(storage, "_listed_size", lambda info: -1)  # as a store whose listing has no sizes
    copies, _incomplete, _problem, refused = settle("s3://unsized/m", max_version_bytes=size // 2)
    assert copies == {} and copies_made == [1], "one copy began, and the same listing is not fetched again"
    assert refused[1].startswith("copy of version 1 of s3://unsized/m aborted: it passed ")
    assert refused[1].endswith(f"bytes, more than --max_remote_version_bytes={size // 2}")
    assert list((tmp_path / "cache").iterdir()) == []


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
    copies, _incomplete, problem, _refused = settle(f"file://{tmp_path / 'base'}")
    assert problem == "" and set(copies) == {4}
    assert storage.is_remote("hdfs://namenode:8020/m") and not storage.is_remote("/models/m")
    _copies, _incomplete, problem, _refused = settle("hdfs://127.0.0.1:1/m", syncs=1)
    assert "cannot read base path hdfs://127.0.0.1:1/m" in problem and "a Hadoop client" in problem


@pytest.mark.timeout(120)
def test_a_version_in_gcs_is_copied_from_the_emulator(tmp_path, monkeypatch):
    pytest.importorskip("gcp_storage_emulator.server", reason="gcp-storage-emulator is in the test extra")
    pytest.importorskip("gcsfs.core", reason="gcsfs is in the storage extra")
    with gcs_store(tmp_path / "cache") as store:
        for name, value in store.env.items():
            monkeypatch.setenv(name, value)
        store.make_bucket("gcs-models")
        write_tf2_half_plus(tmp_path / "local", 5)
        store.upload(tmp_path / "local" / "5", "gcs-models/m/5")
        try:
            copies, incomplete, problem, refused = settle("gs://gcs-models/m")
        finally:
            for mirror in list(storage._mirrors.values()):
                if mirror.running is not None:
                    mirror.running.result(timeout=60)
        assert problem == "" and incomplete == {} and refused == {}
        assert set(copies) == {5} and check_complete(copies[5]) == (True, "")
