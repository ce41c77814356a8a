"""The Python client: every ``%tfserve`` operation, usable from plain Python too.

A kernel started by a Jupyter server with the extension talks to that server's
``tfserve/`` endpoints with the server's token (found through ``JPY_PARENT_PID``);
anywhere else (plain IPython, VS Code, a script, a remote kernel) the client starts
a private engine and talks to it directly with its secret. Both speak the same two
APIs: the management API and TF Serving's REST API.

>>> from jupyter_tfserve.kernel.client import connect
>>> client = connect()
>>> client.export(model, "digits")            # version 1, AVAILABLE on return
>>> client.predict("digits", x_test[:3])
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
import tornado.httpclient

from ..wire import ENGINE_SECRET_HEADER, ROUTE_KEY_HEADER, VERSION_HEADER
from . import private_engine

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 120


class TFServeError(Exception):
    """An answer that is not a success, with the server's own message (TF Serving's ``{"error": ...}``)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class Connection:
    """Where the two APIs are and how to authenticate; ``kind`` is ``"jupyter"`` or ``"private"``."""

    kind: str
    api_url: str  # management API, ends with "/"
    serving_url: str  # TF Serving REST API root (".../v1/" is appended), ends with "/"
    headers: dict[str, str] = field(repr=False)
    server_url: str = ""  # the Jupyter server's URL (base URL included), for links teammates can use


def _jupyter_connection(url: str, token: str) -> Connection:
    url = url if url.endswith("/") else url + "/"
    return Connection(kind="jupyter", api_url=f"{url}tfserve/api/", serving_url=f"{url}tfserve/",
                      headers={"Authorization": f"token {token}"} if token else {}, server_url=url)


def _private_connection(info: private_engine.PrivateEngineInfo) -> Connection:
    return Connection(kind="private", api_url=f"{info.management_url}/api/", serving_url=f"{info.rest_url}/",
                      headers={ENGINE_SECRET_HEADER: info.secret})


def _runtime_dir() -> Path:
    """Jupyter's runtime directory, where each server writes ``jpserver-<pid>.json``."""
    if os.environ.get("JUPYTER_RUNTIME_DIR"):
        return Path(os.environ["JUPYTER_RUNTIME_DIR"])
    from jupyter_core.paths import jupyter_runtime_dir  # 30 ms, where jupyter_server's list takes seconds

    return Path(jupyter_runtime_dir())


def find_jupyter_server() -> dict | None:
    """The running Jupyter server this kernel belongs to, from its ``JPY_PARENT_PID``, or None.

    Read from the server's own ``jpserver-<pid>.json`` in the runtime directory rather
    than with ``jupyter_server.serverapp.list_running_servers``: importing jupyter_server
    costs about 2 s of a fresh kernel's first ``%tfserve`` call. The file is written
    by the server at start and removed at exit; its parent being alive is what
    ``list_running_servers`` would check.
    """
    parent = os.getppid() if sys.platform == "win32" else os.environ.get("JPY_PARENT_PID")
    if not parent or not (parent.isascii() and parent.isdigit()):
        return None
    parent_pid = int(parent)
    try:
        runtime = _runtime_dir()
        candidates = [runtime / f"jpserver-{parent_pid}.json", *sorted(runtime.glob("jpserver-*.json"))]
    except (ImportError, OSError):
        return None
    for path in candidates:
        try:
            server = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(server, dict) and server.get("pid") == parent_pid and server.get("url"):
            return server
    return None


def _has_extension(connection: Connection) -> bool:
    try:
        response = requests.get(connection.api_url + "engine", headers=connection.headers, timeout=10)
    except requests.RequestException as error:
        log.info("the Jupyter server at %s did not answer (%s)", connection.server_url, error)
        return False
    return response.status_code == 200


def connect(url: str | None = None, token: str | None = None, *, private: bool | None = None,
            progress: Callable[[str], None] | None = None) -> TFServeClient:
    """A client for this kernel's Jupyter server, an explicit server, or a private engine.

    ``url``/``token`` name a Jupyter server explicitly; ``private=True`` skips the
    search for one. With neither, the kernel's own server is used when it runs the
    extension, and a private engine otherwise.
    """
    if url is not None:
        return TFServeClient(_jupyter_connection(url, token or ""))
    if not private:
        server = find_jupyter_server()
        if server is not None:
            connection = _jupyter_connection(server["url"], server.get("token", ""))
            if _has_extension(connection):
                return TFServeClient(connection)
            log.warning("the Jupyter server at %s does not run the jupyter_tfserve extension; "
                        "using a private engine", server["url"])
    return TFServeClient(_private_connection(private_engine.ensure_private_engine(progress=progress)))


_default_client: TFServeClient | None = None


def default_client() -> TFServeClient:
    """One client per kernel, made on first use."""
    global _default_client
    if _default_client is None:
        _default_client = connect()
    return _default_client


def set_default_client(client: TFServeClient | None) -> None:
    global _default_client
    _default_client = client


def _as_json_data(data: Any) -> Any:
    # numpy is imported where answers become arrays, not with this module (the import check in
    # tests/test_imports.py): with numpy not loaded, no value here can be a numpy one.
    np = sys.modules.get("numpy")
    if np is not None and isinstance(data, np.ndarray):
        return data.tolist()
    if isinstance(data, Mapping):
        return {key: _as_json_data(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_as_json_data(item) for item in data]
    if np is not None and isinstance(data, np.generic):
        return data.item()
    return data


def _as_arrays(predictions: Any) -> Any:
    """TF Serving's ``predictions``: a list (one output) or a list of dicts (several) into numpy."""
    import numpy as np

    if isinstance(predictions, list) and predictions and isinstance(predictions[0], dict):
        return {key: np.asarray([row[key] for row in predictions]) for key in predictions[0]}
    if isinstance(predictions, dict):
        return {key: np.asarray(value) for key, value in predictions.items()}
    return np.asarray(predictions)


SHAPE_HINT = re.compile(
    r"\s*\(((?:input '[^']*' has shape \[[^\]]*\] but the signature declares \[[^\]]*\](?:; )?)+)\)\s*$")

GRAPH_NODE = re.compile(r"\[\[\{\{node [^}]*\}\}\]\]")


def useful_first(message: str) -> str:
    """The engine's shape hint ahead of TensorFlow's own words, which name graph nodes, not inputs.

    The engine answers as TF Serving does (TensorFlow's error first) and appends
    ``(input 'x' has shape [3, 10] but the signature declares [-1, 64])``; in a notebook
    the sentence about the user's own data is the one to read first.
    """
    match = SHAPE_HINT.search(message)
    if not match:
        return message
    tensorflow_says = " ".join(GRAPH_NODE.sub("", message[:match.start()]).split())  # one line, no node names
    return f"{match.group(1)} (TensorFlow: {tensorflow_says})" if tensorflow_says else match.group(1)


@dataclass
class Prediction:
    """What one predict call returned, and which version answered it."""

    outputs: Any
    version: str | None
    latency_ms: float


class TFServeClient:
    """Both APIs, synchronously (``windows_async`` is for widgets on the kernel's event loop)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.session = requests.Session()
        self._engine_info: dict | None = None

    def copy(self) -> TFServeClient:
        """A client of the same engine with its own connection pool (one per thread in a load test)."""
        return TFServeClient(self.connection)

    def __repr__(self) -> str:
        return f"<TFServeClient {self.connection.kind} {self.connection.api_url}>"

    # -- plumbing --------------------------------------------------------------------------------

    def _url(self, api: str, path: str) -> str:
        return (self.connection.api_url if api == "management" else self.connection.serving_url) + path

    def _request(self, method: str, api: str, path: str, *, json: Any = None,
                 headers: Mapping[str, str] | None = None, timeout: float = REQUEST_TIMEOUT_SECONDS
                 ) -> requests.Response:
        """``api`` is ``"management"`` or ``"serving"``; a private engine that died is started again once."""
        for attempt in (1, 2):
            try:
                return self.session.request(method, self._url(api, path), json=json, timeout=timeout,
                                            headers={**self.connection.headers, **(headers or {})})
            except requests.ConnectionError as error:
                if attempt == 2 or self.connection.kind != "private":
                    raise TFServeError(f"the tfserve engine at {self._url(api, '')} did not answer: "
                                       f"{error.__class__.__name__}") from None
                log.warning("the private tfserve engine is not answering; starting it again")
                self.connection = _private_connection(private_engine.ensure_private_engine())
        raise AssertionError("unreachable")

    @staticmethod
    def _answer(response: requests.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            message = body.get("error") if isinstance(body, dict) else None
            raise TFServeError(message or f"HTTP {response.status_code}: {response.text[:200]}",
                               response.status_code)
        return body

    def _api(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self._answer(self._request(method, "management", path, json=body, **kwargs))

    # -- the engine ------------------------------------------------------------------------------

    def engine(self) -> dict:
        """The engine's state, ports and model repository root."""
        if self.connection.kind == "jupyter":
            info = self._api("GET", "engine")
        else:
            recorded = private_engine.read_info()
            info = {"state": "running" if recorded else "unknown", "pid": recorded.pid if recorded else None,
                    "rest_port": recorded.rest_port if recorded else None,
                    "grpc_port": recorded.grpc_port if recorded else None,
                    "model_repository_root": recorded.model_repository_root if recorded else ""}
        info["kind"] = self.connection.kind
        self._engine_info = info
        return info

    def model_repository_root(self) -> str:
        info = self._engine_info or self.engine()
        root = info.get("model_repository_root")
        if not root:
            raise TFServeError("the engine has no model repository root to export into")
        return root

    # -- models ----------------------------------------------------------------------------------

    def running_config(self) -> dict:
        """``{"model_config": TF Serving's models.config text, "splits": {model: {version: percent}}}``."""
        return self._api("GET", "config")

    def models(self) -> list[dict]:
        return self._api("GET", "models")["models"]

    def model(self, name: str) -> dict:
        return self._api("GET", f"models/{quote(name)}")

    def find_model(self, name: str) -> dict | None:
        try:
            return self.model(name)
        except TFServeError as error:
            if error.status == 404:
                return None
            raise

    def load(self, name: str, base_path: str, *, version_policy: Any = None, labels: Mapping[str, int] | None = None,
             replace: bool = False, wait_seconds: float = 120) -> dict:
        """Serve the SavedModel versions under ``base_path`` (under the model repository root)."""
        body: dict[str, Any] = {"name": name, "base_path": str(base_path), "replace": replace,
                                "wait_seconds": wait_seconds}
        if version_policy is not None:
            body["version_policy"] = version_policy
        if labels:
            body["labels"] = {label: int(version) for label, version in labels.items()}
        return self._api("POST", "models", body, timeout=wait_seconds + 30)

    def unload(self, name: str, version: int | None = None) -> dict:
        path = f"models/{quote(name)}" + (f"/versions/{int(version)}" if version is not None else "")
        return self._api("DELETE", path)

    def set_labels(self, name: str, labels: Mapping[str, int], *, replace: bool = False) -> dict:
        return self._api("PUT", f"models/{quote(name)}/labels",
                         {"labels": {k: int(v) for k, v in labels.items()}, "replace": replace})

    def promote(self, name: str, version: int) -> dict:
        """``stable`` moves to ``version``; any split or shadow ends."""
        return self._api("POST", f"models/{quote(name)}/promote", {"version": int(version)})

    def poll(self, name: str) -> dict:
        return self._api("POST", f"models/{quote(name)}/poll")

    def set_batching(self, name: str, enabled: bool = True, **parameters: Any) -> dict:
        """``set_batching("m", max_batch_size=32, batch_timeout_micros=2000)``; ``enabled=False`` turns it off."""
        body = {"enabled": False} if not enabled else parameters
        return self._api("PUT", f"models/{quote(name)}/batching", body)

    def set_routing(self, name: str, *, split: Mapping[Any, float] | None = None, shadow: Any = None,
                    shadow_tolerance: float | None = None) -> dict:
        """An A/B split (``{1: 90, 2: 10}`` or by label) and/or shadow traffic to a version or label."""
        body: dict[str, Any] = {}
        if split:
            body["split"] = {str(arm): weight for arm, weight in split.items()}
        if shadow is not None:
            body["shadow"] = str(shadow)
        if shadow_tolerance is not None:
            body["shadow_tolerance"] = shadow_tolerance
        return self._api("PUT", f"models/{quote(name)}/routing", body)

    def clear_routing(self, name: str) -> dict:
        return self._api("DELETE", f"models/{quote(name)}/routing")

    def set_logging(self, name: str, sampling_rate: float, *, filename_prefix: str | None = None) -> dict:
        """Log a sample of ``name``'s requests (``sampling_rate`` 0 to 1; 0 turns it off) as ``PredictionLog``
        TFRecords under ``filename_prefix`` (default: beside the engine's model config)."""
        body: dict[str, Any] = {"sampling_rate": sampling_rate}
        if filename_prefix is not None:
            body["filename_prefix"] = filename_prefix
        return self._api("PUT", f"models/{quote(name)}/logging", body)

    def replay(self, log_files: Any, model: str, *, version: int | None = None, label: str | None = None,
               limit: int | None = None, atol: float = 1e-6, rtol: float = 1e-5):
        """Send logged requests to ``model`` at ``version``/``label``; a :class:`~.replay.ReplayResult` says where
        the answers differ from the logged ones. ``log_files``: paths or globs (``prefix*``)."""
        from .replay import replay

        return replay(self, log_files, model, version=version, label=label, limit=limit, atol=atol, rtol=rtol)

    def windows(self, name: str, seconds: int = 60) -> dict:
        """Per version: requests, errors, p50/p95/p99 over the window and per second; split and shadow stats."""
        return self._api("GET", f"models/{quote(name)}/windows?seconds={int(seconds)}")

    async def windows_async(self, name: str, seconds: int = 60) -> dict:
        """The same, without blocking the kernel's event loop (live widgets)."""
        return await self._api_async(f"models/{quote(name)}/windows?seconds={int(seconds)}")

    async def model_async(self, name: str) -> dict:
        return await self._api_async(f"models/{quote(name)}")

    async def _api_async(self, path: str) -> Any:
        """A GET on the management API from the kernel's event loop; errors as :class:`TFServeError`."""
        client = tornado.httpclient.AsyncHTTPClient()
        try:
            response = await client.fetch(self.connection.api_url + path, headers=self.connection.headers,
                                          request_timeout=10)
        except tornado.httpclient.HTTPClientError as error:
            body = error.response.body if error.response is not None else b""
            try:
                message = json.loads(body).get("error") or str(error)
            except ValueError:
                message = str(error)
            raise TFServeError(message, error.code) from None
        except OSError as error:
            raise TFServeError(f"the tfserve engine did not answer: {error}") from None
        return json.loads(response.body)

    # -- share tokens ----------------------------------------------------------------------------

    def share(self, name: str, *, verbs: list[str] | tuple[str, ...] = ("predict", "metadata"),
              expires_in_seconds: float | None = None, description: str = "") -> dict:
        """A share token for one model; the answer holds ``token`` (shown once), ``id`` and ``url``."""
        body: dict[str, Any] = {"model": name, "verbs": list(verbs), "description": description}
        if expires_in_seconds is not None:
            body["expires_in_seconds"] = expires_in_seconds
        record = self._api("POST", "tokens", body)
        record["url"] = self.predict_url(name)
        return record

    def tokens(self) -> list[dict]:
        return self._api("GET", "tokens")["tokens"]

    def revoke(self, token_id: str) -> dict:
        return self._api("DELETE", f"tokens/{quote(token_id)}")

    # -- TF Serving's REST API -------------------------------------------------------------------

    @staticmethod
    def _model_path(name: str, version: int | None = None, label: str | None = None) -> str:
        path = f"v1/models/{quote(name)}"
        if version is not None:
            path += f"/versions/{int(version)}"
        elif label is not None:
            path += f"/labels/{quote(label)}"
        return path

    def predict_url(self, name: str, version: int | None = None, label: str | None = None) -> str:
        """The URL a TF Serving REST client (or curl) posts to."""
        return self._url("serving", self._model_path(name, version, label) + ":predict")

    def predict(self, name: str, data: Any, *, version: int | None = None, label: str | None = None,
                signature_name: str | None = None, route_key: str | None = None) -> Any:
        """Outputs as numpy: one array, or a dict of arrays for several outputs."""
        return self.predict_detailed(name, data, version=version, label=label, signature_name=signature_name,
                                     route_key=route_key).outputs

    def predict_detailed(self, name: str, data: Any, *, version: int | None = None, label: str | None = None,
                         signature_name: str | None = None, route_key: str | None = None) -> Prediction:
        """Like :meth:`predict`, with the version that answered (A/B splits) and the round-trip time."""
        # A dict of input arrays is TF Serving's columnar form ("inputs"); anything else is rows ("instances").
        key = "inputs" if isinstance(data, Mapping) else "instances"
        body: dict[str, Any] = {key: _as_json_data(data)}
        if signature_name:
            body["signature_name"] = signature_name
        headers = {ROUTE_KEY_HEADER: route_key} if route_key else None
        started = time.perf_counter()
        response = self._request("POST", "serving", self._model_path(name, version, label) + ":predict", json=body,
                                 headers=headers)
        latency_ms = (time.perf_counter() - started) * 1000
        try:
            answer = self._answer(response)
        except TFServeError as error:
            raise TFServeError(useful_first(error.message), error.status) from None
        outputs = answer.get("predictions", answer.get("outputs"))
        return Prediction(_as_arrays(outputs), response.headers.get(VERSION_HEADER), latency_ms)

    def status(self, name: str, version: int | None = None) -> dict:
        return self._answer(self._request("GET", "serving", self._model_path(name, version)))

    def metadata(self, name: str, version: int | None = None) -> dict:
        return self._answer(self._request("GET", "serving", self._model_path(name, version) + "/metadata"))

    # -- export ----------------------------------------------------------------------------------

    def export(self, model: Any, name: str, *, label: str | None = None, warmup: Any = None,
               wait_seconds: float = 300, progress: Callable[[str], None] | None = None):
        """``model`` (Keras, ``tf.Module`` or a SavedModel folder) as the next version of ``name``, AVAILABLE.

        See :func:`jupyter_tfserve.kernel.export.export_model`.
        """
        from .export import export_model

        return export_model(self, model, name, label=label, warmup=warmup, wait_seconds=wait_seconds,
                            progress=progress)
