"""The owner's operations on a running engine: load, unload, label, batch, route, share.

Every operation validates its input and raises a :class:`ServingError` that says
what was wrong, then changes the engine and persists the change: the model config
in TF Serving's text format (so the file can be handed to ``tensorflow_model_server``),
routing, batching and tokens in the SQLite state store. A restarted engine reads both
back and is where it was.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..engine.batching_options import BatchingOptions
from ..engine.config import (
    ModelConfig,
    ModelServerConfig,
    env_references,
    format_model_server_config,
    write_text_atomically,
)
from ..engine.engine import LOAD_WAIT_SECONDS, Engine
from ..engine.errors import Code, ServingError, failed_precondition, invalid_argument, not_found
from ..engine.routing import Shadow, parse_arm, parse_split
from ..engine.source import VersionTrust
from ..engine.storage import is_remote
from .auth import Authenticator
from .state import StateStore

log = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
LABEL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
MAX_WAIT_SECONDS = 600


def _mapping(value: Any, what: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise invalid_argument(f"{what} must be a JSON object")
    return value


def _version_number(value: Any, what: str) -> int:
    digits = isinstance(value, str) and value.isascii() and value.isdigit()  # not '²': int() refuses it
    if isinstance(value, bool) or not (isinstance(value, int) or digits):
        raise invalid_argument(f"{what} must be a version number, got {value!r}")
    number = int(value)
    if number < 1:
        raise invalid_argument(f"{what} must be a positive version number, got {number}")
    return number


class PathPolicy:
    """Models load only from under the repository root or an allow-listed folder.

    The check runs on the fully resolved path (``os.path.realpath``), so ``..`` and
    symlinks that lead out of the root are caught whatever their spelling, and the
    resolved path is what gets served, so swapping a symlink later redirects nothing.

    It guards every way a client names a base path: the management API's load and
    TF Serving's ``HandleReloadConfigRequest`` (:meth:`check_config`). A path holding a
    ``${VAR}`` reference is refused, because the model config file it is written to
    expands references when read back (at the next start): the path checked would not
    be the path served.
    """

    def __init__(self, root: str | None, allowed: list[str]) -> None:
        self.remote = [path.rstrip("/") + "/" for path in allowed if path and is_remote(path)]
        self.roots = [Path(os.path.realpath(path)) for path in ([root] if root else []) + allowed
                      if path and not is_remote(path)]
        self.root = Path(root) if root else None
        # Where request logs may be written besides the allowed folders: the engine's state directory
        # (set by :class:`Control` from its config file). None: no such directory.
        self.log_root: Path | None = None

    def resolve_log_prefix(self, prefix: Any) -> str:
        """A ``logging_config`` file prefix, allowed only under the state directory or an allowed folder.

        A request log is a file the engine writes: without this rule, whoever may reload the
        config (the management API, ``HandleReloadConfigRequest``) could have the engine write
        files wherever its user can. An engine with no repository root is TF Serving, where the
        config is the operator's own: the prefix passes unchanged.
        """
        if not isinstance(prefix, str) or not prefix.strip() or "\0" in prefix:
            raise invalid_argument("'filename_prefix' must be a non-empty path")
        if not self.roots and not self.remote:
            return prefix
        candidate = Path(prefix)
        if not candidate.is_absolute() or ".." in candidate.parts:
            raise ServingError(Code.PERMISSION_DENIED,
                               f"a request log's filename_prefix must be an absolute path without '..': {prefix}")
        resolved = Path(os.path.realpath(candidate.parent)) / candidate.name
        allowed = [Path(os.path.realpath(self.log_root))] if self.log_root is not None else []
        allowed += self.roots
        if not any(root == resolved.parent or root in resolved.parents for root in allowed):
            where = ", ".join(str(root) for root in allowed) or "nowhere"
            raise ServingError(Code.PERMISSION_DENIED,
                               f"a request log may be written only under {where}, not {prefix}")
        return str(resolved)

    def resolve(self, base_path: Any) -> str:
        if not isinstance(base_path, str) or not base_path.strip():
            raise invalid_argument("'base_path' must be a non-empty string")
        if "\0" in base_path:
            raise invalid_argument("'base_path' must not contain NUL characters")
        if is_remote(base_path):
            return self._resolve_remote(base_path)
        if not self.roots:
            raise ServingError(Code.PERMISSION_DENIED,
                               "This engine was started without --model_repository_root: it loads no models on request")
        if ".." in Path(base_path).parts:
            raise ServingError(Code.PERMISSION_DENIED, f"'base_path' must not contain '..': {base_path}")
        candidate = Path(base_path)
        if not candidate.is_absolute():
            if self.root is None:
                raise invalid_argument(f"'base_path' must be absolute: {base_path}")
            candidate = self.root / candidate
        resolved = Path(os.path.realpath(candidate))
        if not any(resolved == root or root in resolved.parents for root in self.roots):
            allowed = ", ".join(str(root) for root in self.roots)
            raise ServingError(Code.PERMISSION_DENIED,
                               f"'base_path' {base_path} resolves to {resolved}, outside the model repository "
                               f"({allowed})")
        references = env_references(base_path) + env_references(str(resolved))
        if references:
            raise ServingError(Code.PERMISSION_DENIED,
                               f"'base_path' {base_path} holds ${{{references[0]}}}: the model config file expands "
                               "such references when it is read back, so the path checked would not be the path "
                               "served; rename the folder")
        return str(resolved)

    def _resolve_remote(self, base_path: str) -> str:
        """A URL is served only under an allowed remote prefix (``--allowed_model_path=s3://bucket/models``).

        No resolution applies to a URL, so the check is on its segments: no ``..``, no
        empty segment, no ``${VAR}``, and it must start with an allowed prefix as a whole segment.
        """
        parts = urlsplit(base_path)
        segments = parts.path.strip("/").split("/")
        if not parts.netloc or ".." in segments or "." in segments or "" in segments or parts.query or parts.fragment:
            raise ServingError(Code.PERMISSION_DENIED, f"'base_path' {base_path} is not a plain bucket/folder URL")
        if env_references(base_path):
            raise ServingError(Code.PERMISSION_DENIED, f"'base_path' {base_path} holds a ${{...}} reference")
        candidate = base_path.rstrip("/")
        if not any((candidate + "/").startswith(prefix) for prefix in self.remote):
            allowed = ", ".join(self.remote) or "none: give --allowed_model_path=s3://bucket/prefix"
            raise ServingError(Code.PERMISSION_DENIED,
                               f"'base_path' {base_path} is outside the allowed remote prefixes ({allowed})")
        return candidate

    def version_trust(self) -> VersionTrust | None:
        """The rule for the version folders under served paths: none without a repository, as TF Serving.

        The base path check above runs once, when a model is added; a version folder
        appears later (a symlink, another user's folder) and is checked at every poll.
        """
        return VersionTrust(tuple(self.roots)) if self.roots else None

    def check_config(self, config: ModelServerConfig, served: ModelServerConfig) -> ModelServerConfig:
        """``config`` with every new base path checked and resolved, as :meth:`resolve` does for one.

        For ``HandleReloadConfigRequest``, which replaces the whole config: without it, the
        one call TF Serving's clients use to add a model would load from anywhere while the
        management API refuses the same path. A base path the engine already serves (from
        its own config file, or checked when it was added) is kept as it is, so a client
        can send back the config with one model more. An engine with no repository root
        is TF Serving, which serves whatever a reload names: the config passes unchanged.
        """
        if not self.roots and not self.remote:
            return config
        served_paths = {model.base_path for model in served.model_config_list.config}
        served_prefixes = {model.logging_config.log_collector_config.filename_prefix
                           for model in served.model_config_list.config}
        checked = ModelServerConfig()
        checked.CopyFrom(config)
        for model in checked.model_config_list.config:
            collector = model.logging_config.log_collector_config
            try:
                if model.base_path not in served_paths:
                    model.base_path = self.resolve(model.base_path)
                if collector.filename_prefix and collector.filename_prefix not in served_prefixes:
                    collector.filename_prefix = self.resolve_log_prefix(collector.filename_prefix)
            except ServingError as error:
                raise ServingError(error.code, f"model {model.name}: {error.message}") from None
        return checked


def allowed_model_paths(args: argparse.Namespace) -> list[str]:
    """The folders of ``--allowed_model_paths`` (comma-separated) then of each ``--allowed_model_path``.

    The comma form splits at every comma, so it suits simple paths only; a folder whose
    name holds a comma is given whole with the repeatable ``--allowed_model_path``, taken
    as written (no splitting, no stripping). Splitting such a name would allow the folders
    its pieces happen to name instead of the one meant.
    """
    folders = [path.strip() for path in (args.allowed_model_paths or "").split(",") if path.strip()]
    return folders + [path for path in (getattr(args, "allowed_model_path", None) or []) if path]


def policy_from_json(value: Any, model: ModelConfig) -> None:
    """``"latest"``, ``{"latest": 2}``, ``"all"``, ``{"specific": [1, 2]}`` into the model's version policy."""
    policy = model.model_version_policy
    if value is None or value == "latest":
        policy.latest.num_versions = 1
        return
    if value == "all":
        policy.all.SetInParent()
        return
    if isinstance(value, Mapping) and len(value) == 1:
        (kind, argument), = value.items()
        if kind == "latest":
            if isinstance(argument, bool) or not isinstance(argument, int) or argument < 1:
                raise invalid_argument(f"version_policy latest needs a positive count, got {argument!r}")
            policy.latest.num_versions = argument
            return
        if kind == "specific":
            if not isinstance(argument, list) or not argument:
                raise invalid_argument("version_policy specific needs a non-empty list of versions")
            policy.specific.versions.extend(_version_number(v, "a specific version") for v in argument)
            return
    raise invalid_argument(
        f"version_policy must be \"latest\", \"all\", {{\"latest\": N}} or {{\"specific\": [...]}}; got {value!r}"
    )


class Control:
    """The management API's operations; handlers only parse HTTP and call these."""

    def __init__(
        self,
        engine: Engine,
        store: StateStore,
        auth: Authenticator,
        paths: PathPolicy,
        config_file: str | None,
        on_config_written: Callable[[str], None] = lambda text: None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.auth = auth
        self.paths = paths
        self.config_file = Path(config_file) if config_file else None
        if self.config_file is not None:
            paths.log_root = self.config_file.parent / "request_logs"
        self._on_config_written = on_config_written
        self._lock = asyncio.Lock()

    # -- restore at start ------------------------------------------------------------------------

    def restore(self) -> None:
        """Batching and routing as they were before a restart (a bad row is logged and skipped)."""
        for name, parameters in self.store.batching().items():
            try:
                off = parameters == {"enabled": False}
                self.engine.set_batching(name, None if off else self._batching_options(parameters))
            except ServingError as error:
                log.error("model %s: stored batching parameters ignored: %s", name, error.message)
        for name, (split, shadow, tolerance) in self.store.routing().items():
            try:
                self.engine.router.set_split(name, parse_split(split) if split else None)
                self.engine.router.set_shadow(name, self._shadow(shadow, tolerance) if shadow else None)
            except ServingError as error:
                log.error("model %s: stored routing ignored: %s", name, error.message)

    # -- models ----------------------------------------------------------------------------------

    def describe(self, name: str) -> dict:
        description = self.engine.manager.describe(name)
        options = self.engine.batching_options(name)
        description["batching"] = options.to_dict() if options is not None else None
        description["routing"] = self.engine.router.describe(name)
        description["logging"] = self.engine.request_log.describe(name)
        return description

    def running_config(self) -> dict:
        """The config the engine serves, in TF Serving's text format, and each split as version percentages.

        What ``jupyter tfserve deploy`` needs to carry the notebook's setup to a cluster; a split
        arm named by a label is given as the version the label points at now.
        """
        config = self.engine.manager.config
        splits: dict[str, dict[str, int]] = {}
        for model in config.model_config_list.config:
            arms = self.engine.router.describe(model.name)["split"]
            if not arms:
                continue
            labels = self.engine.manager.labels(model.name) if self.engine.manager.has_model(model.name) else {}
            weights = {str(labels.get(arm, arm)): weight for arm, weight in arms.items()}
            total = sum(weights.values()) or 1
            percents = {version: round(100 * weight / total) for version, weight in weights.items()}
            first = next(iter(percents))
            percents[first] += 100 - sum(percents.values())  # rounding: the percentages add up to 100
            splits[model.name] = percents
        return {"model_config": format_model_server_config(config), "splits": splits}

    def list_models(self) -> list[dict]:
        models = []
        for name in self.engine.manager.model_names():
            try:
                models.append(self.describe(name))
            except ServingError:
                continue
        return models

    async def load_model(self, body: Mapping) -> dict:
        body = _mapping(body, "the request")
        unknown = set(body) - {"name", "base_path", "version_policy", "labels", "replace", "wait_seconds"}
        if unknown:
            raise invalid_argument(f"unknown field(s) {', '.join(sorted(unknown))} in load request")
        name = body.get("name")
        if not isinstance(name, str) or not MODEL_NAME.match(name):
            raise invalid_argument(f"'name' must be 1-128 letters, digits, '.', '_' or '-', got {name!r}")
        model = ModelConfig(name=name, base_path=self.paths.resolve(body.get("base_path")),
                            model_platform="tensorflow")
        if not is_remote(model.base_path) and not os.path.isdir(model.base_path):
            # A remote path is listed off the loop by the source: a missing bucket is then the model's status.
            # Checked before anything is registered: a missing folder would otherwise be a ghost model
            # in models.config and a wait that ends in "no AVAILABLE version", never saying why.
            raise not_found(f"Model base path {body.get('base_path')} does not exist (or is not a folder); "
                            f"nothing was loaded as {name}")
        policy_from_json(body.get("version_policy"), model)
        for label, version in _mapping(body.get("labels") or {}, "'labels'").items():
            model.version_labels[self._label(label)] = _version_number(version, f"label {label}")
        wait = self._wait_seconds(body.get("wait_seconds", 0))
        async with self._lock:
            config = self.engine.manager.config
            entries = config.model_config_list.config
            existing = [index for index, entry in enumerate(entries) if entry.name == name]
            if existing and not body.get("replace"):
                raise ServingError(Code.ALREADY_EXISTS,
                                   f"Model {name} is already served; send \"replace\": true to change it")
            if existing:
                entries[existing[0]].CopyFrom(model)
            else:
                entries.add().CopyFrom(model)
            await self._apply(config)
        log.info("management: model %s loaded from %s", name, model.base_path)
        if wait:
            await self._wait_for_model(name, wait)
        return self.describe(name)

    async def _wait_for_model(self, name: str, seconds: float) -> None:
        """Until every version found has loaded or failed (one AVAILABLE is success), or the time is up."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            settled = self.engine.manager.is_settled(name)
            if settled and self.engine.manager.available_versions(name):
                return
            statuses = self.engine.manager.status(name) if self.engine.manager.has_model(name) else []
            if settled and statuses and all(status.error_code is not Code.OK for status in statuses):
                messages = "; ".join(status.error_message for status in statuses)
                raise failed_precondition(f"Model {name} has no version that loads: {messages}")
            await asyncio.sleep(0.05)
        if self.engine.manager.available_versions(name):
            return  # some versions still loading at the deadline: answer with what serves now
        raise ServingError(Code.DEADLINE_EXCEEDED, f"Model {name} had no AVAILABLE version after {seconds:g} s")

    async def unload(self, name: str, version: int | None = None) -> dict:
        async with self._lock:
            config = self.engine.manager.config
            entries = config.model_config_list.config
            index = next((i for i, entry in enumerate(entries) if entry.name == name), None)
            if index is None:
                raise not_found(f"Model {name} is not served")
            if version is None:
                del entries[index]
                await self._apply(config)
                self.engine.router.forget(name)
                self.engine.windows.forget(name)
                self.engine.statistics.forget(name)
                self.store.save_routing(name, None, None, None)
                self.store.save_batching(name, None)
                log.info("management: model %s unloaded", name)
                return {"unloaded": name}
            serving = self.engine.manager.available_versions(name)
            if version not in serving:
                raise not_found(f"Version {version} of model {name} is not AVAILABLE (available: {serving})")
            keep = [v for v in serving if v != version]
            if not keep:
                raise failed_precondition(
                    f"Version {version} is the only version of {name} being served; unload the model instead"
                )
            entry = entries[index]
            entry.model_version_policy.Clear()
            entry.model_version_policy.specific.versions.extend(keep)
            for label, labelled in list(entry.version_labels.items()):
                if labelled == version:
                    del entry.version_labels[label]
            await self._apply(config)
        log.info("management: model %s version %d unloaded (now serving %s)", name, version, keep)
        return self.describe(name)

    def poll(self, name: str) -> dict:
        """Look for new version directories now rather than at the next poll (an export just published one)."""
        self.engine.manager.require(name)
        self.engine.manager.poll()
        return self.describe(name)

    async def set_labels(self, name: str, labels: Any, replace: bool = True) -> dict:
        wanted = {self._label(label): _version_number(version, f"label {label}")
                  for label, version in _mapping(labels, "'labels'").items()}
        async with self._lock:
            current = {} if replace else self.engine.manager.labels(name)
            merged = current | wanted
            self.engine.manager.set_labels(name, merged)
            self._write_config(self.engine.manager.config)
        return self.describe(name)

    async def promote(self, name: str, version: Any) -> dict:
        """``stable`` moves to the version, and any split or shadow is dropped: one call, no window between."""
        number = _version_number(version, "'version'")
        async with self._lock:
            labels = self.engine.manager.labels(name)
            labels["stable"] = number
            self.engine.manager.set_labels(name, labels)
            self.engine.router.set_split(name, None)
            self.engine.router.set_shadow(name, None)
            self.store.save_routing(name, None, None, None)
            self._write_config(self.engine.manager.config)
        log.info("management: model %s: version %d promoted to stable; split and shadow removed", name, number)
        return self.describe(name)

    # -- batching and routing --------------------------------------------------------------------

    def _batching_options(self, parameters: Mapping | None) -> BatchingOptions | None:
        if parameters is None:
            return None
        base = self.engine.options.batching
        return BatchingOptions.from_dict(_mapping(parameters, "'batching'"), base)

    def set_batching(self, name: str, body: Any) -> dict:
        """``{"enabled": false}`` turns batching off; ``{"max_batch_size": 32, ...}`` sets it on with those."""
        self.engine.manager.require(name)
        body = dict(_mapping(body, "the request"))
        enabled = body.pop("enabled", True)
        if not isinstance(enabled, bool):
            raise invalid_argument("'enabled' must be true or false")
        options = self._batching_options(body) if enabled else None
        self.engine.set_batching(name, options)
        self.store.save_batching(name, options.to_dict() if options is not None else {"enabled": False})
        return self.describe(name)

    async def set_logging(self, name: str, body: Any) -> dict:
        """``{"sampling_rate": 0.1, "filename_prefix": ...}`` sets the model's ``logging_config`` (rate 0: off).

        It goes into the model config like any other setting, so it survives a restart and a
        config handed to TF Serving keeps it. The prefix defaults to ``request_logs/<name>/<name>``
        beside the config file (the engine's state directory).
        """
        body = _mapping(body, "the request")
        unknown = set(body) - {"sampling_rate", "filename_prefix"}
        rate = body.get("sampling_rate")
        if unknown or isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise invalid_argument("send {\"sampling_rate\": 0..1, \"filename_prefix\": optional path}")
        prefix = body.get("filename_prefix")
        if prefix is None and self.config_file is not None:
            prefix = str(self.config_file.parent / "request_logs" / name / name)
        if prefix is None:
            raise invalid_argument("this engine has no config file to log beside: give 'filename_prefix'")
        prefix = self.paths.resolve_log_prefix(prefix)
        async with self._lock:
            config = self.engine.manager.config
            models = [model for model in config.model_config_list.config if model.name == name]
            if not models:
                raise not_found(f"Servable not found for request: Latest({name})")
            logging_config = models[0].logging_config
            logging_config.log_collector_config.type = "file"
            logging_config.log_collector_config.filename_prefix = prefix
            logging_config.sampling_config.sampling_rate = float(rate)
            await self._apply(config)
        return self.describe(name)

    def _shadow(self, target: Any, tolerance: Any) -> Shadow:
        version, label = parse_arm(target)
        value = 1e-3 if tolerance is None else tolerance
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise invalid_argument(f"'shadow_tolerance' must be a number >= 0, got {tolerance!r}")
        return Shadow(version, label, float(value))

    async def set_routing(self, name: str, body: Any) -> dict:
        """``{"split": {"1": 90, "2": 10}, "shadow": "2"}``; ``{}`` turns both off.

        A model still loading (just added, or restored after an engine restart) is waited for,
        as a request for it is, so that its arms are judged on the versions it will serve.
        """
        body = _mapping(body, "the request")
        unknown = set(body) - {"split", "shadow", "shadow_tolerance"}
        if unknown:
            raise invalid_argument(f"unknown field(s) {', '.join(sorted(unknown))} in routing request")
        self.engine.manager.require(name)
        if self.engine.manager.is_loading(name):
            await self.engine.manager.wait_for_load(name, timeout=LOAD_WAIT_SECONDS)
        split = parse_split(body["split"]) if body.get("split") is not None else None
        shadow = self._shadow(body["shadow"], body.get("shadow_tolerance")) if body.get("shadow") is not None else None
        available = set(self.engine.manager.available_versions(name))
        labels = self.engine.manager.labels(name)
        for arm in [*(split.arms if split else ()), *([shadow] if shadow else [])]:
            if arm.version is not None and arm.version not in available:
                raise failed_precondition(
                    f"Version {arm.version} of model {name} is not AVAILABLE (available: {sorted(available)})"
                )
            if arm.label is not None and arm.label not in labels:
                raise failed_precondition(f"Model {name} has no label {arm.label!r} (labels: {sorted(labels)})")
            if arm.label is not None and labels[arm.label] not in available:
                raise failed_precondition(
                    f"Label {arm.label!r} of model {name} is on version {labels[arm.label]}, which is not AVAILABLE "
                    f"(available: {sorted(available)}); move the label first"
                )
        self.engine.router.set_split(name, split)
        self.engine.router.set_shadow(name, shadow)
        self.store.save_routing(name, split.to_json() if split else None, shadow.name if shadow else None,
                                shadow.tolerance if shadow else None)
        log.info("management: model %s: split %s, shadow %s", name, split.to_json() if split else "off",
                 shadow.name if shadow else "off")
        return self.describe(name)

    def windows(self, name: str, seconds: Any) -> dict:
        self.engine.manager.require(name)
        try:
            window = int(seconds)
        except (TypeError, ValueError):
            raise invalid_argument(f"'seconds' must be an integer, got {seconds!r}") from None
        summary = self.engine.windows.summary(name, window)
        summary["routing"] = self.engine.router.describe(name)
        return summary

    # -- share tokens ----------------------------------------------------------------------------

    def create_token(self, body: Any) -> dict:
        body = _mapping(body, "the request")
        unknown = set(body) - {"model", "verbs", "expires_in_seconds", "description"}
        if unknown:
            raise invalid_argument(f"unknown field(s) {', '.join(sorted(unknown))} in token request")
        model = body.get("model")
        if not isinstance(model, str) or model not in self.engine.manager.model_names():
            raise not_found(f"Model {model} is not served; a share token can only grant a served model")
        verbs = body.get("verbs")
        if verbs is not None and (not isinstance(verbs, list) or not all(isinstance(v, str) for v in verbs)):
            raise invalid_argument("'verbs' must be a list of strings")
        token, record = self.auth.create_token(model, verbs, body.get("expires_in_seconds"),
                                               body.get("description", ""))
        log.info("management: share token %s created for model %s (%s)", record.id, model, ",".join(record.verbs))
        return {**record.to_json(), "token": token}

    def list_tokens(self) -> list[dict]:
        now = time.time()
        return [{**record.to_json(), "active": record.revoked_at is None and record.expires_at > now}
                for record in self.store.tokens()]

    def revoke_token(self, token_id: str) -> dict:
        record = self.auth.revoke_token(token_id)
        log.info("management: share token %s revoked", token_id)
        return record.to_json()

    # -- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _label(label: Any) -> str:
        if not isinstance(label, str) or not LABEL_NAME.match(label):
            raise invalid_argument(f"label {label!r} must start with a letter and hold letters, digits, '_' or '-'")
        return label

    @staticmethod
    def _wait_seconds(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_WAIT_SECONDS:
            raise invalid_argument(f"'wait_seconds' must be a number from 0 to {MAX_WAIT_SECONDS}, got {value!r}")
        return float(value)

    async def _apply(self, config: ModelServerConfig) -> None:
        self._write_config(config)
        await self.engine.manager.set_config(config)

    def _write_config(self, config: ModelServerConfig) -> None:
        if self.config_file is None:
            return
        text = format_model_server_config(config)
        write_text_atomically(self.config_file, text)
        self._on_config_written(text)
