"""The engine process: an engine behind a REST and a gRPC front door.

Ports open before any model has loaded (TF Serving waits for every model and
exits if one fails; we serve what loaded and report the rest in status).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
from pathlib import Path

import tornado.httpserver
import tornado.netutil

from ..engine.batching_options import BatchingOptions
from ..engine.codecs.limits import DecodeLimits
from ..engine.config import ConfigError, ModelServerConfig, read_model_server_config, single_model_config
from ..engine.engine import Engine, EngineOptions
from ..engine.loader import default_session_options
from ..engine.protos import BatchingParameters, MonitoringConfig, parse_text
from ..engine.source import set_version_trust
from ..engine.storage import is_remote
from ..launcher import MANAGEMENT_HOST, EnginePorts
from ..wire import ENGINE_SECRET_ENV
from .auth import Authenticator
from .control import Control, PathPolicy, allowed_model_paths
from .front_processes import FrontProcesses, reserved_sockets
from .grpc_server import ChannelArgumentError, make_grpc_server, parse_channel_arguments
from .http_front import IDLE_CONNECTION_SECONDS, FrontDoor
from .management import make_management_app
from .rest import make_app
from .state import StateStore
from .supervision import add_identity_route, add_management_routes, read_engine_secret, report_ports

log = logging.getLogger(__name__)


GC_GEN0_THRESHOLD = 100_000


class ServeError(Exception):
    """The server cannot start; the message says why (and names the file at fault)."""


def initial_config(args: argparse.Namespace) -> ModelServerConfig:
    if args.model_config_file and args.model_base_path:
        raise ServeError("give either --model_config_file or --model_base_path, not both")
    if args.model_config_file:
        try:
            return read_model_server_config(args.model_config_file)
        except ConfigError as error:
            raise ServeError(str(error)) from None
    if args.model_base_path:
        base = args.model_base_path if is_remote(args.model_base_path) else os.path.abspath(args.model_base_path)
        return single_model_config(args.model_name, base)
    log.warning("no --model_base_path or --model_config_file: serving no models until a config is loaded")
    return ModelServerConfig()


def _read_text_proto(cls, path: str, what: str):
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ServeError(f"cannot read {what} file {path}: {error.strerror}") from None
    try:
        return parse_text(cls, text, path)
    except ValueError as error:
        raise ServeError(str(error)) from None


def engine_options(args: argparse.Namespace) -> EngineOptions:
    batching = BatchingOptions()
    if args.batching_parameters_file:
        batching = BatchingOptions.from_proto(
            _read_text_proto(BatchingParameters, args.batching_parameters_file, "batching parameters")
        )
        try:
            batching.validate()
        except Exception as error:
            raise ServeError(f"invalid batching parameters in {args.batching_parameters_file}: {error}") from None
    return EngineOptions(
        session=default_session_options(*session_parallelism(args)),
        enable_batching=bool(args.enable_batching),
        batching=batching,
        enable_model_warmup=bool(args.enable_model_warmup),
        allow_version_labels_for_unavailable_models=bool(args.allow_version_labels_for_unavailable_models),
        num_load_threads=args.num_load_threads,
        # --use_tflite_model is the flag's old name in TF Serving (cli.py warns when it is used).
        prefer_tflite_model=bool(args.prefer_tflite_model or args.use_tflite_model),
        enable_signature_method_name_check=bool(args.enable_signature_method_name_check),
        max_remote_version_bytes=args.max_remote_version_bytes,
    )


def session_parallelism(args: argparse.Namespace) -> tuple[int, int]:
    """(intra-op, inter-op) threads from the three flags, by TF Serving's rule (server.cc).

    Either op-level flag set: both come from those two flags; neither: both are
    --tensorflow_session_parallelism. 0 means pick for this machine. All three set is an error there
    and here.
    """
    intra, inter = args.tensorflow_intra_op_parallelism, args.tensorflow_inter_op_parallelism
    both = args.tensorflow_session_parallelism
    if intra > 0 and inter > 0 and both > 0:
        raise ServeError("Either configure --tensorflow_session_parallelism or (--tensorflow_intra_op_parallelism, "
                         "--tensorflow_inter_op_parallelism) separately. You cannot configure all.")
    if intra > 0 or inter > 0:
        return intra, inter
    return both, both


def grpc_listen_addresses(args: argparse.Namespace) -> list[str]:
    """Where gRPC listens: --grpc_host:--port (0 turns it off) and ``unix:--grpc_socket_path``.

    As in TF Serving (server.cc), the socket is bound with gRPC's own ``unix:`` listener, which
    replaces a socket file left at the path (even one another server holds) but fails on any
    other kind of file there.
    """
    addresses = []
    if args.port:
        addresses.append(f"{args.grpc_host}:{args.port}")
    if args.grpc_socket_path:
        addresses.append(f"unix:{args.grpc_socket_path}")
    return addresses


PICKABLE_PORTS = ("rest", "grpc", "management")


def picked_ports(args: argparse.Namespace) -> frozenset[str]:
    """The ports --pick_ports leaves to the system (bound as port 0, then reported)."""
    names = {name.strip() for name in args.pick_ports.split(",") if name.strip()}
    unknown = names.difference(PICKABLE_PORTS)
    if unknown:
        raise ServeError(f"--pick_ports takes {', '.join(PICKABLE_PORTS)}; got {', '.join(sorted(unknown))}")
    return frozenset(names)


def _bind(port: int, address: str) -> list:
    """Bound, listening sockets (port 0: the system picks one, so nothing can hold it before us)."""
    try:
        return tornado.netutil.bind_sockets(port, address=address)
    except OSError as error:
        raise ServeError(f"cannot listen on {address}:{port}: {error.strerror or error}") from None


def metrics_path(args: argparse.Namespace) -> str | None:
    if not args.monitoring_config_file:
        return None
    config = _read_text_proto(MonitoringConfig, args.monitoring_config_file, "monitoring config")
    if not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or "/monitoring/prometheus/metrics"


class EngineServer:
    """Runs one engine with its front doors and pollers inside the current event loop."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.config = initial_config(args)
        try:
            self._grpc_channel_arguments = parse_channel_arguments(args.grpc_channel_arguments)
        except ChannelArgumentError as error:
            raise ServeError(str(error)) from None
        if args.rest_http_layer not in ("httptools", "tornado"):
            raise ServeError(f"--rest_http_layer must be httptools or tornado, not {args.rest_http_layer!r}")
        if args.rest_front_processes < 0 or (args.rest_front_processes and args.rest_http_layer != "httptools"):
            raise ServeError("--rest_front_processes must be 0 or more, and needs --rest_http_layer=httptools")
        self.engine = Engine(engine_options(args))
        self.metrics_path = metrics_path(args)
        self.decode_limits = DecodeLimits(max_bytes=args.max_decoded_request_bytes,
                                          floor_bytes=min(args.decoded_request_floor_bytes,
                                                          args.max_decoded_request_bytes))
        self._picked = picked_ports(args)
        secret = self._secret = read_engine_secret(args)
        if (args.management_port or "management" in self._picked) and not secret:
            raise ServeError(f"--management_port needs the engine secret (--engine_secret_fd or ${ENGINE_SECRET_ENV})")
        self.store = StateStore(args.state_db or None)
        self.auth = Authenticator(self.store, secret, bool(args.require_auth),
                                  default_lifetime_seconds=args.share_token_lifetime_seconds)
        allowed = allowed_model_paths(args)
        self.control = Control(
            self.engine, self.store, self.auth, PathPolicy(args.model_repository_root or None, allowed),
            args.model_config_file or None, on_config_written=self._config_written,
        )
        set_version_trust(self.control.paths.version_trust())
        self._http: tornado.httpserver.HTTPServer | FrontDoor | None = None
        self._front_processes: FrontProcesses | None = None
        self._reserved: list = []  # the REST port's sockets, held while front-door processes listen on it
        self._decoders = None  # the REST app's decoding workers, stopped with it
        self._management: tornado.httpserver.HTTPServer | None = None
        self._grpc = None
        self._tasks: list[asyncio.Task] = []
        self._config_text: str | None = None

    async def start(self) -> None:
        args = self.args
        bound = {"rest_port": 0, "grpc_port": 0, "management_port": 0}
        if args.rest_api_port or "rest" in self._picked:
            app = make_app(self.engine, metrics_path=self.metrics_path, timeout_ms=args.rest_api_timeout_in_ms,
                           max_body_bytes=args.max_request_body_bytes, auth=self.auth,
                           decode_limits=self.decode_limits, decode_workers=args.decode_workers,
                           control=self.control if args.model_repository_root else None)
            add_identity_route(app, self._secret)
            self._decoders = app.settings.get("decoders")
            port = 0 if "rest" in self._picked else args.rest_api_port
            if args.rest_front_processes:
                sockets = await self._start_front_processes(app, port)
            elif args.rest_http_layer == "tornado":
                sockets = _bind(port, args.rest_api_host)
                self._http = tornado.httpserver.HTTPServer(
                    app, max_body_size=args.max_request_body_bytes + 1, xheaders=False, idle_connection_timeout=300
                )
                self._http.add_sockets(sockets)
            else:
                sockets = _bind(port, args.rest_api_host)
                self._http = FrontDoor(app, max_body_size=args.max_request_body_bytes + 1,
                                       direct=app.settings["direct_model_calls"] if args.rest_direct_calls else None)
                await self._http.add_sockets(sockets)
            bound["rest_port"] = sockets[0].getsockname()[1]
            log.info("REST API at http://%s:%d/v1/models%s", args.rest_api_host, bound["rest_port"],
                     f" (metrics at {self.metrics_path})" if self.metrics_path else "")
        grpc_addresses = grpc_listen_addresses(args)
        if "grpc" in self._picked:
            grpc_addresses = [f"{args.grpc_host}:0", *(a for a in grpc_addresses if a.startswith("unix:"))]
        if grpc_addresses:
            self._grpc = make_grpc_server(
                self.engine, self.auth, channel_arguments=self._grpc_channel_arguments,
                response_tensor_content=bool(args.grpc_response_tensor_content
                                             or args.enable_serialization_as_tensor_content),
                enable_profiler=bool(args.enable_profiler), paths=self.control.paths,
                decode_limits=self.decode_limits, control=self.control if args.model_repository_root else None,
            )
            listening = []
            for address in grpc_addresses:
                try:
                    port = self._grpc.add_insecure_port(address)
                except RuntimeError as error:
                    raise ServeError(f"cannot listen on {address}: {error}") from None
                if not port:
                    raise ServeError(f"cannot listen on {address}")
                if not address.startswith("unix:"):
                    bound["grpc_port"] = port
                    address = f"{address.rpartition(':')[0]}:{port}"
                listening.append(address)
            await self._grpc.start()
            for address in listening:
                log.info("gRPC API at %s", address)
        if args.management_port or "management" in self._picked:
            # On the loopback interface only, whatever --rest_api_host says: sharing REST on 0.0.0.0
            # must not expose the API that loads models and mints tokens.
            management_app = make_management_app(self.control, self.auth)
            add_management_routes(management_app, self._secret, self.auth)
            self._management = tornado.httpserver.HTTPServer(management_app)
            sockets = _bind(0 if "management" in self._picked else args.management_port, MANAGEMENT_HOST)
            self._management.add_sockets(sockets)
            bound["management_port"] = sockets[0].getsockname()[1]
            log.info("management API at http://%s:%d/api/", MANAGEMENT_HOST, bound["management_port"])
        report_ports(args.report_ports_fd, EnginePorts(pid=os.getpid(), **bound))
        self.control.restore()
        await self.engine.start(self.config)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.engine.manager.run_polling(args.file_system_poll_wait_seconds)))
        if args.model_config_file and args.model_config_file_poll_wait_seconds > 0:
            self._config_text = Path(args.model_config_file).read_text()
            self._tasks.append(loop.create_task(self._poll_config_file()))

    async def _start_front_processes(self, app: tornado.web.Application, port: int) -> list:
        """The REST port reserved here and listened on by front-door processes; this loop serves what they hand over."""
        args = self.args
        try:
            self._reserved = sockets = reserved_sockets(port, args.rest_api_host)
        except OSError as error:
            raise ServeError(f"cannot listen on {args.rest_api_host}:{port}: {error.strerror or error}") from None
        direct = app.settings["direct_model_calls"]
        self._http = FrontDoor(app, max_body_size=args.max_request_body_bytes + 1,
                               direct=direct if args.rest_direct_calls else None)
        self._front_processes = FrontProcesses(
            direct.settings, self._http, args.rest_front_processes, secret=self._secret,
            require_auth=bool(args.require_auth), max_body_bytes=direct.max_body_bytes,
            reserved_paths=direct.reserved_paths, idle_seconds=IDLE_CONNECTION_SECONDS)
        try:
            await self._front_processes.start(sockets)
        except RuntimeError as error:
            raise ServeError(str(error)) from None
        return sockets

    async def _poll_config_file(self) -> None:
        path = Path(self.args.model_config_file)
        while True:
            await asyncio.sleep(self.args.model_config_file_poll_wait_seconds)
            try:
                text = path.read_text()
            except OSError as error:
                log.warning("cannot re-read model config file %s: %s; keeping the current config", path, error)
                continue
            if text == self._config_text:
                continue
            try:
                config = read_model_server_config(path)
            except ConfigError as error:
                log.error("%s; keeping the current config", error)
                self._config_text = text
                continue
            self._config_text = text
            log.info("model config file %s changed; applying it", path)
            await self.engine.manager.set_config(config)

    def _config_written(self, text: str) -> None:
        """The management API rewrote the config file: the poller must not re-apply our own change."""
        self._config_text = text

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._management is not None:
            self._management.stop()
        if self._front_processes is not None:
            await self._front_processes.stop()
        for sock in self._reserved:
            sock.close()
        if self._http is not None:
            self._http.stop()
            if self._decoders is not None:
                await self._decoders.aclose()
        if self._grpc is not None:
            await self._grpc.stop(grace=2)
        await self.engine.stop()
        self.store.close()


def run_server(args: argparse.Namespace) -> None:
    """Serve until SIGINT or SIGTERM."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    async def main() -> None:
        server = EngineServer(args)
        # TensorFlow's import leaves ~300k tracked objects, and each loaded graph adds more: a
        # full collection walking them takes 100-300 ms, a latency spike for every request in
        # flight. Freezing the import-time heap takes it out of the collector's reach, and a
        # larger first-generation threshold makes collections (JSON requests allocate ~1000
        # lists each) rarer; cyclic garbage is still collected.
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stop.set)
        await server.start()
        await stop.wait()
        log.info("shutting down")
        await server.stop()

    asyncio.run(main())
