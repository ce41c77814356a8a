"""``jupyter tfserve``: the engine's command line, with tensorflow_model_server's flags.

Flags are accepted in TF Serving's ``--flag=value`` form (and ``--flag value``),
so a deployment's argument list can move between the two servers unchanged.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

log = logging.getLogger("jupyter_tfserve")


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _add_flag(parser: argparse.ArgumentParser, name: str, kind, default, help: str) -> None:
    if kind is bool:
        parser.add_argument(f"--{name}", type=_bool, nargs="?", const=True, default=default, metavar="BOOL",
                            help=f"{help} (default: {str(default).lower()})")
    else:
        parser.add_argument(f"--{name}", type=kind, default=default, help=f"{help} (default: {default!r})")


def serve_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    flag = _add_flag
    flag(parser, "log_level", str, "INFO", "Logging level: DEBUG, INFO, WARNING or ERROR")
    flag(parser, "port", int, 8500, "Port to listen on for the gRPC API")
    flag(parser, "grpc_host", str, "127.0.0.1", "Address the gRPC API binds (0.0.0.0 to expose it)")
    flag(parser, "rest_api_port", int, 8501, "Port to listen on for the HTTP/REST API; 0 disables it")
    flag(parser, "rest_api_host", str, "127.0.0.1", "Address the REST API binds (0.0.0.0 to expose it)")
    flag(parser, "rest_api_timeout_in_ms", int, 30000, "Timeout for REST API calls in milliseconds; 0 for none")
    flag(parser, "max_request_body_bytes", int, 64 * 1024 * 1024,
         "Largest REST request body (413 above it) and gRPC message accepted")
    flag(parser, "model_name", str, "default", "Name of the model (with --model_base_path)")
    flag(parser, "model_base_path", str, "", "Path to export of one model (its numbered version directories)")
    flag(parser, "model_config_file", str, "", "ModelServerConfig text proto listing the models to serve")
    flag(parser, "model_config_file_poll_wait_seconds", int, 0,
         "Interval in seconds between re-reads of --model_config_file; 0 reads it once")
    flag(parser, "file_system_poll_wait_seconds", float, 1,
         "Interval in seconds between polls of model base paths for new versions")
    flag(parser, "enable_batching", bool, False, "Enable server-side batching of predict requests")
    flag(parser, "batching_parameters_file", str, "", "BatchingParameters text proto (implies batching parameters)")
    flag(parser, "monitoring_config_file", str, "", "MonitoringConfig text proto (Prometheus endpoint)")
    flag(parser, "allow_version_labels_for_unavailable_models", bool, False,
         "Allow assigning version labels to versions that are not yet available")
    flag(parser, "enable_model_warmup", bool, True,
         "Replay assets.extra/tf_serving_warmup_requests before a version becomes AVAILABLE")
    flag(parser, "tensorflow_intra_op_parallelism", int, 0,
         "Threads for one op's own parallelism; 0 picks the number of cores")
    flag(parser, "tensorflow_inter_op_parallelism", int, 0,
         "Threads for running independent ops in parallel; 0 picks a small number for this machine")
    flag(parser, "num_load_threads", int, 2, "Threads used to load model versions")
    flag(parser, "require_auth", bool, False,
         "Answer only requests that carry the engine secret (from $TFSERVE_ENGINE_SECRET) or a share token")
    flag(parser, "management_port", int, 0,
         "Port of the management API (load, unload, labels, batching, routing, share tokens); 0 disables it. "
         "It needs $TFSERVE_ENGINE_SECRET and binds --rest_api_host")
    flag(parser, "state_db", str, "",
         "SQLite file keeping routing, per-model batching and share tokens across restarts (default: memory)")
    flag(parser, "model_repository_root", str, "",
         "The management API loads models only from under this folder (and --allowed_model_paths)")
    flag(parser, "allowed_model_paths", str, "", "Comma-separated folders the management API may also load from")
    flag(parser, "share_token_lifetime_seconds", int, 24 * 3600,
         "How long a share token lasts when its creator does not say")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jupyter tfserve",
        description="Serve TensorFlow SavedModels with TF Serving's REST and gRPC APIs.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    serve_parser(commands.add_parser(
        "serve", help="Serve models, like tensorflow_model_server",
        description="Serve models with TF Serving's REST and gRPC APIs; takes tensorflow_model_server's flags.",
    ))
    demo = serve_parser(commands.add_parser(
        "demo", help="Write a demo half_plus_two model and serve it",
        description="Write a demo SavedModel (y = x/2 + 2) under the Jupyter data directory and serve it.",
    ))
    demo.set_defaults(model_name="half_plus_two")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow's Python deprecation notices and one line per request drown the state changes users need.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    from .app import ServeError, run_server

    if args.command == "demo":
        from ..demo import write_demo_model

        args.model_base_path = str(write_demo_model())
        args.model_config_file = ""
        log.info("try: curl -d '{\"instances\": [2.0, 3.0, 4.0]}' http://%s:%d/v1/models/%s:predict",
                 args.rest_api_host, args.rest_api_port, args.model_name)
    try:
        run_server(args)
    except ServeError as error:
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
