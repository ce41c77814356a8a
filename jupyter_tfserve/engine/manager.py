"""Drive every model version through TF Serving's lifecycle and hand out handles.

States: START → LOADING → AVAILABLE → UNLOADING → END. A new version is loaded
before the one it replaces is unloaded (availability preserving), a version is
unloaded only once no request holds a handle on it, and a version that fails to
load is reported in status and retried with backoff without disturbing the
versions already serving.

All bookkeeping happens on the event loop thread; only loading, warmup and
closing sessions run in an executor. That keeps the state machine free of locks.
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import functools
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from .config import ModelConfig, ModelServerConfig
from .errors import Code, ServingError, failed_precondition, invalid_argument, not_found, resource_exhausted
from .servable import Servable
from .source import aspired_versions, describe_policy, list_versions
from .storage import DEFAULT_MAX_VERSION_BYTES, base_path_problem

log = logging.getLogger(__name__)

RETRY_BACKOFF_SECONDS = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 60.0)


class State(enum.Enum):
    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: State
    error_code: Code = Code.OK
    error_message: str = ""


@dataclass
class _Version:
    version: int
    path: Path
    state: State = State.START
    error: ServingError | None = None
    servable: Servable | None = None
    refs: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)
    failed_fingerprint: tuple | None = None
    attempts: int = 0
    retry_at: float = 0.0
    loaded_at: float = 0.0

    def status(self) -> VersionStatus:
        if self.error is not None:
            return VersionStatus(self.version, self.state, self.error.code, self.error.message)
        return VersionStatus(self.version, self.state)


@dataclass
class _Model:
    config: ModelConfig
    versions: dict[int, _Version] = field(default_factory=dict)
    seen_fingerprints: dict[int, tuple] = field(default_factory=dict)
    polled: bool = False
    removed: bool = False

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def labels(self) -> dict[str, int]:
        return dict(self.config.version_labels)

    def available(self) -> list[int]:
        return sorted(v for v, rec in self.versions.items() if rec.state is State.AVAILABLE)


class Handle:
    """A reference to a serving version; the version is not unloaded until it is released."""

    __slots__ = ("_record", "servable")

    def __init__(self, record: _Version) -> None:
        self._record = record
        self.servable: Servable = record.servable  # type: ignore[assignment]
        record.refs += 1

    @property
    def version(self) -> int:
        return self._record.version

    def release(self) -> None:
        record, self._record = self._record, None
        if record is None:
            return
        record.refs -= 1
        if record.refs == 0:
            record.released.set()

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


LoadFunction = Callable[[str, int, Path], Awaitable[Servable]]
UnloadHook = Callable[[Servable], Awaitable[None]]


class Manager:
    """Owns the models of one engine: what is loaded, what should be, and who is using it."""

    def __init__(
        self,
        load: LoadFunction,
        unload: UnloadHook,
        *,
        allow_version_labels_for_unavailable_models: bool = False,
        on_config: Callable[[ModelServerConfig], None] = lambda config: None,
        max_remote_version_bytes: int = DEFAULT_MAX_VERSION_BYTES,
    ) -> None:
        self._on_config = on_config  # sees (and may refuse, raising) each config before it is applied
        self._load = load
        self._unload = unload
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._max_remote_version_bytes = max_remote_version_bytes  # each copy from object storage, at most
        self._models: dict[str, _Model] = {}
        self._tasks: set[asyncio.Task] = set()
        self._config = ModelServerConfig()
        self._progress = asyncio.Event()

    # -- configuration ---------------------------------------------------------------------------

    @property
    def config(self) -> ModelServerConfig:
        copy = ModelServerConfig()
        copy.CopyFrom(self._config)
        return copy

    async def set_config(self, config: ModelServerConfig, *, check_labels: bool = False, timeout: float = 300) -> None:
        """Make ``config`` the set of served models, as TF Serving's config reload does.

        With ``check_labels`` (a reload requested by a client) the call waits for
        new versions to settle and refuses labels on versions that are not
        AVAILABLE, unless ``--allow_version_labels_for_unavailable_models``.
        """
        self._on_config(config)
        wanted = {model.name: model for model in config.model_config_list.config}
        for name in list(self._models):
            if name not in wanted:
                self._remove_model(name)
        old_labels = {}
        for name, model_config in wanted.items():
            existing = self._models.get(name)
            if existing is None:
                self._models[name] = _Model(config=_copy(model_config))
                log.info("model %s: base path %s, version policy %s", name, model_config.base_path,
                         describe_policy(model_config))
            else:
                old_labels[name] = existing.labels
                if existing.config.base_path != model_config.base_path:
                    existing.polled = False
                existing.config = _copy(model_config)
        self._config = _copy_server_config(config)
        self.poll()
        if not check_labels:
            return
        await self.wait_until_settled(timeout)
        problems = self._label_problems()
        if problems:
            for name, labels in old_labels.items():
                model = self._models[name]
                model.config.ClearField("version_labels")
                for label, version in labels.items():
                    model.config.version_labels[label] = version
            raise failed_precondition("; ".join(problems))

    def _label_problems(self) -> list[str]:
        if self._allow_unavailable_labels:
            return []
        problems = []
        for model in self._models.values():
            for _label, version in model.labels.items():
                record = model.versions.get(version)
                if record is None or record.state is not State.AVAILABLE:
                    problems.append(
                        f"Request to assign label to version {version} of model {model.name}, "
                        f"which is not currently available for inference"
                    )
        return problems

    def set_labels(self, name: str, labels: dict[str, int]) -> None:
        """Replace a model's version labels (the management API's way in)."""
        model = self._model(name)
        if not self._allow_unavailable_labels:
            for label, version in labels.items():
                record = model.versions.get(version)
                if record is None or record.state is not State.AVAILABLE:
                    raise failed_precondition(
                        f"Request to assign label {label} to version {version} of model {name}, "
                        f"which is not currently available for inference"
                    )
        model.config.ClearField("version_labels")
        for label, version in labels.items():
            model.config.version_labels[label] = version
        for entry in self._config.model_config_list.config:
            if entry.name == name:
                entry.CopyFrom(model.config)

    def _remove_model(self, name: str) -> None:
        model = self._models.pop(name)
        model.removed = True
        log.info("model %s: removed from the config; unloading", name)
        for record in model.versions.values():
            if record.state is State.AVAILABLE:
                self._spawn(self._unload_version(model, record))

    # -- polling ---------------------------------------------------------------------------------

    def poll(self) -> None:
        """Compare each model's directory with what is loaded and start loads and unloads."""
        for model in list(self._models.values()):
            try:
                self._reconcile(model)
            except Exception:
                log.exception("model %s: polling failed", model.name)

    async def run_polling(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.poll()

    def _reconcile(self, model: _Model) -> None:
        on_disk = list_versions(model.config.base_path, model=model.config,
                                max_remote_version_bytes=self._max_remote_version_bytes)
        ready: list[int] = []
        for version, found in on_disk.items():
            if not found.complete:
                self._report_incomplete(model, version, found.path, found.problem, found.refused)
                continue
            previous = model.seen_fingerprints.get(version)
            model.seen_fingerprints[version] = found.fingerprint
            record = model.versions.get(version)
            active = record is not None and record.state in (State.LOADING, State.AVAILABLE)
            # A version that appears while we watch must hold still for one poll before it is offered.
            if active or not model.polled or previous == found.fingerprint:
                ready.append(version)
        for version in list(model.seen_fingerprints):
            if version not in on_disk:
                del model.seen_fingerprints[version]
        model.polled = True
        aspired = set(aspired_versions(model.config, ready))
        now = time.monotonic()
        for version in sorted(aspired):
            record = model.versions.get(version)
            if record is None or (record.state is State.END and record.error is None):
                record = _Version(version, on_disk[version].path)
                model.versions[version] = record
                self._spawn(self._load_version(model, record))
            elif record.state is State.END and record.error is not None:
                changed = record.failed_fingerprint != on_disk[version].fingerprint
                if changed or now >= record.retry_at:
                    record.path = on_disk[version].path
                    self._spawn(self._load_version(model, record))
        aspired_available = any(model.versions[v].state is State.AVAILABLE for v in aspired if v in model.versions)
        aspired_pending = any(
            model.versions[v].state in (State.START, State.LOADING) for v in aspired if v in model.versions
        )
        for version, record in list(model.versions.items()):
            if version in aspired:
                continue
            if record.state is State.AVAILABLE and (aspired_available or (not aspired and not aspired_pending)):
                self._spawn(self._unload_version(model, record))
            elif record.state is State.END and record.error is not None and version not in on_disk:
                del model.versions[version]
        self._report_unreachable(model)
        self._notify()

    def _report_unreachable(self, model: _Model) -> None:
        """A remote base path that cannot be listed (no bucket, bad credentials) is version 0's error in status."""
        problem = base_path_problem(model.config.base_path)
        if problem and not model.versions:
            model.versions[0] = _Version(0, Path(), state=State.END, error=ServingError(Code.UNAVAILABLE, problem))

    def _report_incomplete(self, model: _Model, version: int, path: Path, problem: str, refused: bool = False) -> None:
        """Show a version directory that is not a whole SavedModel (yet) in status, without loading it.

        ``refused``: the version is whole in its bucket but was not copied here (over
        --max_remote_version_bytes, or no room in the cache); ``problem`` says so, as RESOURCE_EXHAUSTED.
        """
        record = model.versions.get(version)
        if record is not None and record.state is not State.END:
            return
        if refused:
            message, error = problem, resource_exhausted
        else:
            message = f"Version directory {path} is not a complete SavedModel ({problem}); it loads once complete"
            error = failed_precondition
        if record is not None and record.error is not None and record.error.message == message:
            return
        record = _Version(version, path, state=State.END, error=error(message))
        model.versions[version] = record
        self._log_state(model, record, message)

    # -- loading and unloading -------------------------------------------------------------------

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_until_settled(self, timeout: float = 300) -> None:
        """Wait until no load or unload is in progress (or the timeout passes)."""
        deadline = time.monotonic() + timeout
        while self._tasks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.wait(set(self._tasks), timeout=remaining)

    def _log_state(self, model: _Model, record: _Version, detail: str = "") -> None:
        log.info("model %s version %d: %s%s", model.name, record.version, record.state.value,
                 f" ({detail})" if detail else "")

    async def _load_version(self, model: _Model, record: _Version) -> None:
        record.state = State.START
        record.error = None
        record.released = asyncio.Event()
        self._log_state(model, record, str(record.path))
        record.state = State.LOADING
        self._log_state(model, record)
        started = time.monotonic()
        try:
            servable = await self._load(model.name, record.version, record.path)
        except Exception as error:
            failure = error if isinstance(error, ServingError) else ServingError(Code.UNKNOWN, str(error))
            record.state = State.END
            record.error = failure
            record.failed_fingerprint = model.seen_fingerprints.get(record.version)
            delay = RETRY_BACKOFF_SECONDS[min(record.attempts, len(RETRY_BACKOFF_SECONDS) - 1)]
            record.attempts += 1
            record.retry_at = time.monotonic() + delay
            self._log_state(model, record, f"failed: {failure.message}; retrying in {delay:g} s or when it changes")
            self._notify()
            return
        if model.removed or self._models.get(model.name) is not model:
            await self._close(servable)
            del servable
            await release_unloaded_memory()
            record.state = State.END
            self._log_state(model, record, "model was removed while loading")
            self._notify()
            return
        record.servable = servable
        record.state = State.AVAILABLE
        record.attempts = 0
        record.loaded_at = time.time()
        self._log_state(model, record, f"loaded in {time.monotonic() - started:.2f} s")
        self._reconcile(model)
        self._notify()

    async def _unload_version(self, model: _Model, record: _Version) -> None:
        record.state = State.UNLOADING
        self._log_state(model, record, f"{record.refs} requests in flight" if record.refs else "")
        if record.refs:
            await record.released.wait()
        servable, record.servable = record.servable, None
        if servable is not None:
            await self._close(servable)
            del servable  # the last reference this frame holds, before the collection below
            await release_unloaded_memory()
        record.state = State.END
        self._log_state(model, record)

    async def _close(self, servable: Servable) -> None:
        """The unload hook (batch queues, caches keyed by the servable), then close it off the loop."""
        await self._unload(servable)
        await asyncio.get_running_loop().run_in_executor(None, servable.close)

    async def stop(self) -> None:
        """Unload everything (waiting for in-flight requests), e.g. at shutdown."""
        for name in list(self._models):
            self._remove_model(name)
        await self.wait_until_settled(timeout=30)

    def _notify(self) -> None:
        """Wake requests waiting for a load: something finished or the folders were looked at."""
        self._progress.set()
        self._progress = asyncio.Event()

    # -- typed questions -------------------------------------------------------------------------

    def has_model(self, name: str) -> bool:
        return name in self._models

    def require(self, name: str) -> None:
        """NOT_FOUND, in TF Serving's words, for a model that is not served."""
        self._model(name)

    def available_versions(self, name: str) -> list[int]:
        """The AVAILABLE versions of a model, ascending (empty for an unknown model)."""
        model = self._models.get(name)
        return model.available() if model is not None else []

    def version_state(self, name: str, version: int) -> State | None:
        model = self._models.get(name)
        record = model.versions.get(version) if model is not None else None
        return record.state if record is not None else None

    def labels(self, name: str) -> dict[str, int]:
        return self._model(name).labels

    def is_loading(self, name: str, version: int | None = None, label: str | None = None) -> bool:
        """Whether the version a request names is on its way: loading now, or its folder not yet listed.

        TF Serving opens its ports only once every model has loaded, so its clients never
        see a configured model missing; we open them at once, and a request for a model
        that is still coming waits for it instead (:meth:`wait_for_load`).
        """
        model = self._models.get(name)
        if model is None:
            return False
        if label is not None:
            version = model.labels.get(label)
            if version is None:
                return False
        if version is None:
            if not model.polled:
                return True
            pending = False
            for record in model.versions.values():
                if record.state is State.AVAILABLE:
                    return False
                pending = pending or record.state in (State.START, State.LOADING)
            return pending
        record = model.versions.get(version)
        if record is None:
            return not model.polled
        return record.state in (State.START, State.LOADING)

    def is_settled(self, name: str) -> bool:
        """Whether every version found for ``name`` has finished loading, one way or the other.

        TF Serving's ReloadConfig answers once all aspired versions are loaded; the
        management API waits for the same point, not for the first version that turns up.
        """
        model = self._models.get(name)
        if model is None or not model.polled:
            return False
        return all(record.state not in (State.START, State.LOADING) for record in model.versions.values())

    async def wait_for_load(self, name: str, version: int | None = None, label: str | None = None,
                            timeout: float = 60.0) -> None:
        """Return once the version a request names is no longer loading (or after ``timeout``)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.is_loading(name, version, label):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            try:
                async with asyncio.timeout(remaining):
                    await self._progress.wait()
            except TimeoutError:
                return

    # -- lookups for the request path ------------------------------------------------------------

    def _model(self, name: str) -> _Model:
        model = self._models.get(name)
        if model is None:
            raise not_found(f"Servable not found for request: Latest({name})")
        return model

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> int:
        """The version number a request for (name, version | label | latest) is served by."""
        model = self._model(name)
        if label is not None:
            labels = model.labels
            if label not in labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = labels[label]
        if version is None:
            available = model.available()
            if not available:
                raise not_found(f"Servable not found for request: Latest({name})")
            return available[-1]
        record = model.versions.get(version)
        if record is None or record.state is not State.AVAILABLE:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return version

    def acquire(self, name: str, version: int | None = None, label: str | None = None) -> Handle:
        resolved = self.resolve(name, version, label)
        return Handle(self._models[name].versions[resolved])

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        model = self._model(name)
        if label is not None:
            labels = model.labels
            if label not in labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = labels[label]
        if version is not None:
            record = model.versions.get(version)
            if record is None:
                raise not_found(f"Could not find version {version} of model {name}")
            return [record.status()]
        if not model.versions:
            raise not_found(f"Could not find any versions of model {name}")
        return [model.versions[v].status() for v in sorted(model.versions, reverse=True)]

    def model_names(self) -> list[str]:
        return sorted(self._models)

    def describe(self, name: str) -> dict:
        """Everything known about one model, for ``GET /v1/models`` and the management API."""
        model = self._model(name)
        return {
            "name": name,
            "base_path": model.config.base_path,
            "version_policy": describe_policy(model.config),
            "labels": {label: str(version) for label, version in sorted(model.labels.items())},
            "model_version_status": [
                status_to_json(model.versions[v].status()) for v in sorted(model.versions, reverse=True)
            ],
        }

    def is_ready(self) -> tuple[bool, list[str]]:
        """Ready when every configured model has an AVAILABLE version; also returns those that do not."""
        waiting = [name for name, model in sorted(self._models.items()) if not model.available()]
        return not waiting, waiting


async def release_unloaded_memory() -> None:
    """Free what an unloaded version leaves behind, now rather than at some later collection.

    A version's ``tf.Graph`` (and the object graph ``tf.saved_model.load`` builds) is a web of
    reference cycles, so closing the session does not free it: only the cyclic collector does,
    and the engine tunes that collector to run rarely (``gc.freeze`` and a large first-generation
    threshold in server/app.py). Measured with benchmarks/reload_memory.py, every unloaded
    version's graph stayed alive (30 of 30 after 30 cycles) and a Keras export's 50 load/unload
    cycles grew the engine by 20%; one full collection per unload, which walks only what was
    allocated since the freeze (2-35 ms), keeps it within 2-5%. ``malloc_trim`` then hands the
    freed heap back to the system; it runs in a thread (ctypes releases the GIL for it).
    """
    started = time.perf_counter()
    collected = gc.collect()
    collect_seconds = time.perf_counter() - started
    trim = _malloc_trim()
    if trim is not None:
        await asyncio.get_running_loop().run_in_executor(None, trim, 0)
    log.debug("after an unload: collected %d objects in %.1f ms, trimmed the heap in %.1f ms", collected,
              collect_seconds * 1e3, (time.perf_counter() - started - collect_seconds) * 1e3)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where there is none (macOS, musl)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def status_to_json(status: VersionStatus) -> dict:
    return {
        "version": str(status.version),
        "state": status.state.value,
        "status": {"error_code": status.error_code.name, "error_message": status.error_message},
    }


def _copy(model_config: ModelConfig) -> ModelConfig:
    copy = ModelConfig()
    copy.CopyFrom(model_config)
    return copy


def _copy_server_config(config: ModelServerConfig) -> ModelServerConfig:
    copy = ModelServerConfig()
    copy.CopyFrom(config)
    return copy
