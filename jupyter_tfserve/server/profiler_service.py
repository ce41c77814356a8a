"""TensorFlow's ProfilerService on the gRPC port, as ``tensorflow_model_server --enable_profiler`` offers it.

TensorBoard's "capture profile" button and ``tf.profiler.experimental.client.trace`` call
``tensorflow.ProfilerService/Profile`` on the model server's own gRPC address. The pip
package ships no Python module for that service's protos, so the request is read with a
message built here from the field numbers the client sends (duration, repository root,
session id, host name; the rest is ignored), the trace is taken in this process with
``tf.profiler.experimental``, and its XSpace is written where TensorBoard looks:
``<repository_root>/<session_id>/<host>.xplane.pb``. An empty response says the trace was
written (``empty_trace`` false), as TensorFlow's own server answers.

The caller chooses the folder the trace is written to, so the service is for the engine's
owner only (never a share token), writes only into an existing directory that belongs to
this process's user, and never follows a symbolic link there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ..engine.errors import Code, ServingError
from ..wire import ENGINE_SECRET_HEADER
from .auth import Authenticator

log = logging.getLogger(__name__)

PROFILE_METHOD = "/tensorflow.ProfilerService/Profile"
MAX_DURATION_MS = 60_000
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def _profile_request_class() -> type:
    """``tensorflow.ProfileRequest``'s fields that a trace needs, under their wire numbers."""
    file = descriptor_pb2.FileDescriptorProto(name="jupyter_tfserve_profiler.proto", package="jupyter_tfserve",
                                              syntax="proto3")
    message = file.message_type.add(name="ProfileRequest")
    field = descriptor_pb2.FieldDescriptorProto
    for name, number, kind in (("duration_ms", 1, field.TYPE_UINT64), ("repository_root", 5, field.TYPE_STRING),
                               ("session_id", 6, field.TYPE_STRING), ("host_name", 7, field.TYPE_STRING)):
        message.field.add(name=name, number=number, type=kind, label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("jupyter_tfserve.ProfileRequest"))


ProfileRequest = _profile_request_class()


class ProfilerService(grpc.GenericRpcHandler):
    """Answers ``Profile``; one trace at a time (TensorFlow's profiler is one per process)."""

    def __init__(self, auth: Authenticator | None) -> None:
        self._auth = auth
        self._busy = threading.Lock()

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        if handler_call_details.method != PROFILE_METHOD:
            return None
        return grpc.unary_unary_rpc_method_handler(self._profile)

    async def _profile(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            self._require_owner(context)
            request = ProfileRequest.FromString(raw)
            duration_ms = min(int(request.duration_ms) or 1000, MAX_DURATION_MS)
            target = _trace_folder(request.repository_root, request.session_id)
            if not self._busy.acquire(blocking=False):
                raise ServingError(Code.UNAVAILABLE, "Another profiling session is active")
            try:
                written = await asyncio.get_running_loop().run_in_executor(
                    None, _trace, duration_ms, target, request.host_name or "localhost")
            finally:
                self._busy.release()
        except ServingError as error:
            await context.abort(grpc.StatusCode[error.code.name], error.message)
        log.info("profiler: %d ms trace written to %s", duration_ms, written)
        return b""

    def _require_owner(self, context: grpc.aio.ServicerContext) -> None:
        if self._auth is None:
            return
        metadata = {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}
        access = self._auth.authenticate(metadata.get(ENGINE_SECRET_HEADER.lower()), metadata.get("authorization"))
        access.require(None, None)


def _trace_folder(repository_root: str, session_id: str) -> Path:
    """``<repository_root>/<session_id>``, made if needed, inside a folder of ours that is no link."""
    if not repository_root or not os.path.isabs(repository_root):
        raise ServingError(Code.INVALID_ARGUMENT, "ProfileRequest.repository_root must be an absolute path")
    root = Path(repository_root)
    existing = root
    while not existing.exists():
        existing = existing.parent
    info = os.lstat(existing)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ServingError(Code.PERMISSION_DENIED, f"The profiler writes only into folders of the engine's user: "
                                                   f"{existing} is not one")
    session = _SAFE_NAME.sub("_", session_id) or time.strftime("%Y_%m_%d_%H_%M_%S")
    target = root / session
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    if target.is_symlink():
        raise ServingError(Code.PERMISSION_DENIED, f"{target} is a symbolic link")
    return target


def _trace(duration_ms: int, target: Path, host_name: str) -> Path:
    """Trace this process for ``duration_ms`` and put the XSpace in ``target`` (blocking)."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="tfserve-profile-") as scratch:
        try:
            tf.profiler.experimental.start(scratch)
        except Exception as error:  # already running in this process, or the profiler is unavailable
            raise ServingError(Code.UNAVAILABLE, f"Cannot start the profiler: {error}") from None
        try:
            time.sleep(duration_ms / 1000)
        finally:
            tf.profiler.experimental.stop()
        traces = sorted(Path(scratch).rglob("*.xplane.pb"))
        if not traces:
            raise ServingError(Code.UNAVAILABLE, "The profiler collected no trace")
        destination = target / f"{_SAFE_NAME.sub('_', host_name)}.xplane.pb"
        shutil.copyfile(traces[-1], destination)
    return destination
