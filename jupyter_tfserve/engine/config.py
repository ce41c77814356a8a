"""TF Serving's configuration files, read and written with its own protos.

The model config is kept in TF Serving's text format (``ModelServerConfig``)
so a project can hand the very same file to ``tensorflow_model_server``.
Parsing goes through ``google.protobuf.text_format``; nothing here is a
hand-written parser.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from ..private_files import make_private_dirs

ModelServerConfig = model_server_config_pb2.ModelServerConfig
ModelConfig = model_server_config_pb2.ModelConfig

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def env_references(text: str) -> list[str]:
    """The ``${VAR}`` references in ``text`` that reading it as a config file would expand."""
    return _ENV_REFERENCE.findall(text)


class ConfigError(ValueError):
    """A configuration file or message that cannot be used; the message names the source."""


def parse_model_server_config(text: str, source: str = "<config>") -> ModelServerConfig:
    """Parse a ModelServerConfig text proto and check what TF Serving checks.

    ``${VAR}`` references are expanded from the environment first, because TF
    Serving's own example configs (and many deployments) are written that way.
    """
    expanded = _ENV_REFERENCE.sub(lambda m: os.environ.get(m.group(1), m.group(0)), text)
    config = ModelServerConfig()
    try:
        text_format.Parse(expanded, config)
    except text_format.ParseError as error:
        raise ConfigError(f"cannot parse model config file {source}: {_text_format_error(error, config)}") from None
    validate_model_server_config(config, source)
    return config


def _text_format_error(error: text_format.ParseError, message: ModelServerConfig) -> str:
    """The parse error in protobuf's C++ wording, which TF Serving logs and its users (and tests) grep for.

    protobuf's C++ ``TextFormat`` parser logs ``Error parsing text-format <message type>: <line>:<column>:
    <what>`` (1-based); Python's ``ParseError`` says ``<line>:<column> : <what>``.
    """
    text = str(error)
    line, column = error.GetLine(), error.GetColumn()
    if line is not None and column is not None:
        text = text.removeprefix(f"{line}:{column} : ")
        return f"Error parsing text-format {message.DESCRIPTOR.full_name}: {line}:{column}: {text}"
    return f"Error parsing text-format {message.DESCRIPTOR.full_name}: {text}"


def read_model_server_config(path: str | os.PathLike[str]) -> ModelServerConfig:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"cannot read model config file {path}: {error.strerror}") from None
    return parse_model_server_config(text, str(path))


def validate_model_server_config(config: ModelServerConfig, source: str = "<config>") -> None:
    if config.WhichOneof("config") == "custom_model_config":
        raise ConfigError(f"{source}: custom_model_config is not supported; use model_config_list")
    seen: set[str] = set()
    for model in config.model_config_list.config:
        if not model.name:
            raise ConfigError(f"{source}: every model config needs a name")
        if model.name in seen:
            raise ConfigError(f"{source}: model {model.name!r} is configured twice")
        seen.add(model.name)
        if not model.base_path:
            raise ConfigError(f"{source}: model {model.name!r} has no base_path")
        if model.model_platform not in ("", "tensorflow"):
            raise ConfigError(
                f"{source}: model {model.name!r} has model_platform {model.model_platform!r}; "
                "only 'tensorflow' is served"
            )
        policy = model.model_version_policy
        if policy.WhichOneof("policy_choice") == "latest" and policy.latest.num_versions < 0:
            raise ConfigError(f"{source}: model {model.name!r}: latest.num_versions must be positive")
        if policy.WhichOneof("policy_choice") == "specific" and not policy.specific.versions:
            raise ConfigError(f"{source}: model {model.name!r}: specific policy lists no versions")


def single_model_config(name: str, base_path: str) -> ModelServerConfig:
    """The config TF Serving builds from ``--model_name`` and ``--model_base_path``."""
    config = ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = base_path
    model.model_platform = "tensorflow"
    return config


def format_model_server_config(config: ModelServerConfig) -> str:
    return text_format.MessageToString(config)


def write_model_server_config(config: ModelServerConfig, path: str | os.PathLike[str]) -> None:
    """Write atomically, so a poller (ours or TF Serving's) never reads half a file."""
    write_text_atomically(Path(path), format_model_server_config(config))


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` (0600, mkstemp's mode), then rename it into place.

    The file is owner-only from its first byte: the model config names every model path, and
    the files this engine writes are read by no one else.
    """
    make_private_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
