"""Replay a real request log against other versions, from the client and from ``%tfserve``."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tensorflow as tf
from IPython.core.interactiveshell import InteractiveShell

from jupyter_tfserve.kernel.magics import TFServeMagics
from jupyter_tfserve.kernel.widgets import compare_versions, request_log
from tests.helpers.models import write_tf1_half_plus


def _example(x: float) -> dict:
    return {"x": [x]}


def test_replay_reports_which_versions_answer_as_the_log_did(private_client, tmp_path, capsys):
    client = private_client
    base = tmp_path / "private-state" / "models" / "ab"  # the private engine's model repository
    write_tf1_half_plus(base, 1, b=2.0)  # x/2 + 2: the version that was logged
    write_tf1_half_plus(base, 2, b=3.0)  # x/2 + 3: answers differently, by 1.0 everywhere
    write_tf1_half_plus(base, 3, b=2.0)  # the same function as version 1
    client.load("ab", str(base), version_policy="all", wait_seconds=120)
    prefix = tmp_path / "private-state" / "request_logs" / "replayed" / "ab"  # logs go under the engine state

    shell = InteractiveShell.instance()
    try:
        shell.register_magics(TFServeMagics(shell, client=client))
        shell.run_line_magic("tfserve", f"log ab --rate 1.0 --prefix {prefix}")
        out = capsys.readouterr().out
        assert f"ab: logging 1 of requests to {prefix}*" in out

        for x in range(6):
            client.predict("ab", np.array([[float(x)]], np.float32), version=1)
        regress = client._answer(client._request("POST", "serving", "v1/models/ab/versions/1:regress", json={
            "signature_name": "regress_x_to_y", "examples": [_example(4.0), _example(6.0)]}))
        assert regress["results"] == [4.0, 5.0]
        deadline = time.monotonic() + 30  # the writer thread is behind the answers by a moment
        while client.model("ab")["logging"]["records_written"] < 7 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.model("ab")["logging"]["records_written"] == 7
        shell.run_line_magic("tfserve", "log ab --rate 0")  # the replays below are not to be logged
        assert "ab: request logging off" in capsys.readouterr().out

        # The log as a comparison's data set: exactly the six logged predict inputs, in order.
        compared = compare_versions(client, "ab", request_log(f"{prefix}*"), 1, 2, batch_size=4)
        a, b = (np.asarray(outputs["y"] if isinstance(outputs, dict) else outputs).ravel()
                for outputs in (compared.outputs_a, compared.outputs_b))
        assert a.tolist() == [x / 2 + 2 for x in range(6)] and (b - a).tolist() == [1.0] * 6

        differs = client.replay(f"{prefix}*", "ab", version=2)
        assert differs.requests == 7 and differs.agreed == 0 and differs.errors == 0
        assert all(row.max_abs_diff == pytest.approx(1.0) for row in differs.rows)
        assert [row.kind for row in differs.rows] == ["predict_log"] * 6 + ["regress_log"]
        assert "0/7 logged requests answered the same" in differs.summary()
        assert len(differs.table()) == 7

        same = shell.run_line_magic("tfserve", f"replay {prefix}* ab --version 3")
        assert "7/7 logged requests answered the same (100.0%)" in capsys.readouterr().out
        assert same.agreement == 1.0 and same.disagreements == []

        shell.run_line_magic("tfserve", f"replay {tmp_path / 'nothing'}* ab --version 3")
        assert "no request log files match" in capsys.readouterr().err
    finally:
        InteractiveShell.clear_instance()
    # The logged records are TF Serving's own PredictionLog, readable by tf.data.
    assert sum(1 for _ in tf.data.TFRecordDataset(sorted(map(str, prefix.parent.glob("ab*"))))) == 7
