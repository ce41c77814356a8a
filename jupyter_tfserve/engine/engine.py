"""The request path that REST and gRPC share: resolve, take a handle, batch, run.

Front doors decode their wire format through a callback that receives the
resolved signature, so decoding is validated against the version that will
actually answer, and the handle is held from resolution until the answer is
computed: a version is never unloaded under a request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .batching import BatchScheduler
from .batching_options import BatchingOptions
from .codecs import json_predict, tensor_proto
from .config import ModelServerConfig
from .errors import Code, ServingError, invalid_argument
from .loader import LoaderOptions, SessionOptions, load_servable
from .manager import Handle, Manager, VersionStatus
from .metrics import EngineMetrics
from .request_log import RequestLogger
from .routing import Router, Shadow, compare_outputs
from .servable import Servable
from .signature import DEFAULT_SIGNATURE, SignatureSpec
from .statistics import InferenceStatistics
from .storage import DEFAULT_MAX_VERSION_BYTES
from .warmup import read_warmup_records, run_warmup, warmup_file
from .windows import LatencyWindows

log = logging.getLogger(__name__)


@dataclass
class EngineOptions:
    session: SessionOptions = field(default_factory=SessionOptions)
    enable_batching: bool = False
    batching: BatchingOptions = field(default_factory=BatchingOptions)
    enable_model_warmup: bool = True
    allow_version_labels_for_unavailable_models: bool = False
    num_load_threads: int = 2
    num_request_threads: int = 0
    # TF Serving's --prefer_tflite_model: serve <version>/model.tflite when a version has one.
    prefer_tflite_model: bool = False
    # TF Serving's --enable_signature_method_name_check (default off, as there: TF2 exports mark
    # every signature "predict", and Classify/Regress still run on the ones shaped for them).
    enable_signature_method_name_check: bool = False
    # --max_remote_version_bytes: the most one version in object storage may copy into the local cache.
    max_remote_version_bytes: int = DEFAULT_MAX_VERSION_BYTES


@dataclass(frozen=True)
class Target:
    """Which model, version or label, and signature a request names."""

    name: str
    version: int | None = None
    label: str | None = None
    signature_name: str = ""

    @property
    def signature(self) -> str:
        return self.signature_name or DEFAULT_SIGNATURE


@dataclass
class Answer:
    """What a request got, and from which version and signature."""

    name: str
    version: int
    signature_name: str
    outputs: dict[str, np.ndarray] | None = None
    results: list | None = None
    row_format: bool = False


Decoder = Callable[[SignatureSpec], dict[str, np.ndarray]]

INLINE_MAX_SECONDS = 200e-6
INLINE_MAX_INPUT_BYTES = 64 * 1024
MAX_SHADOW_REQUESTS_IN_FLIGHT = 4
# How long a request for a model that is still loading waits for it (TF Serving's clients
# assume a model is there once the port answers; ours opens before models load).
LOAD_WAIT_SECONDS = 60.0


class Engine:
    """One serving engine: its models, its metrics, its batch queues."""

    def __init__(self, options: EngineOptions | None = None) -> None:
        self.options = options or EngineOptions()
        self.metrics = EngineMetrics()
        self.router = Router()
        self.windows = LatencyWindows()
        self.statistics = InferenceStatistics()
        self._shadow_tasks: set[asyncio.Task] = set()
        self.request_log = RequestLogger(self.metrics.registry)
        self.manager = Manager(
            self._load_version,
            self._on_unload,
            allow_version_labels_for_unavailable_models=self.options.allow_version_labels_for_unavailable_models,
            on_config=self.request_log.configure,
            max_remote_version_bytes=self.options.max_remote_version_bytes,
        )
        cores = os.cpu_count() or 1
        self._load_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, self.options.num_load_threads), thread_name_prefix="tfserve-load"
        )
        self._request_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.options.num_request_threads or max(4, 2 * cores), thread_name_prefix="tfserve-run"
        )
        self._batching_overrides: dict[str, BatchingOptions | None] = {}
        self._schedulers: dict[tuple[str, int, str], BatchScheduler] = {}
        self._typical_runtime: dict[tuple[int, str], float] = {}

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, config: ModelServerConfig) -> None:
        await self.manager.set_config(config)

    async def stop(self) -> None:
        for task in list(self._shadow_tasks):
            task.cancel()
        await self.manager.stop()
        for scheduler in list(self._schedulers.values()):
            await scheduler.close()
        self._schedulers.clear()
        self._load_executor.shutdown(wait=False, cancel_futures=True)
        self._request_executor.shutdown(wait=False, cancel_futures=True)
        self.request_log.close()

    async def reload_config(self, config: ModelServerConfig) -> None:
        await self.manager.set_config(config, check_labels=True)

    async def _load_version(self, name: str, version: int, path: Path) -> Servable:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        status = "OK"
        try:
            return await loop.run_in_executor(self._load_executor, self._load_blocking, name, version, path)
        except ServingError as error:
            status = error.code.name
            raise
        finally:
            self.metrics.load_latency.labels(name, status).observe((time.perf_counter() - started) * 1e6)

    def _load_blocking(self, name: str, version: int, path: Path) -> Servable:
        servable = load_servable(name, version, path, LoaderOptions(
            session=self.options.session,
            prefer_tflite_model=self.options.prefer_tflite_model,
            method_name_check=self.options.enable_signature_method_name_check,
        ))
        warmup = warmup_file(path) if self.options.enable_model_warmup else None
        if warmup is None:
            return servable
        status = "OK"
        started = time.perf_counter()
        try:
            records = read_warmup_records(warmup)
            seconds = run_warmup(servable, records, replay_warmup_record)
            log.info("model %s version %d: replayed %d warmup requests in %.2f s", name, version, len(records), seconds)
            return servable
        except ServingError as error:
            status = error.code.name
            servable.close()
            raise
        except Exception as error:
            status = Code.FAILED_PRECONDITION.name
            servable.close()
            message = f"Warmup of {name} version {version} failed: {error}"
            raise ServingError(Code.FAILED_PRECONDITION, message) from None
        finally:
            self.metrics.model_warmup_latency.labels(str(path), status).observe((time.perf_counter() - started) * 1e6)

    async def _on_unload(self, servable: Servable) -> None:
        for key in [key for key in self._typical_runtime if key[0] == id(servable)]:
            del self._typical_runtime[key]
        for key in [key for key in self._schedulers if key[1] == id(servable)]:
            await self._schedulers.pop(key).close()

    # -- batching --------------------------------------------------------------------------------

    def batching_options(self, name: str) -> BatchingOptions | None:
        """The batching a model's predictions go through (None: each request runs on its own)."""
        if name in self._batching_overrides:
            return self._batching_overrides[name]
        return self.options.batching if self.options.enable_batching else None

    def set_batching(self, name: str, options: BatchingOptions | None) -> None:
        """Change a model's batching at run time; queued requests are not lost."""
        if options is not None:
            options.validate()
        self._batching_overrides[name] = options
        for (model_name, _servable_id, _signature), scheduler in list(self._schedulers.items()):
            if model_name == name and options is not None:
                scheduler.update_options(options)

    def _scheduler(self, servable: Servable, signature: SignatureSpec, options: BatchingOptions) -> BatchScheduler:
        key = (servable.name, id(servable), signature.name)
        scheduler = self._schedulers.get(key)
        if scheduler is None:
            output_keys = tuple(signature.outputs)

            def run_batch(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                return servable.run(signature, inputs, output_keys)

            scheduler = BatchScheduler(
                run_batch,
                options,
                executor=self._request_executor,
                name=f"{servable.name}/{servable.version}/{signature.name}",
                observer=self.metrics.batch_observer(servable.name, signature.name),
            )
            self._schedulers[key] = scheduler
        return scheduler

    # -- the request path ------------------------------------------------------------------------

    def _acquire(self, target: Target, route_key: str | None = None) -> Handle:
        """A handle on the version that answers: the one named, or the split's pick, or the latest."""
        if target.version is None and target.label is None:
            arm = self.router.route(target.name, route_key)
            if arm is not None:
                try:
                    return self.manager.acquire(target.name, arm.version, arm.label)
                except ServingError as error:
                    self.router.count_fallback(target.name, arm, error.message)
        return self.manager.acquire(target.name, target.version, target.label)

    async def predict(
        self,
        target: Target,
        decode: Decoder,
        output_filter: Sequence[str] = (),
        entrypoint: str = "REST",
        route_key: str | None = None,
    ) -> Answer:
        started = time.perf_counter()
        status = Code.OK
        version = None
        items = 0
        try:
            if self.manager.is_loading(target.name, target.version, target.label):
                await self.manager.wait_for_load(target.name, target.version, target.label, LOAD_WAIT_SECONDS)
            with self._acquire(target, route_key) as handle:
                version = handle.version
                servable = handle.servable
                signature = servable.signature(target.signature)
                inputs = decode(signature)
                output_keys = _select_outputs(signature, output_filter)
                outputs = await self._run(servable, signature, inputs, output_keys)
            self.request_log.record_predict(target.name, version, signature.name, inputs, output_filter, outputs)
            if target.version is None and target.label is None:
                self._maybe_shadow(target, decode, version, outputs)
            items = _batch_rows(inputs)
            return Answer(target.name, version, signature.name, outputs=outputs)
        except ServingError as error:
            status = error.code
            raise
        except Exception:
            status = Code.INTERNAL  # a failure that is not the client's is never counted as OK
            raise
        finally:
            self._record(target.name, version, "predict", entrypoint, status, started, items)

    # -- shadow traffic --------------------------------------------------------------------------

    def _maybe_shadow(self, target: Target, decode: Decoder, primary_version: int, outputs: dict) -> None:
        shadow = self.router.shadow(target.name)
        if shadow is None:
            return
        if len(self._shadow_tasks) >= MAX_SHADOW_REQUESTS_IN_FLIGHT:
            shadow.stats.skipped += 1
            return
        task = asyncio.get_running_loop().create_task(
            self._run_shadow(shadow, target, decode, primary_version, outputs)
        )
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _run_shadow(
        self, shadow: Shadow, target: Target, decode: Decoder, primary_version: int, primary: dict
    ) -> None:
        """Run the shadow version on the same request; record the comparison, never the answer."""
        started = time.perf_counter()
        version = None
        ok = False
        try:
            with self.manager.acquire(target.name, shadow.version, shadow.label) as handle:
                version = handle.version
                if version == primary_version:
                    shadow.stats.skipped += 1
                    return
                servable = handle.servable
                signature = servable.signature(target.signature)
                keys = [key for key in primary if key in signature.outputs]
                outputs = await self._run(servable, signature, decode(signature), keys)
            agrees, differences = compare_outputs(primary, outputs, shadow.tolerance)
            self.router.record_shadow(shadow, agrees, differences)
            ok = True
        except ServingError as error:
            shadow.stats.errors += 1
            shadow.stats.last_error = error.message
        except Exception as error:  # a shadow must never hurt the primary; say what happened
            log.exception("model %s: shadow request failed", target.name)
            shadow.stats.errors += 1
            shadow.stats.last_error = str(error)
        finally:
            if version is not None and version != primary_version:
                self.windows.record(target.name, f"{version} shadow", (time.perf_counter() - started) * 1e3, ok)

    async def _run(
        self, servable: Servable, signature: SignatureSpec, inputs: dict[str, np.ndarray], output_keys: list[str]
    ) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        options = self.batching_options(servable.name)
        try:
            if options is not None and _batchable(inputs):
                outputs = await self._scheduler(servable, signature, options).submit(inputs)
                return {key: outputs[key] for key in output_keys}
            return await self._run_unbatched(servable, signature, inputs, output_keys)
        except ServingError as error:
            hints = json_predict.shape_hints(inputs, signature) if error.code is Code.INVALID_ARGUMENT else []
            if hints:
                raise ServingError(error.code, error.message + " (" + "; ".join(hints) + ")") from None
            raise
        finally:
            self.metrics.record_runtime(servable.name, "predict", (time.perf_counter() - started) * 1e6)

    async def _run_unbatched(
        self, servable: Servable, signature: SignatureSpec, inputs: dict[str, np.ndarray], output_keys: list[str]
    ) -> dict[str, np.ndarray]:
        """Run on the event loop when the signature is known to be tiny, else in a worker thread.

        Handing a 40 µs model call to a thread costs more than the call (a wake-up of the
        loop through its self-pipe, a GIL hand-off); for calls that short, inline is faster
        for everyone. Anything slower, or with a large input, goes to the executor.
        """
        key = (id(servable), signature.name)
        typical = self._typical_runtime.get(key)
        small = sum(array.nbytes for array in inputs.values()) <= INLINE_MAX_INPUT_BYTES
        started = time.perf_counter()
        if typical is not None and typical < INLINE_MAX_SECONDS and small:
            outputs = servable.run(signature, inputs, output_keys)
        else:
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(self._request_executor, servable.run, signature, inputs, output_keys)
        if small:
            elapsed = time.perf_counter() - started
            self._typical_runtime[key] = elapsed if typical is None else 0.8 * typical + 0.2 * elapsed
        return outputs

    async def classify(
        self, target: Target, examples: list[bytes], entrypoint: str = "REST", route_key: str | None = None
    ) -> Answer:
        return await self._examples_call(target, examples, "classify", entrypoint, route_key)

    async def regress(
        self, target: Target, examples: list[bytes], entrypoint: str = "REST", route_key: str | None = None
    ) -> Answer:
        return await self._examples_call(target, examples, "regress", entrypoint, route_key)

    async def _examples_call(
        self, target: Target, examples: list[bytes], api: str, entrypoint: str, route_key: str | None
    ) -> Answer:
        started = time.perf_counter()
        status = Code.OK
        version = None
        items = 0
        try:
            if self.manager.is_loading(target.name, target.version, target.label):
                await self.manager.wait_for_load(target.name, target.version, target.label, LOAD_WAIT_SECONDS)
            with self._acquire(target, route_key) as handle:
                version = handle.version
                servable = handle.servable
                signature = servable.signature(target.signature)
                method = servable.classify if api == "classify" else servable.regress
                loop = asyncio.get_running_loop()
                results = await loop.run_in_executor(self._request_executor, method, signature, examples)
                self.request_log.record_examples(api, target.name, handle.version, signature.name, examples, results)
                items = len(examples)
                return Answer(target.name, handle.version, signature.name, results=results)
        except ServingError as error:
            status = error.code
            raise
        except Exception:
            status = Code.INTERNAL
            raise
        finally:
            self._record(target.name, version, api, entrypoint, status, started, items)

    def metadata(self, target: Target, entrypoint: str = "REST") -> tuple[int, object]:
        """(version, SignatureDefMap) for GetModelMetadata."""
        started = time.perf_counter()
        status = Code.OK
        try:
            with self.manager.acquire(target.name, target.version, target.label) as handle:
                return handle.version, handle.servable.signature_def_map()
        except ServingError as error:
            status = error.code
            raise
        finally:
            self._record(target.name, None, "GetModelMetadata", entrypoint, status, started)

    def status(self, target: Target) -> list[VersionStatus]:
        return self.manager.status(target.name, target.version, target.label)

    def _record(
        self, name: str, version: int | None, api: str, entrypoint: str, status: Code, started: float,
        items: int = 0,
    ) -> None:
        latency_us = (time.perf_counter() - started) * 1e6
        self.metrics.record_request(name, api, entrypoint, status.name, latency_us)
        if api != "GetModelMetadata" and status is not Code.NOT_FOUND:
            self.windows.record(name, version, latency_us / 1e3, status is Code.OK)
            if version is not None:
                self.statistics.record(name, version, status is Code.OK, int(latency_us * 1e3), items)


def _batch_rows(inputs: dict[str, np.ndarray]) -> int:
    """The items a request carried: its inputs' common first dimension (1 for unbatched inputs)."""
    sizes = {array.shape[0] if array.ndim else 1 for array in inputs.values()}
    return sizes.pop() if len(sizes) == 1 else 1


def _batchable(inputs: dict[str, np.ndarray]) -> bool:
    if not inputs:
        return False
    sizes = {array.shape[0] if array.ndim else None for array in inputs.values()}
    return len(sizes) == 1 and None not in sizes and 0 not in sizes


def _select_outputs(signature: SignatureSpec, output_filter: Sequence[str]) -> list[str]:
    if not output_filter:
        return list(signature.outputs)
    chosen = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid_argument(f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                                   f"the set {{{','.join(signature.outputs)}}}.")
        if alias in chosen:
            raise invalid_argument(f"duplicate output tensor alias in output_filter: {alias}")
        chosen.append(alias)
    return chosen


def serialized_examples(input_proto) -> list[bytes]:
    """The serialized tf.Examples of a gRPC ``Input``, context merged in (an example's own features win)."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        examples = list(input_proto.example_list.examples)
        context = None
    elif kind == "example_list_with_context":
        examples = list(input_proto.example_list_with_context.examples)
        context = input_proto.example_list_with_context.context
    else:
        raise invalid_argument("Input is empty: it holds no example_list or example_list_with_context")
    if not examples:
        raise invalid_argument("Input is empty: it holds no examples")
    if context is None:
        return [example.SerializeToString() for example in examples]
    merged = []
    for example in examples:
        combined = type(example)()
        combined.CopyFrom(context)
        for key, feature in example.features.feature.items():
            combined.features.feature[key].CopyFrom(feature)
        merged.append(combined.SerializeToString())
    return merged


def replay_warmup_record(servable: Servable, record) -> None:
    """Run one PredictionLog record against a freshly loaded servable (blocking)."""
    kind = record.WhichOneof("log_type")
    if kind == "predict_log":
        request = record.predict_log.request
        signature = servable.signature(request.model_spec.signature_name or DEFAULT_SIGNATURE)
        inputs = tensor_proto.decode_tensor_protos(request.inputs, signature)
        servable.run(signature, inputs, _select_outputs(signature, list(request.output_filter)))
    elif kind in ("classify_log", "regress_log"):
        request = getattr(record, kind).request
        signature = servable.signature(request.model_spec.signature_name or DEFAULT_SIGNATURE)
        method = servable.classify if kind == "classify_log" else servable.regress
        method(signature, serialized_examples(request.input))
    elif kind == "multi_inference_log":
        request = record.multi_inference_log.request
        examples = serialized_examples(request.input)
        for task in request.tasks:
            signature = servable.signature(task.model_spec.signature_name or DEFAULT_SIGNATURE)
            method = servable.classify if task.method_name.endswith("classify") else servable.regress
            method(signature, examples)
    else:
        raise invalid_argument(f"Unsupported warmup log type: {kind}")
