"""The Jupyter server extension: a supervised engine behind the Jupyter server's own URL."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Dict, Enum, Int, List, Unicode, default

from ..launcher import EngineSettings, private_directory, write_private_text
from ..launcher import engine_environment as scrubbed_environment
from .engine_client import EngineClient
from .handlers import (
    AcceptedTokens,
    DeployHandler,
    EngineStatusHandler,
    ManagementProxyHandler,
    ProxyHandler,
    V2ProxyHandler,
)
from .supervisor import EngineSupervisor

log = logging.getLogger(__name__)

EMPTY_MODEL_CONFIG = "model_config_list {\n}\n"
PROXY_TIMEOUT_SECONDS = 300
DEMO_MODEL_NAME = "half_plus_two"
# Run in a child: reading and writing TF Serving's config proto loads its generated code, which the
# Jupyter server process does without.
_ADD_DEMO_MODEL = """
import sys
from jupyter_tfserve.engine.config import read_model_server_config, write_model_server_config
path, name, base = sys.argv[1:4]
config = read_model_server_config(path)
if not any(model.name == name for model in config.model_config_list.config):
    model = config.model_config_list.config.add()
    model.name, model.base_path, model.model_platform = name, base, "tensorflow"
    write_model_server_config(config, path)
"""


class TFServeExtension(ExtensionApp):
    """Runs the jupyter-tfserve engine for this Jupyter server and exposes it under ``{base_url}tfserve/``."""

    name = "jupyter_tfserve"

    state_dir = Unicode(
        help="Where the engine's model config (TF Serving text format) and logs are kept. "
        "Default: <jupyter data dir>/tfserve.",
    ).tag(config=True)

    model_repository_root = Unicode(
        help="Root folder of the model repository; models are loaded only from under it. "
        "Default: <state_dir>/models.",
    ).tag(config=True)

    engine_host = Unicode(
        "127.0.0.1", help="Address the engine binds for REST and gRPC (its management API stays on 127.0.0.1)."
    ).tag(config=True)
    engine_rest_port = Int(
        0, help="The engine's REST port; 0: the engine binds a free one (a new one at each restart)."
    ).tag(config=True)
    engine_grpc_port = Int(
        0, help="The engine's gRPC port; 0: the engine binds a free one (a new one at each restart)."
    ).tag(config=True)
    start_engine = Enum(
        ["startup", "first_use"], "startup",
        help="Start the engine when the Jupyter server starts, or on the first request to tfserve/.",
    ).tag(config=True)
    max_request_body_bytes = Int(
        64 * 1024 * 1024, help="Largest request body the engine accepts (413 above it)."
    ).tag(config=True)
    engine_args = List(
        Unicode(), help="Extra tensorflow_model_server-style flags for the engine, e.g. ['--enable_batching']."
    ).tag(config=True)
    engine_startup_timeout = Int(120, help="Seconds to wait for the engine to answer after a start.").tag(config=True)
    allowed_model_paths = List(
        Unicode(), help="Folders outside the model repository root that the management API may load models from."
    ).tag(config=True)
    default_batching = Dict(
        help="Batching for every model unless set per model, as BatchingParameters fields, e.g. "
        "{'max_batch_size': 32, 'batch_timeout_micros': 2000}. Empty: no batching unless set per model.",
    ).tag(config=True)
    demo_model = Bool(
        False, help="Serve a demo model, half_plus_two (y = x/2 + 2), written into the model repository on first "
        "start (no download).",
    ).tag(config=True)
    share_token_lifetime_seconds = Int(
        24 * 3600, help="How long a share token lasts when its creator does not say (seconds)."
    ).tag(config=True)
    engine_environment = Dict(
        value_trait=Unicode(),
        help="Variables set in the engine's environment. The engine does not inherit the Jupyter server's "
        "environment (a SavedModel's ops could read JUPYTERHUB_API_TOKEN and the like): it keeps only PATH, HOME, "
        "locale, temporary-folder, Python, TensorFlow/CUDA/threading, Jupyter/XDG path, proxy, CA-bundle and "
        "object-storage (AWS_*, GOOGLE_*, AZURE_*, ...) variables. Name here anything else a model or a "
        "${VAR} in the model config needs.",
    ).tag(config=True)

    @default("state_dir")
    def _default_state_dir(self) -> str:
        return str(Path(jupyter_data_dir()) / "tfserve")

    @default("model_repository_root")
    def _default_model_repository_root(self) -> str:
        return str(Path(self.state_dir) / "models")

    def initialize_settings(self) -> None:
        # Kernels inherit this server's environment: TensorFlow's C++ start-up chatter stays out of
        # notebooks unless JUPYTER_TFSERVE_TF_LOGS=1 (the kernel side drops what this cannot reach).
        if os.environ.get("JUPYTER_TFSERVE_TF_LOGS", "").strip().lower() not in ("1", "true", "yes", "on"):
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        # Owner-only: the folder holds the engine's log, the share-token store and the model config.
        state = private_directory(Path(self.state_dir))
        Path(self.model_repository_root).mkdir(parents=True, exist_ok=True)
        config_file = state / "models.config"
        if not config_file.exists():
            write_private_text(config_file, EMPTY_MODEL_CONFIG)
        extra_args = [f"--max_request_body_bytes={self.max_request_body_bytes}",
                      f"--share_token_lifetime_seconds={self.share_token_lifetime_seconds}"]
        if self.default_batching:
            extra_args += ["--enable_batching", f"--batching_parameters_file={self._write_batching_file(state)}"]
        self.supervisor = EngineSupervisor(EngineSettings(
            config_file=config_file,
            host=self.engine_host,
            rest_port=self.engine_rest_port,
            grpc_port=self.engine_grpc_port,
            state_db=state / "state.sqlite",
            model_repository_root=Path(self.model_repository_root),
            allowed_model_paths=list(self.allowed_model_paths),
            extra_args=[*extra_args, *self.engine_args],
            log_file=state / "engine.log",
            startup_timeout=self.engine_startup_timeout,
            extra_env=dict(self.engine_environment),
        ))
        self._start_task: asyncio.Task | None = None
        # Keep-alive connections to the engine for every forwarded request (engine_client.py).
        self.engine_client = EngineClient(timeout=PROXY_TIMEOUT_SECONDS)
        self.settings.update({"tfserve_supervisor": self.supervisor, "tfserve_ensure_engine": self.ensure_engine,
                              "tfserve_engine_client": self.engine_client,
                              "tfserve_max_request_body_bytes": self.max_request_body_bytes,
                              "tfserve_accepted_tokens": AcceptedTokens()})

    async def _run_child(self, what: str, *args: str) -> None:
        """``python -c`` with the engine's scrubbed environment; failures are logged, not raised."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env=scrubbed_environment(extra=self.engine_environment),
        )
        _, errors = await process.communicate()
        if process.returncode:
            self.log.error("tfserve: %s failed: %s", what, errors.decode(errors="replace")[-2000:])

    async def _add_demo_model(self) -> None:
        """Put half_plus_two in the model config (before the engine reads it); its files come after."""
        await self._run_child("adding the demo model to the config", _ADD_DEMO_MODEL,
                              str(Path(self.state_dir) / "models.config"), DEMO_MODEL_NAME,
                              str(Path(self.model_repository_root) / DEMO_MODEL_NAME))

    async def _write_demo_model(self) -> None:
        """In a child process: TensorFlow stays out of the Jupyter server. The engine's poller picks it up."""
        base = Path(self.model_repository_root) / DEMO_MODEL_NAME
        if (base / "1" / "saved_model.pb").is_file():
            return
        self.log.info("tfserve: writing the demo model %s to %s", DEMO_MODEL_NAME, base)
        await self._run_child("writing the demo model", "import sys; from pathlib import Path; from "
                              "jupyter_tfserve.demo import write_demo_model; write_demo_model(Path(sys.argv[1]))",
                              str(base))

    def _write_batching_file(self, state: Path) -> Path:
        """``default_batching`` as a BatchingParameters text proto, the file TF Serving's flag takes."""
        from google.protobuf import text_format

        from ..engine.batching_options import BatchingOptions

        options = BatchingOptions.from_dict(self.default_batching)
        path = state / "batching.config"
        write_private_text(path, text_format.MessageToString(options.to_proto()))
        return path

    def initialize_handlers(self) -> None:
        self.handlers.extend([
            (r"/tfserve/v1/(.*)", ProxyHandler),
            (r"/tfserve/v2/?(.*)", V2ProxyHandler),
            (r"/tfserve/api/engine/?", EngineStatusHandler),
            (r"/tfserve/api/deploy/?", DeployHandler),  # before the engine's management API it would reach
            (r"/tfserve/api/(.*)", ManagementProxyHandler),
        ])

    def ensure_engine(self) -> asyncio.Task:
        """Start the engine once (in the background); awaiting the task waits until it answers."""
        if self._start_task is None:
            self._start_task = asyncio.get_running_loop().create_task(self._start())
        return self._start_task

    async def _start(self) -> None:
        if self.demo_model:
            await self._add_demo_model()
            self._demo_task = asyncio.get_running_loop().create_task(self._write_demo_model())
        await self.supervisor.start()

    async def _start_jupyter_server_extension(self, serverapp) -> None:
        if self.start_engine == "startup":
            self.ensure_engine()

    async def stop_extension(self) -> None:
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
        self.engine_client.close()
        await self.supervisor.stop()
