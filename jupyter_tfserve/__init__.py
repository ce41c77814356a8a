"""Serve TensorFlow SavedModels from Jupyter, wire-compatible with TensorFlow Serving."""

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict]:
    from .extension.app import TFServeExtension

    return [{"module": "jupyter_tfserve", "app": TFServeExtension}]


def load_ipython_extension(ipython) -> None:
    """``%load_ext jupyter_tfserve``: the ``%tfserve`` magics."""
    from .kernel.magics import load_ipython_extension as load

    load(ipython)
