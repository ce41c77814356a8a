"""Server-side batching with TF Serving's ``BatchingParameters`` semantics, on asyncio.

One :class:`BatchScheduler` serves one signature of one servable (TF Serving: one queue
of a ``SharedBatchScheduler`` per servable signature). Requests are queued on the event
loop; a batch thread, once started, runs batches back to back, taking the next one itself
(under a lock) instead of handing back to the event loop between batches. A busy event
loop (parsing hundreds of requests, refusing the overflow) therefore never leaves the
model idle, as TF Serving's batch threads are not. Answers are handed to the callers on
the event loop.

How batches form (as TF Serving's ``SharedBatchScheduler``):

* A request joins the open batch whole. A batch closes when it holds
  ``max_batch_size`` items (``max_execution_batch_size`` when splitting), or when a
  request does not fit in it (a new batch is opened for that request).
* A batch thread takes the oldest closed batch; with none, it takes the open batch if
  ``batch_timeout_micros`` is 0 or its oldest request has waited that long. So with a
  zero timeout, a lone request runs at once, and under load requests pile into the open
  batch while every thread is busy: batching adapts to load with no tuning. A batch that
  timed out while all threads were busy stays open and keeps taking requests until a
  thread is free, as in TF Serving.
* At most ``num_batch_threads`` batches run at once.
* ``max_enqueued_batches`` bounds closed + open batches. A request that would need a new
  batch beyond that is refused at once with UNAVAILABLE (TF Serving's answer), never
  queued without bound.

Choices where TF Serving leaves room, or where we deliberately differ:

* Without ``pad_variable_length_inputs``, requests whose inputs differ in dtype or in any
  dimension beyond the first never share a batch: each such "shape class" has its own
  open batch (all count toward ``max_enqueued_batches``). TF Serving would concatenate
  them and fail the whole batch; here one odd request cannot fail its neighbours. With
  padding on, requests are grouped by input rank and dtype instead, and padded with zeros
  (``b""`` for strings) up to the largest size of each dimension in the batch.
* A caller cancelled while queued is dropped when its batch starts; its items still
  counted toward that batch's size while it waited.
* Options are captured per batch: :meth:`BatchScheduler.update_options` applies to open
  batches (they adopt the new limits and timeout, and are closed if already at the new
  limit) and to every batch formed later; batches already closed run as they were formed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .batching_options import BatchingOptions
from .errors import Code, ServingError, invalid_argument, unavailable

log = logging.getLogger(__name__)

Inputs = dict[str, np.ndarray]
RunBatch = Callable[[Inputs], Inputs]

class BatchObserver(Protocol):
    """Metrics hook, called on the event loop once per batch handed to a batch thread."""

    def on_batch(
        self,
        *,
        queue_latencies_us: Sequence[float],
        input_batch_size: int,
        processed_batch_size: int,
        padding_size: int,
    ) -> None: ...


@dataclass(eq=False, slots=True)
class _Task:
    """One request (or, when splitting, one chunk of a request) waiting in a batch."""

    inputs: Inputs
    size: int
    future: asyncio.Future
    enqueued: float


@dataclass(eq=False, slots=True)
class _Batch:
    key: tuple
    options: BatchingOptions
    created: float
    tasks: list[_Task] = dataclasses.field(default_factory=list)
    size: int = 0
    timed_out: bool = False
    timer: asyncio.TimerHandle | None = None


class BatchScheduler:
    """Batches the requests of one servable signature; see the module docstring for the rules."""

    def __init__(
        self,
        run_batch: RunBatch,
        options: BatchingOptions,
        *,
        executor: concurrent.futures.Executor | None = None,
        name: str = "",
        observer: BatchObserver | None = None,
    ) -> None:
        options.validate()
        self._run_batch = run_batch
        self._options = options
        self._executor = executor
        self.name = name
        self._observer = observer
        self._lock = threading.Lock()  # guards the queue: the event loop fills it, batch threads take from it
        self._open: dict[tuple, _Batch] = {}  # one open batch per shape class, oldest first
        self._closed: deque[_Batch] = deque()
        self._running = 0
        self._closing = False
        self._drained: asyncio.Future | None = None

    @property
    def options(self) -> BatchingOptions:
        return self._options

    @property
    def queued_batches(self) -> int:
        """Closed and open batches not yet handed to a thread (what ``max_enqueued_batches`` bounds)."""
        return len(self._closed) + len(self._open)

    @property
    def running_batches(self) -> int:
        return self._running

    def update_options(self, options: BatchingOptions) -> None:
        """Switch options without losing a queued request; see the module docstring for what changes when."""
        options.validate()
        loop = asyncio.get_running_loop()
        with self._lock:
            old, self._options = self._options, options
            regroup = old.pad_variable_length_inputs != options.pad_variable_length_inputs
            for batch in list(self._open.values()):
                if regroup or batch.size >= options.execution_batch_size:
                    self._close(batch)  # keeps the options it was formed under
                    continue
                batch.options = options
                if batch.timer is not None:
                    batch.timer.cancel()
                    batch.timer = None
                timeout = options.batch_timeout_micros / 1e6
                remaining = batch.created + timeout - time.perf_counter()
                if options.batch_timeout_micros == 0 or remaining <= 0 or self._closing:
                    batch.timed_out = True
                else:
                    batch.timed_out = False
                    batch.timer = loop.call_later(remaining, self._on_timeout, batch)
        self._dispatch()

    async def submit(self, inputs: Inputs) -> Inputs:
        """Queue one request and wait for its rows of the batch's outputs.

        Raises INVALID_ARGUMENT for inputs that cannot be batched or are too large,
        UNAVAILABLE when the queue is full or the scheduler is closing, and whatever
        ``run_batch`` raised for the batch (non-``ServingError`` wrapped as INTERNAL).
        """
        if self._closing:
            raise unavailable(f"The batch scheduler {self.name} is shutting down")
        size = _request_size(inputs)
        options = self._options
        if size > options.max_batch_size:
            raise invalid_argument(f"Task size {size} is larger than maximum input batch size "
                                   f"{options.max_batch_size}")
        with self._lock:
            futures = self._enqueue(inputs, size, options)
        self._dispatch()
        if len(futures) == 1:
            return await futures[0]
        parts = await asyncio.gather(*futures)
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    async def close(self) -> None:
        """Refuse new requests (UNAVAILABLE), run everything already queued, then return."""
        with self._lock:
            self._closing = True
            for batch in self._open.values():
                if batch.timer is not None:
                    batch.timer.cancel()
                    batch.timer = None
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        self._dispatch()
        await asyncio.shield(self._drained)

    # -- queueing (event loop, under the lock) --------------------------------------------------

    def _enqueue(self, inputs: Inputs, size: int, options: BatchingOptions) -> list[asyncio.Future]:
        """Place a request (or its chunks) in batches, all or nothing, and return its future(s)."""
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        key = _shape_key(inputs, options.pad_variable_length_inputs)
        limit = options.execution_batch_size
        batch = self._open.get(key)
        room = limit - batch.size if batch is not None else 0
        if batch is not None and size <= room:  # the common case: it fits in the open batch
            future = loop.create_future()
            self._append(batch, _Task(inputs, size, future, now))
            return [future]
        if not options.enable_large_batch_splitting or size == 0:
            self._check_room(1, options)
            if batch is not None:
                self._close(batch)
            future = loop.create_future()
            self._append(self._new_batch(key, options, now, loop), _Task(inputs, size, future, now))
            return [future]
        # Large batch splitting: top up the open batch, then fill new batches of `limit` items.
        self._check_room(math.ceil((size - room) / limit), options)
        futures = []
        start = 0
        while start < size:
            if batch is None or batch.size >= limit:
                batch = self._new_batch(key, options, now, loop)
            stop = min(size, start + limit - batch.size)
            chunk = inputs if (start, stop) == (0, size) else {k: v[start:stop] for k, v in inputs.items()}
            future = loop.create_future()
            self._append(batch, _Task(chunk, stop - start, future, now))
            futures.append(future)
            start = stop
            if self._open.get(key) is not batch:
                batch = None  # it filled up and was closed
        return futures

    def _check_room(self, new_batches: int, options: BatchingOptions) -> None:
        if self.queued_batches + new_batches > options.max_enqueued_batches:
            raise unavailable(
                f"The batch scheduling queue to which this task was submitted is full ({self.name or 'unnamed'}: "
                f"max_enqueued_batches is {options.max_enqueued_batches})")

    def _new_batch(self, key: tuple, options: BatchingOptions, now: float, loop: asyncio.AbstractEventLoop) -> _Batch:
        batch = _Batch(key, options, now)
        if options.batch_timeout_micros > 0 and not self._closing:
            batch.timer = loop.call_later(options.batch_timeout_micros / 1e6, self._on_timeout, batch)
        self._open[key] = batch
        return batch

    def _append(self, batch: _Batch, task: _Task) -> None:
        batch.tasks.append(task)
        batch.size += task.size
        if batch.size >= batch.options.execution_batch_size:
            self._close(batch)

    def _close(self, batch: _Batch) -> None:
        if self._open.get(batch.key) is batch:
            del self._open[batch.key]
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        self._closed.append(batch)

    def _on_timeout(self, batch: _Batch) -> None:
        with self._lock:
            batch.timer = None
            batch.timed_out = True
        self._dispatch()

    def _next_batch(self) -> _Batch | None:
        """The oldest batch a free thread may take: a closed one, or an open one whose time is up."""
        candidate = self._closed[0] if self._closed else None
        for batch in self._open.values():
            if batch.timed_out or self._closing or batch.options.batch_timeout_micros == 0:
                if candidate is None or batch.created < candidate.created:
                    candidate = batch
                break  # later open batches are younger
        if candidate is None:
            return None
        if self._closed and candidate is self._closed[0]:
            self._closed.popleft()
        else:
            del self._open[candidate.key]
        return candidate

    def _take(self) -> tuple[_Batch, list[_Task]] | None:
        """Under the lock: the next batch to run, with its callers still waiting (cancelled ones dropped)."""
        while True:
            batch = self._next_batch()
            if batch is None:
                return None
            tasks = [task for task in batch.tasks if not task.future.done()]
            if tasks:
                return batch, tasks

    def _dispatch(self) -> None:
        """Event loop: start batch threads while there is work and a thread to spare."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._running >= self._options.num_batch_threads:
                    break
                taken = self._take()
                if taken is None:
                    break
                self._running += 1
            # Timers live on the event loop, so only here can an open batch's timeout be cancelled;
            # one taken by a batch thread is left to fire and finds its batch gone from the queue.
            if taken[0].timer is not None:
                taken[0].timer.cancel()
                taken[0].timer = None
            try:
                loop.run_in_executor(self._executor, self._work, *taken, loop)
            except RuntimeError as error:  # the executor was shut down under us
                with self._lock:
                    self._running -= 1
                _fail(taken[1], unavailable(f"The batch scheduler {self.name} cannot run batches: {error}"))
                break
        self._check_drained()

    def _check_drained(self) -> None:
        drained = self._drained
        if drained is not None and not drained.done() and not (self._running or self._closed or self._open):
            drained.set_result(None)

    def _work(self, batch: _Batch, tasks: list[_Task], loop: asyncio.AbstractEventLoop) -> None:
        """Batch thread: run batches back to back while the queue has one ready, then return the thread."""
        while True:
            size = sum(task.size for task in tasks)
            processed = _padded_size(size, batch.options.allowed_batch_sizes)
            self._observe(tasks, size, processed)
            outputs, error = None, None
            try:
                outputs = _process(self._run_batch, [task.inputs for task in tasks], size, processed,
                                   batch.options.pad_variable_length_inputs)
            except Exception as caught:  # delivered to the batch's callers
                error = caught
            with self._lock:
                taken = self._take() if self._running <= self._options.num_batch_threads else None
                if taken is None:
                    self._running -= 1
            try:
                loop.call_soon_threadsafe(self._deliver, tasks, outputs, error)
                if taken is None:
                    loop.call_soon_threadsafe(self._check_drained)
            except RuntimeError:  # the event loop is closed: nobody waits for these answers any more
                pass
            if taken is None:
                return
            batch, tasks = taken

    def _observe(self, tasks: list[_Task], size: int, processed: int) -> None:
        if self._observer is None:
            return
        started = time.perf_counter()
        try:
            self._observer.on_batch(
                queue_latencies_us=[(started - task.enqueued) * 1e6 for task in tasks],
                input_batch_size=size,
                processed_batch_size=processed,
                padding_size=processed - size,
            )
        except Exception:
            log.exception("batch observer of %s failed", self.name)

    def _deliver(self, tasks: list[_Task], outputs: Inputs | None, error: BaseException | None) -> None:
        """Event loop: each caller gets its rows of the batch's outputs, or the batch's error."""
        if error is not None:
            if not isinstance(error, ServingError):
                log.debug("batch of %s failed", self.name, exc_info=error)
                error = ServingError(Code.INTERNAL, str(error) or type(error).__name__)
            _fail(tasks, error)
            return
        if len(tasks) == 1:
            task = tasks[0]
            if not task.future.done():
                processed = next(iter(outputs.values())).shape[0] if outputs else task.size
                task.future.set_result(outputs if processed == task.size else
                                       {k: v[:task.size] for k, v in outputs.items()})
            return
        offset = 0
        for task in tasks:
            end = offset + task.size
            if not task.future.done():
                task.future.set_result({k: v[offset:end] for k, v in outputs.items()})
            offset = end


def _fail(tasks: list[_Task], error: BaseException) -> None:
    for task in tasks:
        if not task.future.done():
            task.future.set_exception(error)


def _request_size(inputs: Inputs) -> int:
    """Dim 0 shared by every input: the request's item count."""
    if not inputs:
        raise invalid_argument("Batching needs at least one input tensor")
    size = -1
    for key, array in inputs.items():
        if array.ndim == 0:
            raise invalid_argument(f"Input {key} is a scalar; batching needs a batch dimension (dimension 0)")
        if size < 0:
            size = array.shape[0]
        elif array.shape[0] != size:
            raise invalid_argument(
                "Batching requires every input to have the same size in dimension 0; got "
                + ", ".join(f"{k}: {v.shape[0] if v.ndim else 'scalar'}" for k, v in inputs.items()))
    return size


def _shape_key(inputs: Inputs, pad: bool) -> tuple:
    """Requests with equal keys can be concatenated into one batch."""
    if pad:
        key = [(name, array.dtype, array.ndim) for name, array in inputs.items()]
    else:
        key = [(name, array.dtype, array.shape[1:]) for name, array in inputs.items()]
    if len(key) > 1:
        key.sort(key=lambda item: item[0])
    return tuple(key)


def _padded_size(size: int, allowed: tuple[int, ...]) -> int:
    """The smallest allowed batch size that holds ``size`` items (``size`` itself if none is set)."""
    if size == 0:
        return 0
    for candidate in allowed:
        if candidate >= size:
            return candidate
    return size


def _process(run_batch: RunBatch, requests: list[Inputs], size: int, processed: int, pad: bool) -> Inputs:
    """Batch thread: concatenate (and pad), run the model, check the outputs' batch dimension."""
    inputs = _concatenate(requests, size, processed, pad)
    outputs = run_batch(inputs)
    for key, value in outputs.items():
        if not isinstance(value, np.ndarray):
            value = outputs[key] = np.asarray(value)
        if value.ndim == 0 or value.shape[0] != processed:
            raise ServingError(Code.INTERNAL, f"Batched output {key} has shape {list(value.shape)}; expected its "
                                              f"dimension 0 to be the batch size {processed}")
    return outputs


def _pad_value(dtype: np.dtype) -> Any:
    if dtype.kind in "OS":
        return b""
    if dtype.kind == "U":
        return ""
    return 0


def _concatenate(requests: list[Inputs], size: int, processed: int, pad: bool) -> Inputs:
    """One array per input: requests' rows in order, then ``processed - size`` copies of the first row."""
    extra = processed - size
    if len(requests) == 1 and not extra:
        return requests[0]
    batched = {}
    for key, first in requests[0].items():
        arrays = [request[key] for request in requests]
        if pad and first.ndim > 1 and any(array.shape[1:] != first.shape[1:] for array in arrays):
            batched[key] = _pad_and_stack(arrays, size, processed)
            continue
        if extra:
            arrays.append(np.broadcast_to(first[:1], (extra, *first.shape[1:])))
        batched[key] = np.concatenate(arrays)
    return batched


def _pad_and_stack(arrays: list[np.ndarray], size: int, processed: int) -> np.ndarray:
    """``pad_variable_length_inputs``: one allocation, each request copied into its corner."""
    inner = tuple(max(dims) for dims in zip(*(array.shape[1:] for array in arrays), strict=True))
    out = np.full((processed, *inner), _pad_value(arrays[0].dtype), dtype=arrays[0].dtype)
    offset = 0
    for array in arrays:
        out[(slice(offset, offset + array.shape[0]), *(slice(0, d) for d in array.shape[1:]))] = array
        offset += array.shape[0]
    if processed > size:
        out[size:] = out[:1]
    return out
