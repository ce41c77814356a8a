"""The Jupyter server extension: supervises the engine and exposes it under ``{base_url}tfserve/``."""
