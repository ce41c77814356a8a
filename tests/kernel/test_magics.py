"""``%tfserve`` in an IPython shell, and in a real kernel that a real Jupyter server started."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import numpy as np
import pytest
import requests
from IPython.core.interactiveshell import InteractiveShell

from jupyter_tfserve.kernel.magics import TFServeMagics, parse_duration, parse_policy, parse_split
from tests.helpers.kernel import ServerKernel


@pytest.fixture(scope="module")
def shell(client):
    """A real IPython shell with the magics, talking to the module's Jupyter server."""
    ipython = InteractiveShell.instance()
    ipython.register_magics(TFServeMagics(ipython, client=client))
    yield ipython
    InteractiveShell.clear_instance()


def run(shell, capsys, line: str):
    value = shell.run_line_magic("tfserve", line)
    captured = capsys.readouterr()
    return value, captured.out, captured.err


def test_help_for_every_subcommand(shell, capsys):
    _, out, _ = run(shell, capsys, "--help")
    for command in ("load", "unload", "list", "status", "export", "predict", "ab", "batching", "share",
                    "dashboard"):
        assert command in out
        _, sub, _ = run(shell, capsys, f"{command} --help")
        assert f"%tfserve {command}" in sub


def test_user_mistakes_are_one_line(shell, capsys):
    for line, expected in [
        ("frobnicate", "unknown subcommand 'frobnicate'"),
        ("predict half_plus_two no_such_var", "no variable named 'no_such_var'"),
        ("status no_such_model", "no_such_model"),
        ("ab no_such_model --split 1=x", "--split wants ARM=WEIGHT"),
        ("load", "the following arguments are required"),
        ("share m --expires soon", "not a duration"),
    ]:
        value, out, err = run(shell, capsys, line)
        assert value is None
        assert err.startswith("tfserve: ") and expected in err and err.count("\n") == 1, (line, err)
        assert "Traceback" not in out + err


def test_load_list_predict_batching_unload(shell, capsys, repository):
    _, out, err = run(shell, capsys, f"load hp_magic {repository / 'half_plus_two'} --policy latest --label stable=1")
    assert not err and re.search(r"hp_magic\s+1\s+AVAILABLE\s+stable", out)
    _, out, _ = run(shell, capsys, "list")
    assert "hp_magic" in out
    shell.user_ns["xs"] = np.array([2.0, 4.0], np.float32)
    value, _, err = run(shell, capsys, "predict hp_magic xs --label stable")
    assert not err and value.tolist() == [3.0, 4.0]
    _, out, err = run(shell, capsys, "batching hp_magic max_batch_size=8 batch_timeout_micros=1000")
    assert not err and "'max_batch_size': 8" in out
    _, out, err = run(shell, capsys, "batching hp_magic off")
    assert not err and "batching off" in out
    _, out, _ = run(shell, capsys, "status hp_magic")
    assert "version 1:" in out and "predict: POST" in out
    _, out, err = run(shell, capsys, "unload hp_magic")
    assert not err and "unloaded hp_magic" in out


def test_ab_split_shadow_promote(shell, capsys, client, jupyter_home):
    from tests.helpers.models import write_tf1_half_plus

    base = jupyter_home / "models" / "ab_magic"
    write_tf1_half_plus(base, 1)
    write_tf1_half_plus(base, 2, b=3.0)
    run(shell, capsys, f"load ab_magic {base} --policy all --label stable=1")
    _, _, err = run(shell, capsys, "ab ab_magic --split 1=70,2=30")
    assert not err and client.model("ab_magic")["routing"]["split"]
    _, out, err = run(shell, capsys, "ab ab_magic --shadow 2")
    assert "shadow traffic to 2" in out
    assert not err and client.model("ab_magic")["routing"]["shadow"]["target"] == "2"
    assert client.model("ab_magic")["routing"]["split"], "adding a shadow keeps the split"
    _, _, err = run(shell, capsys, "ab ab_magic --promote 2")
    described = client.model("ab_magic")
    assert not err and described["labels"]["stable"] == "2"
    assert described["routing"]["split"] is None and described["routing"]["shadow"] is None
    run(shell, capsys, "unload ab_magic")


def test_share_prints_what_a_teammate_pastes_and_revoke(shell, capsys, repository):
    run(shell, capsys, f"load hp_share {repository / 'half_plus_two'}")
    _, out, err = run(shell, capsys, "share hp_share --expires 2h --verbs predict")
    assert not err
    token = re.search(r"Bearer (tfs_[0-9a-f]+_[A-Za-z0-9_-]+)", out).group(1)
    url = re.search(r"URL:\s+(\S+)", out).group(1)
    curl = re.search(r"^\s+(curl .*)$", out, re.MULTILINE).group(1).replace("[...]", "[2.0]")
    answer = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(answer.stdout) == {"predictions": [3.0]}
    assert "requests.post(" in out
    v2_url = re.search(r"KServe V2 .*: (\S+)", out).group(1)
    assert v2_url == url.replace("/v1/models/hp_share:predict", "/v2/models/hp_share/infer")
    inferred = requests.post(v2_url, headers={"Authorization": f"Bearer {token}"}, timeout=30,
                             json={"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [2.0]}]})
    assert inferred.status_code == 200 and inferred.json()["outputs"][0]["data"] == [3.0], inferred.text
    token_id = re.search(r"--revoke (\w+)", out).group(1)
    _, out, _ = run(shell, capsys, "share --list")
    assert token_id in out and "active" in out
    _, out, err = run(shell, capsys, f"share --revoke {token_id}")
    assert not err and "revoked" in out
    revoked = requests.post(url, json={"instances": [2.0]}, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert revoked.status_code == 403
    run(shell, capsys, "unload hp_share")


def test_deploy_writes_kserve_manifests_from_the_running_config(shell, capsys, jupyter_home, tmp_path):
    import yaml

    from tests.helpers.models import write_tf1_half_plus

    base = jupyter_home / "models" / "ab_deploy"
    write_tf1_half_plus(base, 1)
    write_tf1_half_plus(base, 2, b=3.0)
    _, out, err = run(shell, capsys, f"load ab_deploy {base} --policy all --label stable=1")
    assert not err, err
    _, _, err = run(shell, capsys, "ab ab_deploy --split stable=70,2=30")  # a label arm: its version now
    assert not err
    out_dir = tmp_path / "manifests"
    _, out, err = run(shell, capsys, f"deploy --target kserve --storage_uri gs://bucket/models --output_dir {out_dir}")
    assert not err, err
    stable = yaml.safe_load((out_dir / "ab-deploy.yaml").read_text())
    canary = yaml.safe_load((out_dir / "ab-deploy-canary.yaml").read_text())
    assert stable["spec"]["predictor"]["model"]["storageUri"] == "gs://bucket/models/ab_deploy-v1"
    assert canary["spec"]["predictor"]["model"]["storageUri"] == "gs://bucket/models/ab_deploy-v2"
    assert canary["spec"]["predictor"]["canaryTrafficPercent"] == 30
    assert "labels" in out and "not carried over" in out  # what cannot carry over is said, not dropped
    _, _, err = run(shell, capsys, f"deploy --target helm --output_dir {out_dir}")
    assert "helm" in err and "Traceback" not in err
    run(shell, capsys, "unload ab_deploy")


def test_parsers():
    assert parse_duration("2h") == 7200 and parse_duration("90") == 90 and parse_duration("1.5m") == 90
    assert parse_split("stable=90,canary=10") == {"stable": 90.0, "canary": 10.0}
    assert parse_policy("latest=2") == {"latest": 2} and parse_policy("all") == "all"
    assert parse_policy("specific=1,3") == {"specific": [1, 3]}


def test_fresh_kernel_load_ext_export_and_curl(jupyter_server):
    """The issue's promise: from a fresh kernel, two lines leave an endpoint curl answers."""
    with ServerKernel(jupyter_server) as kernel:
        setup = kernel.execute(
            "import keras, numpy as np\n"
            "keras.utils.set_random_seed(1)\n"
            "model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])\n"
            "expected = model.predict(np.ones((1, 4), np.float32), verbose=0).tolist()\n"
            "print(expected)"
        )
        assert setup.error is None, setup.error
        expected = json.loads(setup.stdout)
        loaded = kernel.execute("%load_ext jupyter_tfserve")
        assert loaded.error is None and not loaded.stderr
        started = time.perf_counter()
        exported = kernel.execute("%tfserve export model demo")
        wall = time.perf_counter() - started
        assert exported.error is None and not exported.stderr, (exported.error, exported.stderr)
        assert "demo version 1 is AVAILABLE" in exported.stdout
        durations = re.findall(r"\((\d+\.\d) s\)", exported.stdout)
        assert len(durations) == 1, f"one duration is printed: {exported.stdout}"
        # The first call finds the server from its jpserver-<pid>.json, not by importing jupyter_server (~2 s).
        assert wall - float(durations[0]) <= 1.0, f"{wall:.1f} s in all for an export of {durations[0]} s"
        engine = kernel.execute("%tfserve engine")
        assert "jupyter engine (running)" in engine.stdout, "the kernel found its server, not a private engine"
    answer = subprocess.run(
        ["curl", "-sS", "-H", f"Authorization: token {jupyter_server.token}", "-d", '{"instances": [[1, 1, 1, 1]]}',
         f"{jupyter_server.url}tfserve/v1/models/demo:predict"], capture_output=True, text=True, timeout=60, check=True)
    np.testing.assert_allclose(json.loads(answer.stdout)["predictions"], expected, rtol=1e-5)
    curl = next(line for line in exported.stdout.splitlines() if line.startswith("curl "))
    assert "[...]" not in curl
    pasted = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=60, check=True,
                            env={**os.environ, "JUPYTER_TOKEN": jupyter_server.token})
    assert len(json.loads(pasted.stdout)["predictions"]) == 1, pasted.stdout


def test_magics_on_a_private_engine(private_client, capsys):
    """No Jupyter server: the same magics, served by the kernel's own engine."""
    import keras

    ipython = InteractiveShell.instance()
    try:
        ipython.register_magics(TFServeMagics(ipython, client=private_client))
        ipython.user_ns["model"] = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        ipython.user_ns["x"] = np.ones((2, 3), np.float32)
        _, out, err = run(ipython, capsys, "export model private_demo")
        assert not err and "private_demo version 1 is AVAILABLE" in out and "%tfserve share" in out
        value, _, err = run(ipython, capsys, "predict private_demo x")
        assert not err and value.shape == (2, 1)
        _, out, _ = run(ipython, capsys, "engine")
        assert out.startswith("private engine")
        _, out, err = run(ipython, capsys, "share private_demo")
        curl = re.search(r"^\s+(curl .*)$", out, re.MULTILINE).group(1).replace("[...]", "[[1, 2, 3]]")
        answer = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=60, check=True)
        assert len(json.loads(answer.stdout)["predictions"]) == 1
    finally:
        InteractiveShell.clear_instance()

