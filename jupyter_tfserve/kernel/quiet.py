"""TensorFlow's C++ start-up chatter kept out of the notebook's stderr, with a switch to see it again.

Importing TensorFlow prints oneDNN notices, "Could not find cuda drivers" and
``cuInit`` failures from C++, straight to file descriptor 2, which ipykernel
forwards into red stderr boxes in every cell that imports it. None of it is
about the user's work. ``TF_CPP_MIN_LOG_LEVEL`` hides what TensorFlow logs after
it has read the variable (set here when TensorFlow is not imported yet); the
lines printed before that, and in a kernel where TensorFlow was imported first,
are dropped from the kernel's stderr stream by :func:`install`, line by line,
matching only TensorFlow's own log format and file names.

``JUPYTER_TFSERVE_TF_LOGS=1`` in the kernel's (or the Jupyter server's)
environment turns all of this off.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

SWITCH_ENV = "JUPYTER_TFSERVE_TF_LOGS"
NOISE = re.compile(
    r"^(?:WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} [\d:. ]+\s+\d+ (?:port|cudart_stub|cuda_platform|cuda_executor|cpu_feature_guard|cuda_fft|"
    r"cuda_dnn|cuda_blas|cpu_utils|dso_loader)\.cc:\d+\] .*"
    r"|\d{4}-\d\d-\d\d [\d:.]+: [IWE] \S*(?:port|cudart_stub|cuda_platform|cpu_feature_guard)\.cc:\d+\] .*"
    r"|To enable the following instructions: .* in other operations, rebuild TensorFlow .*)$"
)


def enabled() -> bool:
    """True unless the user asked for TensorFlow's logs (``JUPYTER_TFSERVE_TF_LOGS=1``)."""
    return os.environ.get(SWITCH_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


def drop_noise(text: str) -> str:
    """``text`` without TensorFlow's start-up log lines."""
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if not NOISE.match(line.rstrip("\r\n"))]
    return text if len(kept) == len(lines) else "".join(kept)


def _drop_noise_hook(message: dict) -> dict | None:
    """An ipykernel stream hook: the message without TensorFlow's lines, or None when nothing is left."""
    content = message.get("content", {})
    text = content.get("text")
    if isinstance(text, str):
        kept = drop_noise(text)
        if not kept:
            return None
        content["text"] = kept
    return message


def install(stream: Any = None) -> bool:
    """Quiet TensorFlow in this kernel; True when the kernel's stderr stream now filters its noise."""
    if not enabled():
        return False
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    stream = stream if stream is not None else sys.stderr
    if getattr(stream, "_tfserve_quiet", False):
        return True
    pub_thread = getattr(stream, "pub_thread", None)
    if not hasattr(stream, "register_hook") or pub_thread is None:
        return False  # not ipykernel's stream (a terminal, a script): nothing forwards fd 2 into cells there
    # ipykernel's hooks are per thread and run where the stream flushes, in its IOPub thread; a hook
    # (rather than a patched write) also survives IPython putting its own write around each cell.
    pub_thread.schedule(lambda: stream.register_hook(_drop_noise_hook))
    stream._tfserve_quiet = True
    return True
