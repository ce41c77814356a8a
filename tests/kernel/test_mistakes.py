"""The mistakes people make in a notebook: answered at once, in one useful line, with nothing left behind.

Each runs in a real kernel that a real Jupyter server started, as JupyterLab starts
one, so what is checked is what a user sees: the stream text, the display updates
and whether an ``error`` message (a traceback) came back at all.
"""

from __future__ import annotations

import time

import pytest

from jupyter_tfserve.kernel.client import TFServeError
from tests.helpers.kernel import ServerKernel


@pytest.fixture(scope="module")
def kernel(jupyter_server):
    with ServerKernel(jupyter_server) as kernel:
        loaded = kernel.execute("%load_ext jupyter_tfserve")
        assert loaded.error is None, loaded.error
        yield kernel


def one_line_error(execution) -> str:
    """The magic's answer to a user's mistake: no traceback, one ``tfserve:`` line on stderr."""
    assert execution.error is None, execution.error
    assert execution.stderr.startswith("tfserve: ") and execution.stderr.count("\n") == 1, execution.stderr
    assert "Traceback" not in execution.stdout + execution.stderr
    return execution.stderr


def test_load_of_a_missing_folder_answers_at_once_and_registers_nothing(kernel, client, jupyter_home):
    started = time.monotonic()
    answer = kernel.execute("%tfserve load nosuchdir nosuchdir")
    seconds = time.monotonic() - started
    message = one_line_error(answer)
    assert "does not exist" in message and "nosuchdir" in message, message
    assert seconds < 5, f"the load took {seconds:.1f} s"
    assert client.find_model("nosuchdir") is None
    assert "nosuchdir" not in kernel.execute("%tfserve list").stdout
    configs = list(jupyter_home.rglob("models.config"))
    assert configs, "the engine writes its model config under the state dir"
    assert all("nosuchdir" not in path.read_text() for path in configs)


@pytest.mark.parametrize("setup", [
    "not_a_model = {'weights': [1, 2, 3]}",
    "from sklearn.linear_model import LogisticRegression\n"
    "not_a_model = LogisticRegression().fit([[0.0], [1.0]], [0, 1])",
], ids=["dict", "sklearn"])
def test_failed_export_leaves_no_folder_and_no_progress_line(kernel, client, repository, setup):
    assert kernel.execute(setup).error is None
    answer = kernel.execute("%tfserve export not_a_model digits_bad")
    message = one_line_error(answer)
    assert "cannot export a" in message, message
    assert not (repository / "digits_bad").exists(), "a failed export left its model folder behind"
    assert client.find_model("digits_bad") is None
    progress = [bundle.get("text/plain", "") for bundle in answer.results]
    assert progress and progress[0].startswith("exporting not_a_model as digits_bad"), progress
    assert progress[-1] == "", f"the progress line was left standing: {progress}"


def test_wrong_shape_says_the_shape_first(kernel):
    exported = kernel.execute(
        "import keras, numpy as np\n"
        "model = keras.Sequential([keras.Input((64,), name='pixels'), keras.layers.Dense(3)])\n"
        "%tfserve export model shapes\n"
        "wrong = np.zeros((3, 10), np.float32)"
    )
    assert exported.error is None and not exported.stderr, (exported.error, exported.stderr)
    assert "shapes version 1 is AVAILABLE" in exported.stdout
    exported_lines = [line for line in exported.stdout.splitlines() if "(" in line and " s)" in line]
    assert len(exported_lines) == 1, f"one duration is printed, not {exported_lines}"
    message = one_line_error(kernel.execute("%tfserve predict shapes wrong"))
    assert message.startswith("tfserve: input 'pixels' has shape [3, 10] but the signature declares [-1, 64]"), \
        message


def test_labels_on_unloaded_versions_are_refused_for_splits_and_repaired_by_export(client):
    """What Run All a second time does to a labelled model: a label left on a version the policy unloaded."""
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    client.export(model, "relabel")
    client.export(model, "relabel", label="canary")  # stable on 1, canary on 2
    client.export(model, "relabel")  # latest 2: version 1, and with it stable's version, goes
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = {s["version"]: s["state"] for s in client.model("relabel")["model_version_status"]}
        if states.get("1") != "AVAILABLE":
            break
        time.sleep(0.1)
    assert int(client.model("relabel")["labels"]["stable"]) == 1
    with pytest.raises(TFServeError) as refused:
        client.set_routing("relabel", split={"stable": 80, "canary": 20})
    assert "Label 'stable' of model relabel is on version 1, which is not AVAILABLE" in refused.value.message
    assert "\n" not in refused.value.message
    result = client.export(model, "relabel", label="canary")
    assert result.version == 4 and result.labels == {"stable": 3, "canary": 4}, result.labels
    assert "label 'stable' was on version 1, which is no longer AVAILABLE; moved to version 3" in str(result)
    described = client.set_routing("relabel", split={"stable": 80, "canary": 20})
    assert described["routing"]["split"] == {"stable": 80, "canary": 20}
