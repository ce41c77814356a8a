"""A version folder is code the engine runs: with a model repository, it is served only if no one else controls it.

Unit tests of :class:`VersionTrust` on folders built here (the ownership cases chown to
another uid, so they need root, as CI has), then the engine itself: a version symlinked
out of the repository, and a version another user drops under a served path, are not
loaded, and say why in the model's status.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import requests

from jupyter_tfserve.engine.source import VersionTrust, list_versions
from tests.helpers.models import write_tf1_half_plus
from tests.helpers.server import free_port

SECRET = "test-engine-secret"
OWNER = {"X-TFServe-Engine-Secret": SECRET}
OTHER_UID = 65534  # nobody
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")


def _version(base: Path, number: int) -> Path:
    folder = base / str(number)
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph")
    (folder / "variables" / "variables.index").write_bytes(b"index")
    (folder / "variables" / "variables.data-00000-of-00001").write_bytes(b"data")
    for path in (base, folder, folder / "variables"):
        path.chmod(0o755)
    return folder


@pytest.fixture
def layout(tmp_path):
    root, outside = tmp_path / "repo", tmp_path / "outside"
    base = root / "m"
    _version(base, 1)
    _version(outside, 7)
    for path in (tmp_path, root, outside):
        path.chmod(0o755)
    return root, base, outside, VersionTrust((root.resolve(),))


def _refusal(base: Path, trust: VersionTrust, version: int) -> str:
    found = list_versions(base, trust)[version]
    assert not found.complete
    return found.problem


def test_plain_folders_of_the_engine_s_user_are_served_as_before(layout):
    _root, base, _outside, trust = layout
    found = list_versions(base, trust)
    assert found[1].complete and found[1].path == (base / "1").resolve()
    assert list_versions(base)[1].complete  # no trust: TF Serving's rule


def test_a_version_symlinked_out_of_the_allowed_paths_is_refused(layout):
    root, base, outside, trust = layout
    (base / "2").symlink_to(outside / "7")
    assert "outside the allowed paths" in _refusal(base, trust, 2)
    assert list_versions(base)[2].complete  # a standalone engine follows it, as TF Serving does
    # A symlink that stays inside the repository is fine, and the resolved folder is what gets loaded.
    _version(root / "other", 3)
    (base / "3").symlink_to(root / "other" / "3")
    assert list_versions(base, trust)[3].complete
    assert list_versions(base, trust)[3].path == (root / "other" / "3").resolve()


def test_a_symlink_inside_a_version_that_leads_out_is_refused(layout):
    _root, base, outside, trust = layout
    (base / "1" / "assets").mkdir()
    (base / "1" / "assets").chmod(0o755)
    (base / "1" / "assets" / "vocab.txt").symlink_to(outside / "7" / "saved_model.pb")
    assert "is a symlink to" in _refusal(base, trust, 1)


@pytest.mark.parametrize("writable", ["version", "file", "subfolder", "base"])
def test_a_version_other_users_can_write_is_refused_until_fixed(layout, writable):
    _root, base, _outside, trust = layout
    target = {"version": base / "1", "file": base / "1" / "saved_model.pb", "subfolder": base / "1" / "variables",
              "base": base}[writable]
    mode = target.stat().st_mode & 0o777
    target.chmod(mode | 0o002)
    assert "writable by every user" in _refusal(base, trust, 1)
    assert list_versions(base)[1].complete  # standalone: unchanged
    target.chmod(mode)
    assert list_versions(base, trust)[1].complete


def test_a_sticky_folder_above_the_version_is_fine(layout):
    _root, base, _outside, trust = layout
    base.chmod(0o1777)  # like /tmp: others may add entries, not rename ours
    assert list_versions(base, trust)[1].complete


@as_root
def test_a_version_owned_by_another_user_is_refused(layout):
    """The poller's case: another user drops a numbered folder into a served path they can write."""
    _root, base, _outside, trust = layout
    theirs = _version(base, 2)
    os.chown(theirs, OTHER_UID, -1)
    assert f"owned by uid {OTHER_UID}" in _refusal(base, trust, 2)
    assert list_versions(base, trust)[1].complete
    os.chown(theirs, 0, -1)
    os.chown(theirs / "variables" / "variables.index", OTHER_UID, -1)
    assert f"owned by uid {OTHER_UID}" in _refusal(base, trust, 2)


@as_root
def test_group_writable_is_fine_only_for_the_owner_s_private_group(layout):
    _root, base, _outside, trust = layout
    pb = base / "1" / "saved_model.pb"
    pb.chmod(0o664)
    os.chown(pb, 0, OTHER_UID)  # nogroup: not root's own group
    assert "writable by group" in _refusal(base, trust, 1)
    os.chown(pb, 0, 0)
    import grp
    import pwd

    root_group_private = (all(m == "root" for m in grp.getgrgid(0).gr_mem)
                          and all(p.pw_uid == 0 for p in pwd.getpwall() if p.pw_gid == 0))
    assert list_versions(base, trust)[1].complete is root_group_private


def _status(management: int, model: str) -> dict[int, dict]:
    response = requests.get(f"http://127.0.0.1:{management}/api/models/{model}", headers=OWNER, timeout=30)
    return {int(s["version"]): s for s in response.json()["model_version_status"]} if response.ok else {}


def test_the_engine_loads_neither_an_escaping_symlink_nor_another_user_s_version(tmp_path, start_server):
    root, outside = tmp_path / "repo", tmp_path / "outside"
    write_tf1_half_plus(root / "m", 1)
    write_tf1_half_plus(outside / "x", 5, b=100.0)
    (root / "m" / "2").symlink_to(outside / "x" / "5")
    config_file = tmp_path / "models.config"
    config_file.write_text("model_config_list {\n}\n")
    management = free_port()
    server = start_server("--require_auth", f"--management_port={management}", f"--model_repository_root={root}",
                          f"--model_config_file={config_file}", env={"TFSERVE_ENGINE_SECRET": SECRET})
    server.session.headers.update(OWNER)
    loaded = requests.post(f"http://127.0.0.1:{management}/api/models", headers=OWNER, timeout=60,
                           json={"name": "m", "base_path": "m", "version_policy": "all", "wait_seconds": 60})
    assert loaded.status_code == 201, loaded.text
    server.wait_until(lambda: 2 in _status(management, "m"), 30, "version 2 to be reported")
    status = _status(management, "m")
    assert status[1]["state"] == "AVAILABLE"
    assert status[2]["state"] == "END" and "outside the allowed paths" in status[2]["status"]["error_message"]
    if os.geteuid() == 0:  # another user's folder appearing under the served path
        write_tf1_half_plus(tmp_path / "staging", 3, b=50.0)
        for folder, _dirs, files in os.walk(tmp_path / "staging" / "3"):
            os.chown(folder, OTHER_UID, -1)
            for name in files:
                os.chown(os.path.join(folder, name), OTHER_UID, -1)
        os.rename(tmp_path / "staging" / "3", root / "m" / "3")
        server.wait_until(lambda: 3 in _status(management, "m"), 30, "version 3 to be reported")
        time.sleep(1.0)  # a few polls: it must stay unloaded
        status = _status(management, "m")
        assert status[3]["state"] == "END" and f"owned by uid {OTHER_UID}" in status[3]["status"]["error_message"]
        assert status[1]["state"] == "AVAILABLE"
    answer = server.post("/v1/models/m:predict", {"instances": [[2.0]]})
    assert answer.json() == {"predictions": [[3.0]]}, answer.text  # version 1 (x/2 + 2), never the others


def test_folders_named_with_non_ascii_digits_are_no_versions(layout):
    """'²' made int() raise and the model's whole poll fail; Arabic-Indic or full-width 1 was a second version 1."""
    _root, base, _outside, trust = layout
    for name in ("\u00b2", "\u0661", "\uff11"):  # superscript two, Arabic-Indic one, full-width one
        (base / name).mkdir()
        (base / name / "saved_model.pb").write_bytes(b"graph")
    for rule in (None, trust):
        assert sorted(list_versions(base, rule)) == [1]


def test_unicode_digits_are_no_version_number_anywhere():
    from jupyter_tfserve.engine.errors import ServingError
    from jupyter_tfserve.engine.routing import parse_arm
    from jupyter_tfserve.server.control import _version_number

    for text in ("\u00b2", "\uff11", "\u0663"):  # superscript two, full-width one, Arabic-Indic three
        with pytest.raises(ServingError):
            _version_number(text, "version")
        with pytest.raises(ServingError):
            parse_arm(text)
    assert parse_arm("12") == (12, None) and _version_number("12", "version") == 12
