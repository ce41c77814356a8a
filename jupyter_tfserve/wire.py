"""Names that cross a process boundary: headers, environment variables, the token form, share verbs.

The engine, the Jupyter extension and the kernel side must agree on these strings,
and the last two must not load numpy, TensorFlow or TF Serving's protos to learn
them (the Jupyter server process would carry TensorFlow for a few strings). So they
live here, in a module that imports nothing but the standard library; everything
else imports them from here.
"""

from __future__ import annotations

# The engine's owner (the process that started it) proves itself with this header.
ENGINE_SECRET_HEADER = "X-TFServe-Engine-Secret"
# Where someone starting ``jupyter tfserve serve`` by hand may put the secret. The
# launcher does not use it: a model's ops can read the engine's environment.
ENGINE_SECRET_ENV = "TFSERVE_ENGINE_SECRET"
# A request carrying this header is sticky to one arm of a traffic split.
ROUTE_KEY_HEADER = "X-TFServe-Route-Key"
# Every answer names the version that gave it (a split or a label may have chosen it).
VERSION_HEADER = "X-TFServe-Model-Version"
# Share tokens look like ``tfs_<id>_<secret>``.
TOKEN_PREFIX = "tfs_"
SHARE_VERBS = ("predict", "classify", "regress", "metadata", "status")
DEFAULT_SHARE_VERBS = ("predict", "metadata", "status")


def bearer_token(authorization: str | None) -> str | None:
    """The share token in an ``Authorization: Bearer tfs_...`` header, if that is what it holds."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value.startswith(TOKEN_PREFIX):
        return None
    return value
