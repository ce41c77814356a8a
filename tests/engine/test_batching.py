"""The batch scheduler's semantics, driven through a real numpy model (no timing assertions).

Where a test needs batches to form in a known way, it holds the model's only batch thread
on a ``threading.Event`` (the first request runs at once and blocks), queues the rest, then
releases it: batch composition is then decided by the scheduler's rules alone.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from jupyter_tfserve.engine.batching import BatchScheduler
from jupyter_tfserve.engine.batching_options import BatchingOptions
from jupyter_tfserve.engine.errors import Code, ServingError
from jupyter_tfserve.engine.protos import BatchingParameters, parse_text

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "testdata" / "tfserving"
LONG = 10_000_000  # a batch timeout no test waits for


class Model:
    """y = 2x; ``row`` = each row's index in the batch. Records every batch; optionally held on a gate."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[np.ndarray] = []
        self.gate = gate
        self.lock = threading.Lock()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.gate is not None:
            assert self.gate.wait(10), "the test never released the model"
        x = inputs["x"]
        with self.lock:
            self.batches.append(x.copy())
        return {"y": x * 2, "row": np.arange(len(x))}

    @property
    def sizes(self) -> list[int]:
        return [len(batch) for batch in self.batches]


class Observer:
    def __init__(self) -> None:
        self.calls: list[dict] = []

    def on_batch(self, **values) -> None:
        self.calls.append(values)


def request(*values: float) -> dict[str, np.ndarray]:
    return {"x": np.array(values, np.float32)}


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def first(answer) -> float:
    return float(answer["y"][0])


def test_batches_close_when_full():
    async def main():
        model = Model()
        for threads in (1, 2):
            model.batches.clear()
            scheduler = BatchScheduler(model, BatchingOptions(max_batch_size=4, batch_timeout_micros=LONG,
                                                              num_batch_threads=threads))
            answers = await asyncio.gather(*(scheduler.submit(request(i)) for i in range(8)))
            assert [first(a) for a in answers] == [2 * i for i in range(8)]
            assert [list(a["row"]) for a in answers] == [[i % 4] for i in range(8)]
            assert model.sizes == [4, 4]
    run(main())


def test_a_lone_request_leaves_when_its_timeout_expires():
    async def main():
        model = Model()
        scheduler = BatchScheduler(model, BatchingOptions(max_batch_size=64, batch_timeout_micros=20_000))
        answer = await scheduler.submit(request(3))
        np.testing.assert_array_equal(answer["y"], [6])
        assert model.sizes == [1]
    run(main())


def test_zero_timeout_runs_at_once_and_batches_while_threads_are_busy():
    async def main():
        gate = threading.Event()
        model = Model(gate)
        scheduler = BatchScheduler(model, BatchingOptions(max_batch_size=16, num_batch_threads=1))
        blocker = asyncio.ensure_future(scheduler.submit(request(0)))
        await asyncio.sleep(0)
        assert scheduler.running_batches == 1  # taken at once: nothing waits for a timeout
        rest = [asyncio.ensure_future(scheduler.submit(request(i))) for i in range(1, 6)]
        await asyncio.sleep(0)
        gate.set()
        answers = await asyncio.gather(blocker, *rest)
        assert [first(a) for a in answers] == [0, 2, 4, 6, 8, 10]
        assert model.sizes == [1, 5]
    run(main())


def test_a_batch_thread_runs_queued_batches_while_the_event_loop_is_busy():
    """TF Serving's batch threads never wait for the front end: ours take the next batch themselves."""
    async def main():
        gate = threading.Event()
        model = Model(gate)
        scheduler = BatchScheduler(model, BatchingOptions(max_batch_size=2, max_enqueued_batches=4,
                                                          num_batch_threads=1))
        blocker = asyncio.ensure_future(scheduler.submit(request(0)))
        await asyncio.sleep(0)
        queued = [asyncio.ensure_future(scheduler.submit(request(i))) for i in range(1, 5)]  # [1,2] [3,4]
        await asyncio.sleep(0)
        assert model.sizes == [] and scheduler.queued_batches == 2
        gate.set()
        deadline = time.monotonic() + 10
        while len(model.sizes) < 3 and time.monotonic() < deadline:
            time.sleep(0.005)  # the event loop is blocked: only the batch thread can move
        assert model.sizes == [1, 2, 2]
        answers = await asyncio.gather(blocker, *queued)
        assert [first(a) for a in answers] == [0, 2, 4, 6, 8]
        assert scheduler.running_batches == 0
    run(main())


def test_a_timed_out_batch_keeps_filling_until_a_thread_is_free():
    async def main():
        gate = threading.Event()
        model = Model(gate)
        with ThreadPoolExecutor(1) as executor:
            scheduler = BatchScheduler(model, BatchingOptions(max_batch_size=16, batch_timeout_micros=1000,
                                                              num_batch_threads=1), executor=executor)
            blocker = asyncio.ensure_future(scheduler.submit(request(0)))
            await asyncio.sleep(0.01)  # its timeout has passed: it runs and blocks
            early = asyncio.ensure_future(scheduler.submit(request(1)))
            await asyncio.sleep(0.01)  # its timeout passes too, but no thread is free
            late = asyncio.ensure_future(scheduler.submit(request(2)))
            await asyncio.sleep(0)
            gate.set()
            await asyncio.gather(blocker, early, late)
        assert model.sizes == [1, 2]
    run(main())


def test_padding_to_allowed_sizes_is_invisible_to_callers():
    async def main():
        gate = threading.Event()
        model, observer = Model(gate), Observer()
        options = BatchingOptions(max_batch_size=8, allowed_batch_sizes=(2, 4, 8), num_batch_threads=1)
        scheduler = BatchScheduler(model, options, observer=observer)
        blocker = asyncio.ensure_future(scheduler.submit(request(7)))
        await asyncio.sleep(0)
        a = asyncio.ensure_future(scheduler.submit(request(1, 2, 3)))
        b = asyncio.ensure_future(scheduler.submit(request(4, 5)))
        await asyncio.sleep(0)
        gate.set()
        answers = await asyncio.gather(blocker, a, b)
        assert model.sizes == [2, 8]
        np.testing.assert_array_equal(model.batches[0], [7, 7])  # pad rows copy the batch's first row
        np.testing.assert_array_equal(model.batches[1], [1, 2, 3, 4, 5, 1, 1, 1])
        np.testing.assert_array_equal(answers[0]["y"], [14])
        np.testing.assert_array_equal(answers[1]["y"], [2, 4, 6])
        np.testing.assert_array_equal(answers[1]["row"], [0, 1, 2])
        np.testing.assert_array_equal(answers[2]["y"], [8, 10])
        np.testing.assert_array_equal(answers[2]["row"], [3, 4])
        assert [(c["input_batch_size"], c["processed_batch_size"], c["padding_size"]) for c in observer.calls] == [
            (1, 2, 1), (5, 8, 3)]
        assert [len(c["queue_latencies_us"]) for c in observer.calls] == [1, 2]
        assert all(latency >= 0 for c in observer.calls for latency in c["queue_latencies_us"])
    run(main())


def test_64_concurrent_requests_each_get_their_own_rows_and_stay_whole():
    async def main():
        model = Model()
        with ThreadPoolExecutor(4) as executor:
            scheduler = BatchScheduler(model, BatchingOptions(max_batch_size=16, batch_timeout_micros=1000,
                                                              num_batch_threads=2), executor=executor)
            payloads = [request(*(i * 100 + j for j in range(1 + i % 3))) for i in range(64)]
            answers = await asyncio.gather(*(scheduler.submit(p) for p in payloads))
        for payload, answer in zip(payloads, answers, strict=True):
            np.testing.assert_array_equal(answer["y"], payload["x"] * 2)
            rows = answer["row"]
            np.testing.assert_array_equal(rows, np.arange(rows[0], rows[0] + len(payload["x"])))
        assert sum(model.sizes) == sum(len(p["x"]) for p in payloads)
        assert max(model.sizes) <= 16
        for batch in model.batches:  # every request's items are contiguous, whole, within one batch
            owners = [int(v) // 100 for v in batch]
            assert owners == sorted(owners)
            for owner in set(owners):
                assert owners.count(owner) == 1 + owner % 3
    run(main())


def test_multi_item_requests_are_never_split_without_splitting():
    async def main():
        model = Model()
        scheduler = BatchScheduler(model, BatchingOptions(max_batch_size=4, batch_timeout_micros=LONG,
                                                          num_batch_threads=1))
        a = asyncio.ensure_future(scheduler.submit(request(1, 2, 3)))
        b = asyncio.ensure_future(scheduler.submit(request(4, 5, 6)))  # does not fit: closes a's batch
        c = asyncio.ensure_future(scheduler.submit(request(7)))  # fills b's batch
        answers = await asyncio.gather(a, b, c)
        assert [batch.tolist() for batch in model.batches] == [[1, 2, 3], [4, 5, 6, 7]]
        assert [a["y"].tolist() for a in answers] == [[2, 4, 6], [8, 10, 12], [14]]
    run(main())


def test_a_full_queue_answers_unavailable_at_once():
    async def main():
        gate = threading.Event()
        model = Model(gate)
        options = BatchingOptions(max_batch_size=1, max_enqueued_batches=2, num_batch_threads=1)
        with ThreadPoolExecutor(2) as executor:
            scheduler = BatchScheduler(model, options, executor=executor, name="m/1/serving_default")
            running = asyncio.ensure_future(scheduler.submit(request(0)))
            await asyncio.sleep(0)  # the first batch was handed to the thread (blocked on the gate)
            queued = [asyncio.ensure_future(scheduler.submit(request(i))) for i in (1, 2)]
            await asyncio.sleep(0)
            assert scheduler.queued_batches == 2
            with pytest.raises(ServingError) as caught:
                await scheduler.submit(request(3))
            assert caught.value.code is Code.UNAVAILABLE
            assert "The batch scheduling queue" in caught.value.message and "is full" in caught.value.message
            gate.set()
            answers = await asyncio.gather(running, *queued)
            assert [first(a) for a in answers] == [0, 2, 4]
            assert first(await scheduler.submit(request(3))) == 6  # room again once drained
    run(main())


def test_bad_requests_are_invalid_arguments():
    async def main():
        scheduler = BatchScheduler(Model(), BatchingOptions(max_batch_size=4))
        bad = [
            (request(*range(5)), "Task size 5 is larger than maximum input batch size 4"),
            ({"x": np.zeros(3), "z": np.zeros(2)}, "same size in dimension 0"),
            ({"x": np.float32(1)}, "scalar"),
            ({}, "at least one input"),
        ]
        for inputs, message in bad:
            with pytest.raises(ServingError) as caught:
                await scheduler.submit(inputs)
            assert caught.value.code is Code.INVALID_ARGUMENT
            assert message in caught.value.message
        empty = await scheduler.submit({"x": np.zeros(0, np.float32)})
        assert empty["y"].shape == (0,)
    run(main())


def test_large_batch_splitting_spreads_a_request_and_rejoins_it_in_order():
    async def main():
        gate = threading.Event()
        model = Model(gate)
        options = BatchingOptions(max_batch_size=100, enable_large_batch_splitting=True, max_execution_batch_size=4,
                                  num_batch_threads=1, batch_timeout_micros=LONG)
        scheduler = BatchScheduler(model, options)
        blocker = asyncio.ensure_future(scheduler.submit(request(*range(100, 104))))  # full: runs, blocks
        await asyncio.sleep(0)
        small = asyncio.ensure_future(scheduler.submit(request(50)))
        big = asyncio.ensure_future(scheduler.submit(request(*range(10))))  # 3 top up small's batch, 4, 3
        await asyncio.sleep(0)
        gate.set()
        answers = await asyncio.gather(blocker, small, big, scheduler.close())  # close flushes the open [7, 8, 9]
        assert [batch.tolist() for batch in model.batches] == [
            [100, 101, 102, 103], [50, 0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
        np.testing.assert_array_equal(answers[2]["y"], np.arange(10) * 2)
        np.testing.assert_array_equal(answers[2]["row"], [1, 2, 3, 0, 1, 2, 3, 0, 1, 2])
        np.testing.assert_array_equal(answers[1]["y"], [100])
    run(main())


def test_a_split_request_is_refused_whole_when_the_queue_cannot_take_it():
    async def main():
        gate = threading.Event()
        model = Model(gate)
        options = BatchingOptions(max_batch_size=100, enable_large_batch_splitting=True, max_execution_batch_size=2,
                                  max_enqueued_batches=3, num_batch_threads=1)
        scheduler = BatchScheduler(model, options)
        blocker = asyncio.ensure_future(scheduler.submit(request(0)))
        await asyncio.sleep(0)
        with pytest.raises(ServingError) as caught:
            await scheduler.submit(request(*range(7)))  # 4 batches needed, 3 allowed
        assert caught.value.code is Code.UNAVAILABLE
        assert scheduler.queued_batches == 0  # nothing of it was left behind
        fits = asyncio.ensure_future(scheduler.submit(request(*range(6))))
        await asyncio.sleep(0)
        gate.set()
        await blocker
        np.testing.assert_array_equal((await fits)["y"], np.arange(6) * 2)
        assert model.sizes == [1, 2, 2, 2]
    run(main())


def test_update_options_applies_to_open_and_later_batches_without_losing_requests():
    async def main():
        gate = threading.Event()
        model = Model(gate)
        scheduler = BatchScheduler(model, BatchingOptions(max_batch_size=2, batch_timeout_micros=LONG,
                                                          num_batch_threads=1))
        blocker = asyncio.ensure_future(scheduler.submit(request(0, 0)))  # full: runs at once, blocks
        await asyncio.sleep(0)
        pending = [asyncio.ensure_future(scheduler.submit(request(i))) for i in (1, 2, 3)]  # [1, 2] closed, [3] open
        await asyncio.sleep(0)
        scheduler.update_options(BatchingOptions(max_batch_size=4, batch_timeout_micros=LONG, num_batch_threads=1))
        assert scheduler.options.max_batch_size == 4
        pending += [asyncio.ensure_future(scheduler.submit(request(i))) for i in (4, 5, 6)]  # fill [3] up to 4
        await asyncio.sleep(0)
        gate.set()
        answers = await asyncio.gather(blocker, *pending)
        assert model.sizes == [2, 2, 4]
        assert [a["y"].tolist() for a in answers] == [[0, 0], [2], [4], [6], [8], [10], [12]]
        # Shrinking below an open batch's size closes it; nothing is lost.
        opened = [asyncio.ensure_future(scheduler.submit(request(i))) for i in (7, 8, 9)]
        await asyncio.sleep(0)
        scheduler.update_options(BatchingOptions(max_batch_size=1, batch_timeout_micros=LONG, num_batch_threads=1))
        more = await scheduler.submit(request(10))
        assert [first(a) for a in await asyncio.gather(*opened)] == [14, 16, 18]
        assert first(more) == 20
        assert model.sizes[-2:] == [3, 1]
    run(main())


def test_update_options_to_a_zero_timeout_releases_waiting_requests():
    async def main():
        model = Model()
        scheduler = BatchScheduler(model, BatchingOptions(max_batch_size=8, batch_timeout_micros=LONG))
        waiting = asyncio.ensure_future(scheduler.submit(request(1)))
        await asyncio.sleep(0)
        scheduler.update_options(BatchingOptions(max_batch_size=8))
        assert first(await waiting) == 2
    run(main())


def test_a_failing_batch_fails_all_its_members_and_the_scheduler_keeps_working():
    async def main():
        calls = []

        def flaky(inputs):
            calls.append(len(inputs["x"]))
            if len(calls) == 1:
                raise ValueError("boom")
            if len(calls) == 2:
                raise ServingError(Code.RESOURCE_EXHAUSTED, "out of memory")
            if len(calls) == 3:
                return {"y": np.zeros(1)}  # wrong batch dimension
            return {"y": inputs["x"] + 1}

        scheduler = BatchScheduler(flaky, BatchingOptions(max_batch_size=2, batch_timeout_micros=LONG))
        for code, text in ((Code.INTERNAL, "boom"), (Code.RESOURCE_EXHAUSTED, "out of memory"),
                           (Code.INTERNAL, "expected its dimension 0 to be the batch size 2")):
            results = await asyncio.gather(scheduler.submit(request(1)), scheduler.submit(request(2)),
                                           return_exceptions=True)
            assert all(isinstance(r, ServingError) and r.code is code and text in r.message for r in results)
        answers = await asyncio.gather(scheduler.submit(request(1)), scheduler.submit(request(2)))
        assert [first(a) for a in answers] == [2, 3]
        assert calls == [2, 2, 2, 2]
    run(main())


def test_variable_length_inputs_are_padded_with_zeros_and_empty_strings():
    async def main():
        seen = []

        def model(inputs):
            seen.append({k: v.copy() for k, v in inputs.items()})
            return {"y": inputs["x"] * 2, "s": inputs["s"]}

        options = BatchingOptions(max_batch_size=4, batch_timeout_micros=LONG, num_batch_threads=1,
                                  pad_variable_length_inputs=True, allowed_batch_sizes=(4,))
        scheduler = BatchScheduler(model, options)
        short = {"x": np.ones((1, 2), np.float32), "s": np.array([[b"a"]], object)}
        long = {"x": np.full((2, 3), 3, np.float32), "s": np.array([[b"b", b"c"], [b"d", b"e"]], object)}
        answers = await asyncio.gather(scheduler.submit(short), scheduler.submit(long), scheduler.close())
        (batch,) = seen
        np.testing.assert_array_equal(batch["x"], [[1, 1, 0], [3, 3, 3], [3, 3, 3], [1, 1, 0]])
        assert batch["s"].tolist() == [[b"a", b""], [b"b", b"c"], [b"d", b"e"], [b"a", b""]]
        np.testing.assert_array_equal(answers[0]["y"], [[2, 2, 0]])
        np.testing.assert_array_equal(answers[1]["y"], [[6, 6, 6], [6, 6, 6]])
        assert answers[0]["s"].tolist() == [[b"a", b""]]
    run(main())


def test_without_padding_mismatched_shapes_get_separate_batches():
    async def main():
        gate = threading.Event()
        model = Model(gate)
        scheduler = BatchScheduler(model, BatchingOptions(max_batch_size=8, num_batch_threads=1))
        blocker = asyncio.ensure_future(scheduler.submit(request(0)))
        await asyncio.sleep(0)
        short, long = {"x": np.ones((1, 2), np.float32)}, {"x": np.ones((1, 3), np.float32)}
        other_dtype = {"x": np.ones((1, 2), np.float64)}
        answers = [asyncio.ensure_future(scheduler.submit(r)) for r in (short, long, short, other_dtype, long)]
        await asyncio.sleep(0)
        gate.set()
        answers = await asyncio.gather(blocker, *answers)
        assert [a["y"].shape for a in answers[1:]] == [(1, 2), (1, 3), (1, 2), (1, 2), (1, 3)]
        assert answers[4]["y"].dtype == np.float64
        assert [(b.shape, b.dtype) for b in model.batches[1:]] == [
            ((2, 2), np.float32), ((2, 3), np.float32), ((1, 2), np.float64)]
    run(main())


def test_a_cancelled_caller_is_dropped_from_its_batch():
    async def main():
        gate = threading.Event()
        model = Model(gate)
        scheduler = BatchScheduler(model, BatchingOptions(max_batch_size=8, num_batch_threads=1))
        blocker = asyncio.ensure_future(scheduler.submit(request(0)))
        await asyncio.sleep(0)
        callers = [asyncio.ensure_future(scheduler.submit(request(i))) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        callers[1].cancel()
        await asyncio.sleep(0)
        gate.set()
        await blocker
        assert first(await callers[0]) == 2 and first(await callers[2]) == 6
        assert callers[1].cancelled()
        assert [batch.tolist() for batch in model.batches] == [[0], [1, 3]]
    run(main())


def test_close_drains_the_queue_then_refuses():
    async def main():
        gate = threading.Event()
        model = Model(gate)
        scheduler = BatchScheduler(model, BatchingOptions(max_batch_size=2, batch_timeout_micros=LONG,
                                                          num_batch_threads=1))
        pending = [asyncio.ensure_future(scheduler.submit(request(i))) for i in range(5)]  # [0,1] [2,3] [4]
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(scheduler.close())
        await asyncio.sleep(0)
        with pytest.raises(ServingError) as caught:
            await scheduler.submit(request(9))
        assert caught.value.code is Code.UNAVAILABLE
        assert not closing.done()
        gate.set()
        await closing
        assert all(p.done() for p in pending)
        assert [first(p.result()) for p in pending] == [0, 2, 4, 6, 8]
        assert model.sizes == [2, 2, 1]
        await scheduler.close()  # closing twice is harmless
    run(main())


def test_options_from_tf_serving_batching_parameters():
    params = parse_text(BatchingParameters, "max_batch_size { value: 128 } batch_timeout_micros { value: 0 } "
                        "max_enqueued_batches { value: 1000000 } num_batch_threads { value: 8 } "
                        "allowed_batch_sizes: 64 allowed_batch_sizes: 128 pad_variable_length_inputs: true",
                        "inline")
    options = BatchingOptions.from_proto(params)
    assert options == BatchingOptions(max_batch_size=128, batch_timeout_micros=0, max_enqueued_batches=1000000,
                                      num_batch_threads=8, allowed_batch_sizes=(64, 128),
                                      pad_variable_length_inputs=True)
    options.validate()
    assert BatchingOptions.from_proto(options.to_proto()) == options
    assert BatchingOptions.from_proto(BatchingParameters()) == BatchingOptions()  # unset: defaults
    split = BatchingOptions.from_proto(parse_text(
        BatchingParameters, "max_batch_size { value: 64 } enable_large_batch_splitting { value: true } "
        "max_execution_batch_size { value: 16 } allowed_batch_sizes: [8, 16]", "inline"))
    assert (split.enable_large_batch_splitting, split.max_execution_batch_size, split.execution_batch_size) == (
        True, 16, 16)
    split.validate()
    assert BatchingOptions.from_proto(split.to_proto()) == split


@pytest.mark.shared
def test_options_from_tf_servings_own_batching_config():
    path = SHARED / "batching_config.txt"
    if not path.is_file():
        pytest.skip(f"TF Serving's testdata file {path} is absent (a plain clone has no ../shared)")
    options = BatchingOptions.from_proto(parse_text(BatchingParameters, path.read_text(), str(path)))
    assert (options.max_batch_size, options.batch_timeout_micros, options.max_enqueued_batches,
            options.num_batch_threads) == (128, 0, 1000000, 8)
    options.validate()


def test_options_from_and_to_dicts():
    options = BatchingOptions.from_dict({"max_batch_size": "32", "allowed_batch_sizes": "16,32",
                                         "pad_variable_length_inputs": "true", "batch_timeout_micros": 500.0})
    assert (options.max_batch_size, options.allowed_batch_sizes, options.pad_variable_length_inputs,
            options.batch_timeout_micros) == (32, (16, 32), True, 500)
    assert BatchingOptions.from_dict(options.to_dict()) == options
    assert options.to_dict()["allowed_batch_sizes"] == [16, 32]
    base = BatchingOptions(max_batch_size=8, num_batch_threads=3)
    assert BatchingOptions.from_dict({"batch_timeout_micros": 7}, base) == BatchingOptions(
        max_batch_size=8, num_batch_threads=3, batch_timeout_micros=7)
    assert BatchingOptions.from_dict({"max_batch_size": 8, "allowed_batch_sizes": "[4, 8]"}).allowed_batch_sizes == (
        4, 8)
    assert BatchingOptions(allowed_batch_sizes=[4, 1000]).allowed_batch_sizes == (4, 1000)


@pytest.mark.parametrize("values, fragment", [
    ({"nope": 1}, "unknown batching parameter"),
    ({"max_batch_size": "x"}, "max_batch_size"),
    ({"max_batch_size": True}, "max_batch_size"),
    ({"max_batch_size": 1.5}, "max_batch_size"),
    ({"pad_variable_length_inputs": "maybe"}, "pad_variable_length_inputs"),
    ({"max_batch_size": 0}, "must be positive"),
    ({"num_batch_threads": 0}, "num_batch_threads"),
    ({"max_enqueued_batches": -1}, "max_enqueued_batches"),
    ({"batch_timeout_micros": -1}, "must not be negative"),
    ({"max_batch_size": 8, "allowed_batch_sizes": [4, 2, 8]}, "strictly increasing"),
    ({"max_batch_size": 8, "allowed_batch_sizes": [0, 8]}, "strictly increasing"),
    ({"allowed_batch_sizes": [8]}, "must equal max_batch_size (1000)"),
    ({"max_batch_size": 8, "enable_large_batch_splitting": True, "max_execution_batch_size": 4,
      "allowed_batch_sizes": [4, 8]}, "must equal max_execution_batch_size (4)"),
    ({"max_batch_size": 8, "enable_large_batch_splitting": True, "max_execution_batch_size": 16},
     "must be at least max_execution_batch_size"),
    ({"enable_large_batch_splitting": True, "max_execution_batch_size": 0}, "max_execution_batch_size"),
])
def test_invalid_options_are_invalid_arguments(values, fragment):
    with pytest.raises(ServingError) as caught:
        BatchingOptions.from_dict(values)
    assert caught.value.code is Code.INVALID_ARGUMENT
    assert fragment in caught.value.message


def test_a_scheduler_refuses_invalid_options():
    with pytest.raises(ServingError) as caught:
        BatchScheduler(Model(), BatchingOptions(max_batch_size=4, allowed_batch_sizes=(2,)))
    assert caught.value.code is Code.INVALID_ARGUMENT
