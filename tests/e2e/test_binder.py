"""binder/ (repo2docker): the same dependencies as pyproject.toml, executable hooks, a postBuild that works.

postBuild runs here for real, with a throwaway HOME and Jupyter config/data/runtime dirs, so
it writes nothing into the developer's venv or home; `start` is run around a Python command to
see the configuration a launch gets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers.server import REPO

BINDER = REPO / "binder"
QUICKSTART = "notebooks/01-quickstart.ipynb"


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _requirement_lines() -> list[str]:
    lines = []
    for raw in (BINDER / "requirements.txt").read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def test_requirements_install_the_project_and_contradict_nothing_in_pyproject():
    lines = _requirement_lines()
    local = [line for line in lines if line in (".", "-e .", "-e.", "./")]
    assert local, f"binder/requirements.txt must install the project itself ('.' or '-e .'), has {lines}"
    declared = {canonicalize_name(Requirement(spec).name): Requirement(spec)
                for spec in _pyproject()["project"]["dependencies"]}
    for line in lines:
        if line in local:
            continue
        assert not line.startswith("-"), f"unexpected pip option in binder/requirements.txt: {line}"
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in declared, (
            f"binder/requirements.txt adds {requirement.name}, which pyproject.toml's dependencies do not have: "
            "add it there, so pip install and Binder get the same environment")
        # A pin must allow a version that pyproject allows: test it on the pinned versions it names.
        for spec in requirement.specifier:
            if spec.operator in ("==", "===", "~=", ">="):
                assert declared[name].specifier.contains(spec.version, prereleases=True), (
                    f"binder pins {line}, outside pyproject.toml's {declared[name]}")


def test_no_environment_yml_to_disagree_with_requirements():
    # repo2docker would take environment.yml over requirements.txt: only one may exist.
    assert not (BINDER / "environment.yml").exists()


@pytest.mark.parametrize("name", ["postBuild", "start"])
def test_hooks_are_executable_bash_scripts(name):
    path = BINDER / name
    assert path.is_file()
    assert os.access(path, os.X_OK), f"binder/{name} must be executable (chmod +x, committed as 100755)"
    assert path.read_text().startswith("#!/usr/bin/env bash\n")
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_start_ends_with_exec():
    lines = [line.strip() for line in (BINDER / "start").read_text().splitlines()
             if line.strip() and not line.strip().startswith("#")]
    assert lines[-1] == 'exec "$@"'


def test_start_serves_the_demo_and_opens_the_quickstart(tmp_path):
    """What a launch through `start` reads from the Jupyter config path."""
    env = {**os.environ, "HOME": str(tmp_path), "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_CONFIG_PATH": ""}
    probe = ("import json, os; from jupyter_core.paths import jupyter_config_path; "
             "from traitlets.config.loader import JSONFileConfigLoader; "
             "merged = {}\n"
             "for path in reversed(jupyter_config_path()):\n"
             "    file = os.path.join(path, 'jupyter_server_config.json')\n"
             "    if os.path.isfile(file):\n"
             "        merged.update(JSONFileConfigLoader('jupyter_server_config.json', path).load_config())\n"
             "print(json.dumps({k: dict(v) for k, v in merged.items()}))")
    result = subprocess.run([str(BINDER / "start"), sys.executable, "-c", probe], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["TFServeExtension"]["demo_model"] is True
    assert config["ServerApp"]["default_url"] == f"/lab/tree/{QUICKSTART}"
    assert config["LabApp"]["default_url"] == f"/lab/tree/{QUICKSTART}"
    if (REPO / "notebooks").is_dir():
        assert (REPO / QUICKSTART).is_file(), f"start opens {QUICKSTART}, which is missing"


@pytest.mark.timeout(300)
def test_postbuild_runs(tmp_path):
    """postBuild as repo2docker runs it (repository root), into throwaway user dirs."""
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
        "JUPYTER_DATA_DIR": str(home / ".local" / "share" / "jupyter"),
        "JUPYTER_RUNTIME_DIR": str(home / ".local" / "share" / "jupyter" / "runtime"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    result = subprocess.run([str(BINDER / "postBuild")], capture_output=True, text=True, env=env, cwd=REPO,
                            timeout=280)
    assert result.returncode == 0, result.stdout + result.stderr
    demo = home / ".local" / "share" / "jupyter" / "tfserve" / "models" / "half_plus_two" / "1" / "saved_model.pb"
    assert demo.is_file(), result.stdout
    user_config = json.loads((home / ".jupyter" / "jupyter_server_config.d" / "jupyter_tfserve.json").read_text())
    assert user_config["ServerApp"]["jpserver_extensions"]["jupyter_tfserve"] is True
