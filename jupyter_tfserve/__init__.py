"""Serve TensorFlow SavedModels from Jupyter, wire-compatible with TensorFlow Serving."""

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict]:
    from .extension.app import TFServeExtension

    return [{"module": "jupyter_tfserve", "app": TFServeExtension}]
