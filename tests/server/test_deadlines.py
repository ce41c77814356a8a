"""Per-request deadlines: an overrunning call ends with DeadlineExceeded, everything else is left as it was."""

from __future__ import annotations

import asyncio
import time

import pytest

from jupyter_tfserve.server.deadlines import GRAIN_SECONDS, DeadlineExceeded, Deadlines


async def _sleep_then(seconds: float, value: str = "done") -> str:
    await asyncio.sleep(seconds)
    return value


def test_a_call_that_ends_in_time_returns_its_value_and_leaves_no_cancellation():
    async def main():
        deadlines = Deadlines()
        assert await deadlines.run(1.0, _sleep_then(0.01)) == "done"
        assert asyncio.current_task().cancelling() == 0
        await asyncio.sleep(0)  # no cancellation is pending for this task

    asyncio.run(main())


def test_an_overrunning_call_is_cancelled_within_one_grain_of_its_deadline():
    async def main():
        deadlines = Deadlines()
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await deadlines.run(0.05, _sleep_then(5))
        elapsed = time.monotonic() - started
        assert 0.05 <= elapsed < 0.05 + GRAIN_SECONDS + 0.5  # bounded: the loop may be slow under load
        assert asyncio.current_task().cancelling() == 0
        assert await _sleep_then(0.01, "after") == "after"  # the task goes on normally

    asyncio.run(main())


def test_many_calls_share_a_slot_and_only_the_slow_ones_time_out():
    async def main():
        deadlines = Deadlines()

        async def one(seconds):
            try:
                return await deadlines.run(0.1, _sleep_then(seconds))
            except DeadlineExceeded:
                return "late"

        results = await asyncio.gather(*(one(0.01 if i % 2 else 1.0) for i in range(200)))
        assert results == ["done" if i % 2 else "late" for i in range(200)]
        assert not deadlines._slots, "every slot's timer fired and let go of its tasks"

    asyncio.run(main())


def test_a_cancellation_from_elsewhere_is_not_turned_into_a_timeout():
    async def main():
        deadlines = Deadlines()
        task = asyncio.ensure_future(deadlines.run(10, _sleep_then(5)))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_a_call_that_swallows_the_cancellation_leaves_the_task_clean():
    async def stubborn():
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            return "kept going"
        return "not reached"

    async def main():
        deadlines = Deadlines()
        assert await deadlines.run(0.02, stubborn()) == "kept going"
        assert asyncio.current_task().cancelling() == 0
        assert await _sleep_then(0.01, "after") == "after"

    asyncio.run(main())
