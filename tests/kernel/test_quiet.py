"""The TensorFlow noise filter drops TensorFlow's start-up lines and nothing else; the switch turns it off."""

from __future__ import annotations

from jupyter_tfserve.kernel import quiet

NOISE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796217155.037447   14256 port.cc:153] oneDNN custom operations are on.\n"
    "I0000 00:00:1796217155.042784   14256 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n"
    "E0000 00:00:1796217161.512487   14256 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
)


def test_drops_tensorflow_startup_lines_only():
    assert quiet.drop_noise(NOISE) == ""
    assert quiet.drop_noise(NOISE + "ValueError: my own mistake\n") == "ValueError: my own mistake\n"
    assert quiet.drop_noise("E0000 00:00:1.0 1 my_op.cc:3] a real kernel error\n") != ""
    message = {"content": {"name": "stderr", "text": NOISE + "kept\n"}}
    assert quiet._drop_noise_hook(message)["content"]["text"] == "kept\n"
    assert quiet._drop_noise_hook({"content": {"name": "stderr", "text": NOISE}}) is None


def test_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv(quiet.SWITCH_ENV, "1")
    assert not quiet.enabled()
    assert quiet.install() is False
    monkeypatch.delenv(quiet.SWITCH_ENV)
    assert quiet.enabled()


def test_a_plain_stream_is_left_alone(monkeypatch, tmp_path):
    with open(tmp_path / "stderr.txt", "w") as stream:
        assert quiet.install(stream) is False
