"""``jupyter tfserve``: the engine's command line, with tensorflow_model_server's flags.

Flags are accepted in TF Serving's ``--flag=value`` form (and ``--flag value``),
so a deployment's argument list can move between the two servers unchanged. Every
flag of TF Serving's ``main.cc`` is accepted; the ones that do not apply to this
engine are listed under their own heading in ``--help`` and logged when set, so no
flag changes behaviour silently.
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


Container = argparse.ArgumentParser | argparse._ArgumentGroup  # what add_argument can be called on


def _add_flag(parser: Container, name: str, kind, default, help: str) -> None:
    if kind is bool:
        parser.add_argument(f"--{name}", type=_bool, nargs="?", const=True, default=default, metavar="BOOL",
                            help=f"{help} (default: {str(default).lower()})")
    else:
        parser.add_argument(f"--{name}", type=kind, default=default, help=f"{help} (default: {default!r})")


# tensorflow_model_server flags (model_servers/main.cc) that do not apply to this engine: accepted so a
# deployment's argument list moves over unchanged, listed in --help with what they do here, and
# warned about once when given a value other than the default. (name, type, default, effect here)
IGNORED_FLAGS: tuple[tuple[str, type, object, str], ...] = (
    ("grpc_max_threads", int, 0,
     "TF Serving: most gRPC server threads (4 x cores). Here gRPC runs on the asyncio event loop: no effect"),
    ("rest_api_num_threads", int, 0,
     "TF Serving: REST threads (4 x cores). Here REST runs on the event loop and models on their own "
     "threads: no effect"),
    ("rest_api_enable_cors_support", bool, False, "TF Serving: send CORS headers. Not sent here: no effect"),
    ("enable_per_model_batching_parameters", bool, False,
     "TF Serving: read batching_params.pbtxt from each SavedModel. Not read here (set per-model batching "
     "with the management API): no effect"),
    ("num_unload_threads", int, 0, "TF Serving: threads that unload versions. No effect here"),
    ("max_num_load_retries", int, 5,
     "TF Serving: retries of a failed load. Here a failed load is retried with backoff (1 s to 60 s) until "
     "it loads or its files change: no effect"),
    ("load_retry_interval_micros", int, 60_000_000,
     "TF Serving: wait between load retries. Here the backoff above applies: no effect"),
    ("flush_filesystem_caches", bool, True, "TF Serving: flush filesystem caches after loads. No effect here"),
    ("tensorflow_session_config_file", str, "",
     "TF Serving: a ConfigProto text file for sessions. Not read here (the parallelism flags apply): no effect"),
    ("platform_config_file", str, "",
     "TF Serving: a PlatformConfigMap replacing the TensorFlow platform's settings. Not read here: no effect"),
    ("per_process_gpu_memory_fraction", float, 0.0,
     "TF Serving: share of GPU memory to take. TensorFlow's own allocation is kept: no effect"),
    ("saved_model_tags", str, "serve",
     "TF Serving: tags of the MetaGraph to load. The 'serve' MetaGraph is loaded whatever is given"),
    ("num_request_iterations_for_warmup", int, 0,
     "TF Serving: times each warmup record is replayed. Each record is replayed once here"),
    ("remove_unused_fields_from_bundle_metagraph", bool, True,
     "TF Serving: drop unused MetaGraphDef fields to save memory. No effect here"),
    ("num_tflite_pools", int, 0, "TF Serving: TFLite interpreter pools per model (one per core). No effect here"),
    ("num_tflite_interpreters_per_pool", int, 1, "TF Serving: TFLite interpreters per pool. No effect here"),
    ("xla_cpu_compilation_enabled", bool, False,
     "TF Serving: allow XLA:CPU JIT (TF Serving disables XLA JIT unless this or the GPU flag is set). "
     "Here TensorFlow's own XLA settings are left as they are, whatever is given"),
    ("xla_gpu_compilation_enabled", bool, False,
     "TF Serving: allow XLA:CPU and XLA:GPU JIT. As --xla_cpu_compilation_enabled: no effect"),
    ("thread_pool_factory_config_file", str, "",
     "TF Serving: a ThreadPoolConfig for request thread pools. Not read here: no effect"),
    ("mixed_precision", str, "", "TF Serving: mixed-precision mode (bfloat16). Models run as saved here: no effect"),
    ("skip_initialize_tpu", bool, False, "TF Serving: skip TPU system initialization. No TPUs here: no effect"),
    ("enable_grpc_healthcheck_service", bool, False,
     "TF Serving: the grpc.health.v1 service. Not offered here (use REST /healthz and /readyz): no effect"),
)

# Flags asking for a secure gRPC channel: serving plaintext instead would be worse than not starting.
# (name, type, default, effect here)
REFUSED_FLAGS: tuple[tuple[str, type, object, str], ...] = (
    ("use_alts_credentials", bool, False,
     "TF Serving: serve gRPC with Google ALTS credentials. Not supported: the server refuses to start when set"),
    ("ssl_config_file", str, "",
     "TF Serving: an SSLConfig text file for TLS on gRPC. Not supported: the server refuses to start when set"),
)


def serve_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    flag = _add_flag
    flag(parser, "log_level", str, "INFO", "Logging level: DEBUG, INFO, WARNING or ERROR")
    flag(parser, "version", bool, False, "Print the versions of jupyter-tfserve and TensorFlow and exit")
    flag(parser, "port", int, 8500, "Port to listen on for the gRPC API; 0 turns the TCP port off")
    flag(parser, "grpc_host", str, "127.0.0.1", "Address the gRPC API binds (0.0.0.0 to expose it)")
    flag(parser, "rest_api_port", int, 8501, "Port to listen on for the HTTP/REST API; 0 disables it")
    flag(parser, "rest_api_host", str, "127.0.0.1", "Address the REST API binds (0.0.0.0 to expose it)")
    flag(parser, "rest_api_timeout_in_ms", int, 30000, "Timeout for REST API calls in milliseconds; 0 for none")
    flag(parser, "max_request_body_bytes", int, 64 * 1024 * 1024,
         "Largest REST request body (413 above it); gRPC has its own limit, see --grpc_channel_arguments")
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
    flag(parser, "tensorflow_session_parallelism", int, 0,
         "Both intra- and inter-op threads, used when neither of those two flags is set (TF Serving's rule; "
         "setting all three is an error); 0 picks for this machine")
    flag(parser, "num_load_threads", int, 2, "Threads used to load model versions")
    flag(parser, "prefer_tflite_model", bool, False,
         "Serve <version>/model.tflite when a version has one, else its SavedModel")
    flag(parser, "use_tflite_model", bool, False,
         "TF Serving's old name for --prefer_tflite_model; sets it (with a warning)")
    flag(parser, "enable_signature_method_name_check", bool, False,
         "Run Classify and Regress only on signatures whose method_name says so (TF Serving's default: off, "
         "since TF2 exports mark every signature predict)")

    grpc = parser.add_argument_group("gRPC")
    flag(grpc, "grpc_socket_path", str, "",
         "Also listen for gRPC on this Unix socket (unix:PATH), as TF Serving does; a socket file already at "
         "PATH is replaced, any other file there stops the server")
    flag(grpc, "grpc_channel_arguments", str, "",
         "Comma-separated key=value gRPC server arguments, e.g. grpc.max_connection_age_ms=2000; values that "
         "are int32 numbers are passed as integers, others as strings, and a later key overrides an earlier "
         "one. The largest message accepted is TF Serving's, 2 GiB - 1, unless grpc.max_receive_message_length "
         "says otherwise (larger messages get RESOURCE_EXHAUSTED)")
    flag(grpc, "grpc_response_tensor_content", bool, False,
         "Speed option: answer Predict with each output's bytes in tensor_content instead of the typed fields "
         "(float_val, int_val, ...) TF Serving fills by default. Only clients that read outputs with "
         "tf.make_ndarray (not .float_val and the like) can use it")
    flag(grpc, "enable_serialization_as_tensor_content", bool, False,
         "TF Serving's name for --grpc_response_tensor_content")
    flag(grpc, "enable_profiler", bool, True,
         "TensorFlow's ProfilerService on the gRPC port (TensorBoard's capture profile); it traces this "
         "process and writes where the caller says, so it answers the engine's owner only")

    engine = parser.add_argument_group("this engine's own flags (not in TF Serving)")
    flag(engine, "require_auth", bool, False,
         "Answer only requests that carry the engine secret (from --engine_secret_fd or $TFSERVE_ENGINE_SECRET) "
         "or a share token")
    flag(engine, "management_port", int, 0,
         "Port of the management API (load, unload, labels, batching, routing, share tokens); 0 disables it. "
         "It needs the engine secret and binds 127.0.0.1 only, whatever --rest_api_host says")
    flag(engine, "state_db", str, "",
         "SQLite file keeping routing, per-model batching and share tokens across restarts (default: memory)")
    flag(engine, "model_repository_root", str, "",
         "The management API loads models only from under this folder (and --allowed_model_paths)")
    flag(engine, "allowed_model_paths", str, "",
         "Comma-separated folders the management API may also load from; the value is split at every comma, so "
         "a folder whose name holds one goes in --allowed_model_path")
    engine.add_argument("--allowed_model_path", action="append", default=None, metavar="PATH",
                        help="One more folder the management API may load from, taken as written (commas and "
                        "spaces included); repeat the flag for each folder")
    flag(engine, "share_token_lifetime_seconds", int, 24 * 3600,
         "How long a share token lasts when its creator does not say")
    flag(engine, "engine_secret_fd", int, -1,
         "Read the engine secret from this inherited file descriptor (one line; closed once read) instead of "
         "$TFSERVE_ENGINE_SECRET: a model's ops can read the environment, not a closed pipe")
    flag(engine, "pick_ports", str, "",
         "Comma-separated, from rest, grpc, management: let the system choose these ports as they are bound "
         "(their port flags are ignored), so no other process can hold them first; see --report_ports_fd")
    flag(engine, "report_ports_fd", int, -1,
         "Once the ports are bound, write them to this inherited file descriptor as one JSON line "
         "({\"pid\", \"rest_port\", \"grpc_port\", \"management_port\"}) and close it")
    flag(engine, "max_decoded_request_bytes", int, 4 << 30,
         "Most bytes of tensors one request may decode to (REST and gRPC), checked before they are allocated; "
         "a request over it gets RESOURCE_EXHAUSTED (HTTP 429)")
    flag(engine, "max_remote_version_bytes", int, 64 << 30,
         "Most bytes one version of a model in object storage (s3://, gs://, hdfs://) may copy into the local "
         "cache, checked from the bucket's listing before copying and counted while copying; a version over it "
         "(or larger than the cache folder's free space) is not served and says so in its status; 0 for no bound")
    flag(engine, "decoded_request_floor_bytes", int, 64 << 20,
         "Bytes of tensors any request may decode to, however small it is (a zeros tensor sent as its shape "
         "alone); beyond this, a request decodes to at most 8 times its size on the wire")
    flag(engine, "rest_http_layer", str, "httptools",
         "What reads REST requests and writes answers: httptools (llhttp's C parser on an asyncio protocol) "
         "or tornado (tornado's own HTTP/1.1 connection); the handlers and answers are the same")
    flag(engine, "rest_direct_calls", bool, True,
         "On the httptools layer, run an admitted :predict/:classify/:regress with a body under 256 KiB without "
         "building a tornado RequestHandler (the same answer, less CPU); false sends every request through tornado")
    flag(engine, "rest_front_processes", int, 0,
         "Processes that accept REST connections on the REST port beside the engine (SO_REUSEPORT), parse HTTP "
         "and JSON for the owner's :predict/:classify/:regress calls and hand the decoded tensors to the engine, "
         "which batches and runs them; they hand any other request, with its connection, to the engine. For "
         "machines with cores to spare; 0 (the default): the engine's own event loop accepts every connection")
    flag(engine, "decode_workers", int, 2,
         "Processes that parse and decode REST :predict bodies of 256 KiB and more, so that the event loop "
         "never waits for them; 0 decodes every body in the engine's own event loop")

    ignored = parser.add_argument_group(
        "accepted for compatibility with tensorflow_model_server",
        "These do not apply to this engine; each logs a warning when set to a value other than its default.")
    for name, kind, default, effect in (*IGNORED_FLAGS, *REFUSED_FLAGS):
        flag(ignored, name, kind, default, effect)
    return parser


def _flag_value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def warn_ignored_flags(args: argparse.Namespace) -> None:
    """One warning per flag given a value that would change what TF Serving does but not what we do."""
    for name, _kind, default, effect in IGNORED_FLAGS:
        value = getattr(args, name)
        if value != default:
            log.warning("--%s=%s is accepted for compatibility and ignored: %s", name, _flag_value(value), effect)
    if args.use_tflite_model:
        log.warning("--use_tflite_model is TF Serving's old name for --prefer_tflite_model: serving model.tflite "
                    "where a version has one, else its SavedModel")


def refused_flags(args: argparse.Namespace) -> list[str]:
    """Why the server must not start: the flags asking for gRPC security this engine cannot give."""
    return [f"--{name}={_flag_value(getattr(args, name))}: secure gRPC channels are not supported by this "
            "engine, and serving gRPC without the credentials asked for would be worse than not starting"
            for name, _kind, default, _effect in REFUSED_FLAGS if getattr(args, name) != default]


def version_text() -> str:
    """What --version prints: this package's version and the TensorFlow it serves with (TF Serving prints
    its own version and TensorFlow's)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return f"jupyter-tfserve: {installed('jupyter-tfserve')}\nTensorFlow Library: {installed('tensorflow')}\n"


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
    warmup = commands.add_parser(
        "warmup-from-log", help="Write logged requests as a version's warmup file",
        description="Write up to 1000 logged requests (request log TFRecords) as "
                    "VERSION_DIR/assets.extra/tf_serving_warmup_requests, replayed when the version loads.",
    )
    warmup.add_argument("logs", nargs="+", help="request log files or globs (PREFIX*)")
    warmup.add_argument("--saved_model_dir", required=True, help="the version directory to warm up")
    warmup.add_argument("--model_name", default=None, help="only records logged for this model")
    warmup.add_argument("--max_records", type=int, default=1000)
    from ..deploy.arguments import add_arguments as deploy_arguments

    deploy_arguments(commands.add_parser(
        "deploy", help="Write Kubernetes or KServe manifests for the served models",
        description="Write manifests (--target=kubernetes, kserve, kserve-runtime) to --output_dir; "
                    "prints what does not carry over. See deploy/README.md.",
    ))
    return parser


def _warmup_from_log(args: argparse.Namespace) -> int:
    from ..engine.request_log_warmup import write_warmup_from_logs

    try:
        count = write_warmup_from_logs(args.logs, args.saved_model_dir, model=args.model_name,
                                       max_records=args.max_records)
    except (OSError, ValueError) as error:
        sys.stderr.write(f"warmup-from-log: {error}\n")
        return 1
    sys.stdout.write(f"wrote {count} warmup requests to {args.saved_model_dir}/assets.extra/"
                     "tf_serving_warmup_requests\n")
    return 0


def _skip_optional_imports_of_tensorflow() -> None:
    """Keep scikit-learn out of the engine: TensorFlow's import pulls in Keras, whose sklearn wrapper
    imports scikit-learn (and SciPy) when it is installed, about a quarter of the engine's start-up here.
    Keras treats it as absent (``try: import sklearn except ImportError``), and a SavedModel cannot
    call it; a restarted engine is back serving that much sooner."""
    sys.modules.setdefault("sklearn", None)  # type: ignore[assignment]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _skip_optional_imports_of_tensorflow()
    if args.command == "warmup-from-log":
        return _warmup_from_log(args)
    if args.command == "deploy":
        from ..deploy.cli import run as deploy

        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        return deploy(args)
    if args.version:
        sys.stdout.write(version_text())
        return 0
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow's Python deprecation notices and one line per request drown the state changes users need.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    refused = refused_flags(args)
    if refused:
        for reason in refused:
            log.error("%s", reason)
        return 1
    warn_ignored_flags(args)
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
