"""The real engine serving from a real GCS server (gcp-storage-emulator on 127.0.0.1), as the S3 tests do with moto."""

from __future__ import annotations

import pytest

from tests.helpers.models import write_tf2_half_plus
from tests.helpers.remote import cached_versions, gcs_store, predict, versions_seen_while, wait_for_error
from tests.helpers.server import write_models_config

pytest.importorskip("gcp_storage_emulator.server", reason="gcp-storage-emulator is in the test extra")
pytest.importorskip("gcsfs", reason="gcsfs is in the storage extra")


@pytest.fixture
def store(tmp_path):
    with gcs_store(tmp_path / "cache") as store:
        store.make_bucket("models")
        yield store


def test_a_model_in_gcs_is_served_and_a_new_version_goes_live_with_no_failed_request(tmp_path, store, start_server):
    write_tf2_half_plus(tmp_path / "local", 1, b=2.0)
    store.upload(tmp_path / "local" / "1", "models/half/1")
    server = start_server("--model_base_path=gs://models/half", "--model_name=half", env=store.env)
    server.wait_for_versions("half", {1}, timeout=90)
    assert predict(server, "half") == (3.0, 1)

    write_tf2_half_plus(tmp_path / "local", 2, b=10.0)
    seen, failures = versions_seen_while(
        server, "half", lambda: store.upload(tmp_path / "local" / "2", "models/half/2"), 2)
    assert failures == []
    assert seen == {1, 2}
    assert predict(server, "half") == (11.0, 2)
    cached = cached_versions(tmp_path / "cache")
    assert "2" in cached and not [name for name in cached if name.startswith(".tmp")]


def test_a_missing_gcs_bucket_is_that_models_status_and_the_other_model_keeps_serving(
        tmp_path, store, start_server):
    write_tf2_half_plus(tmp_path / "local", 1, b=2.0)
    store.upload(tmp_path / "local" / "1", "models/half/1")
    config = write_models_config(tmp_path / "models.config", {
        "local": tmp_path / "local", "half": "gs://models/half", "lost": "gs://no-such-bucket/lost"})
    server = start_server(f"--model_config_file={config}", env=store.env)
    server.wait_for_versions("local", {1}, timeout=90)
    server.wait_for_versions("half", {1}, timeout=90)
    status = wait_for_error(server, "lost", "no-such-bucket")
    assert status["state"] == "END" and status["status"]["error_code"] == "UNAVAILABLE"
    message = status["status"]["error_message"]
    assert "cannot read base path gs://no-such-bucket/lost: no such bucket or folder" in message, message
    assert predict(server, "local") == (3.0, 1)
    assert predict(server, "half") == (3.0, 1)
    assert server.process.poll() is None
