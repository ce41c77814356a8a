"""The ``deploy`` subcommand: read the models, rewrite base paths to object storage, write manifests, print notes.

Bad input (an unknown target, a model that is not configured, a local base path and no
``--storage_uri``) is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from ..engine.config import ConfigError, ModelServerConfig, read_model_server_config, single_model_config
from ..engine.source import list_versions
from ..engine.storage import is_remote, open_url
from .arguments import TARGETS, add_arguments
from .manifests import BUILDERS, Plan

log = logging.getLogger(__name__)


class DeployError(Exception):
    """Bad input: its message is the one line the user sees."""


def _config(args: argparse.Namespace) -> ModelServerConfig:
    if args.model_config_file and args.model_base_path:
        raise DeployError("give either --model_config_file or --model_base_path, not both")
    if args.model_base_path:
        return single_model_config(args.model_name or "default", args.model_base_path)
    if not args.model_config_file:
        raise DeployError("give --model_config_file, or --model_name and --model_base_path")
    try:
        config = read_model_server_config(args.model_config_file)
    except (OSError, ConfigError) as error:
        raise DeployError(str(error)) from None
    if args.model_name:
        chosen = [m for m in config.model_config_list.config if m.name == args.model_name]
        if not chosen:
            raise DeployError(f"model {args.model_name} is not served by {args.model_config_file}")
        del config.model_config_list.config[:]
        config.model_config_list.config.extend(chosen)
    return config


def _splits(texts: list[str], names: set[str]) -> dict[str, dict[int, int]]:
    splits: dict[str, dict[int, int]] = {}
    for text in texts:
        model, _, arms = text.partition("=")
        if model not in names:
            raise DeployError(f"--split {text}: model {model!r} is not served")
        try:
            split = {int(v): int(p) for v, _, p in (arm.partition(":") for arm in arms.split(","))}
        except ValueError:
            raise DeployError(f"--split {text}: expected MODEL=VERSION:PERCENT,VERSION:PERCENT") from None
        if sum(split.values()) != 100 or any(p < 0 for p in split.values()):
            raise DeployError(f"--split {text}: the percentages must add up to 100")
        splits[model] = split
    return splits


def _upload(local: str, remote: str, versions: list[int]) -> None:
    fs, root = open_url(remote)
    for version in versions:
        log.info("uploading %s/%d to %s/%d", local, version, remote, version)
        fs.put(os.path.join(local, str(version)), f"{root.rstrip('/')}/{version}", recursive=True)


def plan(args: argparse.Namespace) -> tuple[dict[str, dict], list[str]]:
    """The manifests (documents by file name) and the notes, from the deploy flags; uploads with ``--upload``.

    Raises :class:`DeployError` for bad input. Apart from :func:`run` so that the panel's
    Deploy dialog shows exactly what the command would write, without writing it.
    """
    if args.target not in BUILDERS:
        raise DeployError(f"unknown --target {args.target!r}: choose one of {', '.join(TARGETS)}")
    config = _config(args)
    models = list(config.model_config_list.config)
    splits = _splits(args.split, {m.name for m in models})
    for model in models:
        local = model.base_path
        if not is_remote(local) and not args.storage_uri:
            raise DeployError(f"model {model.name}: base path {local} is local; a cluster cannot read it: "
                              "give --storage_uri=s3://bucket/prefix (and --upload)")
        if not args.storage_uri:
            continue
        target = f"{args.storage_uri.rstrip('/')}/{model.name}"
        model.base_path = target
        if args.upload:
            if is_remote(local):
                raise DeployError(f"model {model.name}: --upload copies local folders; {local} is remote")
            versions = sorted(v for v, found in list_versions(local).items() if found.complete)
            if not versions:
                raise DeployError(f"model {model.name}: no complete version under {local} to upload")
            _upload(local, target, versions)
            for version in splits.get(model.name, {}):
                _upload(local, f"{target}-v{version}", [version])
    return BUILDERS[args.target](Plan(config, args.name, splits, args.image))


def running_manifests(running: dict, target: str, *, model: str = "", name: str = "tfserve", image: str = "",
                      storage_uri: str = "") -> tuple[dict[str, dict], list[str]]:
    """What ``%tfserve deploy`` would write for an engine's running config (``GET /api/config``), unwritten.

    The config and splits go through the deploy command's own flags (as the magic passes
    them), so the panel, the magic and the command cannot disagree; nothing is uploaded.
    """
    splits = running.get("splits") or {}
    if model:
        splits = {name_: split for name_, split in splits.items() if name_ == model}
    with tempfile.TemporaryDirectory(prefix="tfserve-deploy-") as folder:
        config_file = Path(folder) / "running-models.config"
        config_file.write_text(running.get("model_config") or "")
        argv = [f"--target={target}", f"--model_config_file={config_file}", f"--name={name}", f"--image={image}",
                f"--storage_uri={storage_uri}", f"--model_name={model}",
                *(f"--split={m}=" + ",".join(f"{v}:{p}" for v, p in split.items()) for m, split in splits.items())]
        args = add_arguments(argparse.ArgumentParser(prog="jupyter tfserve deploy")).parse_args(argv)
        return plan(args)


def yaml_text(files: dict[str, dict], notes: list[str]) -> str:
    """One multi-document YAML (``kubectl apply -f`` takes it): the notes as comments, then each file."""
    import yaml

    head = "".join(f"# note: {note}\n" for note in notes)
    return head + "".join(f"---\n# {file_name}\n{yaml.safe_dump(document, sort_keys=False)}"
                          for file_name, document in files.items())


def run(args: argparse.Namespace) -> int:
    """Write the manifests; print where they went and what did not carry over."""
    try:
        files, notes = plan(args)
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        import yaml

        for name, document in files.items():
            (out / name).write_text(yaml.safe_dump(document, sort_keys=False))
    except DeployError as error:
        sys.stderr.write(f"deploy: {error}\n")
        return 2
    except (OSError, ValueError) as error:
        sys.stderr.write(f"deploy: {type(error).__name__}: {error}\n")
        return 1
    sys.stdout.write(f"wrote {', '.join(sorted(files))} to {out}\n")
    for note in notes:
        sys.stdout.write(f"note: {note}\n")
    sys.stdout.write(f"next: kubectl apply -f {out}\n")
    return 0
