"""``%tfserve``: the client's operations as one line magics, with ``--help`` for each.

A user's mistake (a wrong name, a bad split, an unknown variable) is one line on
stderr, never a traceback: the magic catches :class:`TFServeError` and argument
errors. Bugs in this package still raise, so they get reported.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class

from ..wire import SHARE_VERBS
from .client import TFServeClient, TFServeError, default_client

DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class UsageError(Exception):
    """A mistake in the magic's line; shown as one line with the subcommand's usage hint."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(f"{message} (see %tfserve {self.prog.split()[-1]} --help)")

    def exit(self, status: int = 0, message: str | None = None) -> None:
        if message:
            sys.stderr.write(message)
        raise _HelpShown


class _HelpShown(Exception):
    pass


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``7d`` into seconds."""
    match = DURATION.match(text.strip())
    if not match:
        raise UsageError(f"{text!r} is not a duration: use e.g. 90s, 15m, 2h or 7d")
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


def parse_split(text: str) -> dict[str, float]:
    """``1=90,2=10`` or ``stable=90,canary=10``."""
    split = {}
    for part in text.split(","):
        arm, _, weight = part.partition("=")
        try:
            split[arm.strip()] = float(weight)
        except ValueError:
            raise UsageError(f"--split wants ARM=WEIGHT pairs like 1=90,2=10; got {part!r}") from None
    return split


def parse_policy(text: str) -> Any:
    """``latest``, ``latest=2``, ``all``, ``specific=1,2`` into the management API's JSON."""
    kind, _, argument = text.partition("=")
    if kind == "all" and not argument:
        return "all"
    if kind == "latest":
        return {"latest": int(argument)} if argument else "latest"
    if kind == "specific" and argument:
        return {"specific": [int(v) for v in argument.split(",")]}
    raise UsageError(f"--policy is latest, latest=N, all or specific=1,2; got {text!r}")


def _value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if "," in text:
        return [_value(part) for part in text.split(",")]
    return text


def _parsers() -> dict[str, _Parser]:
    def parser(name: str, description: str) -> _Parser:
        return _Parser(prog=f"%tfserve {name}", description=description, add_help=True)

    parsers = {}
    p = parsers["load"] = parser("load", "Serve the SavedModel versions under PATH as NAME.")
    p.add_argument("name")
    p.add_argument("path", help="base path holding numbered version folders (under the model repository root)")
    p.add_argument("--policy", default=None, help="latest (default), latest=N, all, specific=1,2")
    p.add_argument("--label", action="append", default=[], metavar="LABEL=VERSION", help="e.g. stable=1 (repeat)")
    p.add_argument("--replace", action="store_true", help="change the model if it is already served")
    p.add_argument("--wait", type=float, default=120, help="seconds to wait for a version to be AVAILABLE")

    p = parsers["unload"] = parser("unload", "Stop serving a model, or one of its versions.")
    p.add_argument("name")
    p.add_argument("version", nargs="?", type=int)

    parsers["list"] = parser("list", "Models, versions, states and labels.")

    p = parsers["status"] = parser("status", "One model: versions, labels, batching, routing, latency.")
    p.add_argument("name")

    p = parsers["export"] = parser("export", "Export a Keras model or tf.Module as the next version of NAME.")
    p.add_argument("model_var", help="the notebook variable holding the model")
    p.add_argument("name")
    p.add_argument("--label", help="label the new version (canary also puts stable on the previous version)")
    p.add_argument("--warmup", metavar="SAMPLE_VAR", help="a variable holding a sample input for warmup")
    p.add_argument("--wait", type=float, default=300)

    p = parsers["predict"] = parser("predict", "Predict with DATA_VAR (a numpy array, list or dict of them).")
    p.add_argument("name")
    p.add_argument("data_var")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--version", type=int)
    target.add_argument("--label")
    p.add_argument("--signature", default=None)

    p = parsers["ab"] = parser("ab", "A/B traffic split, shadow traffic, promotion.")
    p.add_argument("name")
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--split", help="e.g. 1=90,2=10 or stable=90,canary=10")
    action.add_argument("--shadow", help="a version or label that receives a copy of the traffic")
    action.add_argument("--promote", type=int, metavar="VERSION", help="move stable to VERSION, end split and shadow")
    action.add_argument("--off", action="store_true", help="end the split and shadow")
    p.add_argument("--tolerance", type=float, default=None, help="shadow: largest difference that still agrees")

    p = parsers["batching"] = parser("batching", "Set batching for one model, live: key=value ... or off.")
    p.add_argument("name")
    p.add_argument("settings", nargs="*", metavar="KEY=VALUE",
                   help="max_batch_size=32 batch_timeout_micros=2000 ... ; 'off' turns batching off")

    p = parsers["log"] = parser("log", "Log a sample of NAME's requests and answers (PredictionLog TFRecords).")
    p.add_argument("name")
    p.add_argument("--rate", type=float, required=True, help="fraction of requests logged, 0 to 1 (0: off)")
    p.add_argument("--prefix", default=None, help="file name prefix (default: beside the engine's model config)")

    p = parsers["replay"] = parser("replay", "Send logged requests to a version or label; compare the answers.")
    p.add_argument("logs", help="log files, or a glob such as PREFIX*")
    p.add_argument("name")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--version", type=int)
    target.add_argument("--label")
    p.add_argument("--limit", type=int, default=None, help="replay at most this many records")

    p = parsers["deploy"] = parser("deploy", "Write Kubernetes or KServe manifests for what this engine serves.")
    p.add_argument("--target", required=True, help="kubernetes, kserve or kserve-runtime")
    p.add_argument("--storage_uri", default="", help="rewrite each base path to URI/<model name>")
    p.add_argument("--upload", action="store_true", help="copy the versions to --storage_uri")
    p.add_argument("--output_dir", default="deploy-manifests", help="where the manifests go")
    p.add_argument("--name", default="tfserve", help="name of the Kubernetes Deployment and Service")

    p = parsers["share"] = parser("share", "A share token for one model (or --revoke ID, --list).")
    p.add_argument("name", nargs="?")
    p.add_argument("--expires", default=None, help="lifetime, e.g. 2h, 30m, 7d (default: the server's, 24 h)")
    p.add_argument("--verbs", default="predict,metadata", help=f"comma-separated, from {','.join(SHARE_VERBS)}")
    p.add_argument("--description", default="")
    p.add_argument("--revoke", metavar="ID")
    p.add_argument("--list", action="store_true")

    p = parsers["dashboard"] = parser("dashboard", "A/B dashboard for NAME, or the model browser.")
    p.add_argument("name", nargs="?")
    p.add_argument("--log", nargs="?", const=True, default=None, metavar="GLOB",
                   help="show the last logged requests: of this request log (PREFIX*), or, without GLOB, "
                        "wherever the model logs now")

    p = parsers["monitor"] = parser("monitor", "Live latency and throughput for NAME.")
    p.add_argument("name")
    p.add_argument("--log", nargs="?", const=True, default=None, metavar="GLOB",
                   help="show the last logged requests: of this request log (PREFIX*), or, without GLOB, "
                        "wherever the model logs now")

    p = parsers["engine"] = parser("engine", "Which engine this kernel talks to (Jupyter's or a private one).")
    p.add_argument("--stop", action="store_true", help="stop the private engine")
    return parsers


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines)


def format_models(models: list[dict]) -> str:
    if not models:
        return "No models are served. Try: %tfserve export MODEL_VAR NAME"
    rows = []
    for model in models:
        labels_by_version: dict[str, list[str]] = {}
        for label, version in model.get("labels", {}).items():
            labels_by_version.setdefault(str(version), []).append(label)
        for status in model["model_version_status"]:
            error = status["status"]["error_message"]
            rows.append([model["name"], status["version"], status["state"],
                         ",".join(sorted(labels_by_version.get(status["version"], []))),
                         error[:60] + ("…" if len(error) > 60 else "")])
    return _table(rows, ["MODEL", "VERSION", "STATE", "LABELS", "ERROR"])


@magics_class
class TFServeMagics(Magics):
    """``%tfserve SUBCOMMAND ...``; ``%tfserve --help`` lists the subcommands."""

    def __init__(self, shell, client: TFServeClient | None = None) -> None:
        super().__init__(shell)
        self._client = client
        self._parsers = _parsers()
        self._displayed: list[Any] = []

    @property
    def client(self) -> TFServeClient:
        if self._client is None:
            self._client = default_client()
        return self._client

    def _variable(self, name: str) -> Any:
        try:
            return self.shell.user_ns[name]
        except KeyError:
            raise UsageError(f"no variable named {name!r} in the notebook") from None

    def _help(self) -> str:
        lines = ["%tfserve SUBCOMMAND [...]   (%tfserve SUBCOMMAND --help for details)", ""]
        lines += [f"  {name:<10} {parser.description}" for name, parser in self._parsers.items()]
        return "\n".join(lines)

    @line_magic
    def tfserve(self, line: str) -> Any:
        """Serve, version, compare and share TensorFlow models from the notebook."""
        try:
            words = shlex.split(line)
        except ValueError as error:
            return self._fail(f"cannot parse the line: {error}")
        if not words or words[0] in ("-h", "--help", "help"):
            sys.stdout.write(self._help() + "\n")
            return None
        command, *rest = words
        parser = self._parsers.get(command)
        if parser is None:
            return self._fail(f"unknown subcommand {command!r}; one of {', '.join(self._parsers)}")
        try:
            arguments = parser.parse_args(rest)
            return getattr(self, f"_do_{command}")(arguments)
        except _HelpShown:
            return None
        except (UsageError, TFServeError) as error:
            return self._fail(str(error))

    def _fail(self, message: str) -> None:
        sys.stderr.write(f"tfserve: {message}\n")
        return None

    def _show(self, text: str) -> None:
        sys.stdout.write(text.rstrip("\n") + "\n")

    # -- subcommands -----------------------------------------------------------------------------

    def _do_load(self, args: argparse.Namespace) -> None:
        labels = {}
        for item in args.label:
            label, _, version = item.partition("=")
            if not (version.isascii() and version.isdigit()):
                raise UsageError(f"--label wants LABEL=VERSION, got {item!r}")
            labels[label] = int(version)
        policy = parse_policy(args.policy) if args.policy else None
        described = self.client.load(args.name, args.path, version_policy=policy, labels=labels,
                                     replace=args.replace, wait_seconds=args.wait)
        self._show(format_models([described]))

    def _do_unload(self, args: argparse.Namespace) -> None:
        self.client.unload(args.name, args.version)
        what = f"version {args.version} of {args.name}" if args.version else args.name
        self._show(f"unloaded {what}")

    def _do_list(self, args: argparse.Namespace) -> None:
        self._show(format_models(self.client.models()))

    def _do_status(self, args: argparse.Namespace) -> None:
        described = self.client.model(args.name)
        self._show(format_models([described]))
        windows = self.client.windows(args.name, 60)
        for version, window in windows["versions"].items():
            p50 = f"{window['p50_ms']:.2f} ms" if window["p50_ms"] is not None else "-"
            self._show(f"version {version}: {window['requests']} requests in 60 s, p50 {p50}, "
                       f"errors {window['errors']}")
        routing = described.get("routing") or {}
        if routing.get("split"):
            self._show(f"split: {routing['split']}")
        if routing.get("shadow"):
            self._show(f"shadow: {routing['shadow']['target']} (agreement {routing['shadow']['agreement_rate']})")
        if described.get("batching"):
            self._show(f"batching: {described['batching']}")
        self._show(f"predict: POST {self.client.predict_url(args.name)}")
        return None

    def _do_export(self, args: argparse.Namespace) -> Any:
        model = self._variable(args.model_var)
        warmup = self._variable(args.warmup) if args.warmup else None
        progress = _Progress(f"exporting {args.model_var} as {args.name}")
        try:
            result = self.client.export(model, args.name, label=args.label, warmup=warmup, wait_seconds=args.wait,
                                        progress=progress)
        except BaseException:
            progress.clear()  # the error below says what happened; a progress line above it would be stale
            raise
        progress.clear()
        self._show(str(result))
        self._show(self._curl(args.name))
        return None

    def _curl(self, name: str) -> str:
        url = self.client.predict_url(name)
        if self.client.connection.kind == "jupyter":
            body = json.dumps({"instances": [example_instance(self.client, name)]})
            return (f"curl -H \"Authorization: token $JUPYTER_TOKEN\" -d '{body}' {url}\n"
                    f"(JUPYTER_TOKEN: this server's token; for a teammate, %tfserve share {name})")
        return (f"This kernel's private engine needs a token for curl: %tfserve share {name} prints a curl "
                f"command for {url}")

    def _do_predict(self, args: argparse.Namespace) -> Any:
        data = self._variable(args.data_var)
        return self.client.predict(args.name, data, version=args.version, label=args.label,
                                   signature_name=args.signature)

    def _do_ab(self, args: argparse.Namespace) -> None:
        client = self.client
        if args.off:
            client.clear_routing(args.name)
            self._show(f"{args.name}: split and shadow off")
        elif args.promote is not None:
            described = client.promote(args.name, args.promote)
            self._show(f"{args.name}: version {args.promote} is stable; split and shadow off "
                       f"(labels {described['labels']})")
        elif args.split:
            described = client.set_routing(args.name, split=parse_split(args.split))
            self._show(f"{args.name}: split {described['routing']['split']}")
        else:
            current = client.model(args.name).get("routing") or {}
            described = client.set_routing(args.name, split=current.get("split"), shadow=args.shadow,
                                           shadow_tolerance=args.tolerance)
            self._show(f"{args.name}: shadow traffic to {args.shadow}; see %tfserve dashboard {args.name}")

    def _do_batching(self, args: argparse.Namespace) -> None:
        if args.settings == ["off"]:
            described = self.client.set_batching(args.name, enabled=False)
        else:
            parameters = {}
            for item in args.settings:
                key, _, value = item.partition("=")
                if not value:
                    raise UsageError(f"batching settings are KEY=VALUE, got {item!r}")
                parameters[key] = _value(value)
            described = self.client.set_batching(args.name, **parameters)
        self._show(f"{args.name}: batching {described['batching'] or 'off'}")

    def _do_log(self, args: argparse.Namespace) -> None:
        if not 0 <= args.rate <= 1:
            raise UsageError(f"--rate is a fraction from 0 to 1, got {args.rate}")
        logging = self.client.set_logging(args.name, args.rate, filename_prefix=args.prefix)["logging"]
        if logging is None:
            self._show(f"{args.name}: request logging off")
        else:
            self._show(f"{args.name}: logging {logging['sampling_rate']:g} of requests to "
                       f"{logging['filename_prefix']}*")

    def _do_replay(self, args: argparse.Namespace) -> Any:
        try:
            result = self.client.replay(args.logs, args.name, version=args.version, label=args.label,
                                        limit=args.limit)
        except FileNotFoundError as error:
            raise UsageError(str(error)) from None
        self._show(result.summary())
        return result

    def _do_deploy(self, args: argparse.Namespace) -> None:
        """The running config through ``jupyter tfserve deploy``, in its own process (it reads TF Serving's protos)."""
        running = self.client.running_config()
        output = Path(args.output_dir).expanduser()
        output.mkdir(parents=True, exist_ok=True)
        config_file = output / "running-models.config"
        config_file.write_text(running["model_config"])
        command = [sys.executable, "-m", "jupyter_tfserve", "deploy", f"--target={args.target}",
                   f"--model_config_file={config_file}", f"--output_dir={output}", f"--name={args.name}"]
        if args.storage_uri:
            command.append(f"--storage_uri={args.storage_uri}")
        if args.upload:
            command.append("--upload")
        for model, split in running["splits"].items():
            command.append(f"--split={model}=" + ",".join(f"{v}:{p}" for v, p in split.items()))
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise UsageError(lines[-1] if lines else f"deploy failed (exit code {done.returncode})")
        self._show("\n".join(part for part in (done.stdout.strip(), done.stderr.strip()) if part))

    def _do_share(self, args: argparse.Namespace) -> Any:
        client = self.client
        if args.revoke:
            record = client.revoke(args.revoke)
            self._show(f"revoked share token {record['id']} for {record['model']}")
            return None
        if args.list:
            rows = [[t["id"], t["model"], ",".join(t["verbs"]), "active" if t["active"] else "inactive",
                     time.strftime("%Y-%m-%d %H:%M", time.localtime(t["expires_at"])), t.get("description", "")]
                    for t in client.tokens()]
            self._show(_table(rows, ["ID", "MODEL", "VERBS", "STATE", "EXPIRES", "DESCRIPTION"]) if rows
                       else "No share tokens.")
            return None
        if not args.name:
            raise UsageError("which model? %tfserve share NAME [--expires 2h] [--verbs predict,metadata]")
        verbs = [verb.strip() for verb in args.verbs.split(",") if verb.strip()]
        expires = parse_duration(args.expires) if args.expires else None
        record = client.share(args.name, verbs=verbs, expires_in_seconds=expires, description=args.description)
        self._show(share_instructions(record, client.connection.kind))
        return None

    def _do_dashboard(self, args: argparse.Namespace) -> Any:
        from . import widgets

        if args.log is not None and not args.name:
            raise UsageError("--log needs a model NAME (the model browser shows no logs)")
        options = {"request_log": args.log} if args.log is not None else {}
        view = widgets.dashboard(self.client, args.name, **options)
        self._displayed.append(view)
        return view

    def _do_monitor(self, args: argparse.Namespace) -> Any:
        from . import widgets

        view = widgets.monitor(self.client, args.name, request_log=args.log)
        self._displayed.append(view)
        return view

    def _do_engine(self, args: argparse.Namespace) -> None:
        from . import private_engine

        if args.stop:
            stopped = private_engine.stop_private_engine()
            self._show("private engine stopped" if stopped else "no private engine was running")
            if self.client.connection.kind == "private":
                self._client = None
            return
        info = self.client.engine()
        where = self.client.connection.server_url or self.client.connection.serving_url
        self._show(f"{info['kind']} engine ({info.get('state')}), pid {info.get('pid')}: {where}; "
                   f"models under {info.get('model_repository_root')}")


EXAMPLE_VALUES = {"DT_STRING": "", "DT_BOOL": False, "DT_FLOAT": 0.0, "DT_DOUBLE": 0.0, "DT_HALF": 0.0,
                  "DT_BFLOAT16": 0.0}
EXAMPLE_MAX_VALUES = 4096  # a bigger input makes a curl line nobody pastes; "[...]" is then the honest answer


def example_instance(client: TFServeClient, name: str) -> Any:
    """One all-zeros instance shaped as the serving signature declares, so the printed curl runs as pasted."""
    try:
        signature = client.metadata(name)["metadata"]["signature_def"]["signature_def"]["serving_default"]
    except (TFServeError, KeyError, TypeError):
        return "..."
    instance: dict[str, Any] = {}
    total = 0
    for key, spec in signature.get("inputs", {}).items():
        dims = [int(dim.get("size", -1)) for dim in spec.get("tensor_shape", {}).get("dim", [])][1:]
        dims = [dim if dim > 0 else 1 for dim in dims]
        value: Any = EXAMPLE_VALUES.get(spec.get("dtype"), 0)
        count = 1
        for dim in reversed(dims):
            count *= dim
            if count > EXAMPLE_MAX_VALUES:
                return "..."
            value = [value] * dim
        total += count
        instance[key] = value
    if total > EXAMPLE_MAX_VALUES or not instance:
        return "..."
    return next(iter(instance.values())) if len(instance) == 1 else instance


def v2_infer_url(predict_url: str, model: str) -> str:
    """The KServe V2 infer URL beside a TF Serving predict URL (same door, same token)."""
    tail = f"/v1/models/{model}:predict"
    return predict_url[: -len(tail)] + f"/v2/models/{model}/infer" if predict_url.endswith(tail) else predict_url


def share_instructions(record: dict, kind: str) -> str:
    """What a teammate needs: the URL, a curl command and a Python snippet, and how to revoke."""
    token, url = record["token"], record["url"]
    expires = time.strftime("%Y-%m-%d %H:%M", time.localtime(record["expires_at"]))
    lines = [
        f"Share token {record['id']} for {record['model']} ({', '.join(record['verbs'])}), expires {expires}.",
        "It is shown once; it grants nothing else. Revoke it with: %tfserve share --revoke " + record["id"],
        "",
        f"URL:   {url}",
        f"KServe V2 (tritonclient, KServe, MLServer): {v2_infer_url(url, record['model'])}",
        "",
        "curl:",
        f"  curl -H 'Authorization: Bearer {token}' -d '{{\"instances\": [...]}}' {url}",
        "",
        "Python:",
        "  import requests",
        f"  response = requests.post({url!r},",
        f"                           headers={{'Authorization': 'Bearer {token}'}},",
        "                           json={'instances': [...]})",
        "  print(response.json()['predictions'])",
    ]
    if kind == "private":
        lines += ["", "Note: this kernel's private engine listens on 127.0.0.1 only; a teammate reaches it only "
                  "from this machine."]
    return "\n".join(lines)


class _Progress:
    """One status line that updates in place in the notebook (a log line elsewhere)."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.started = time.perf_counter()
        self._handle = None
        from IPython.display import Pretty, display

        self._pretty = Pretty
        self._handle = display(Pretty(f"{title} …"), display_id=True)

    def __call__(self, message: str) -> None:
        text = f"{self.title}: {message} ({time.perf_counter() - self.started:.1f} s)"
        if self._handle is not None:
            self._handle.update(self._pretty(text))

    def clear(self) -> None:
        """Empty the line once the work is done: the result (or the error) is printed below it instead."""
        if self._handle is not None:
            self._handle.update({"text/plain": ""}, raw=True)


def load_ipython_extension(ipython) -> None:
    from . import quiet

    quiet.install()
    ipython.register_magics(TFServeMagics(ipython))
