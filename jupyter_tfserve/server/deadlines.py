"""Per-request deadlines (``--rest_api_timeout_in_ms``) that cost a dict entry, not a timer, per request.

TF Serving's REST timeout is on by default (30 s), so every model call carries one.
``asyncio.timeout`` arms a ``TimerHandle`` in the loop's heap on entry and cancels it on exit:
at a few thousand requests a second that was about 8% of the REST event loop (py-spy, the MLP
at concurrency 64). Here the requests whose deadlines fall in the same 10 ms share one timer,
and a request that finishes only leaves its slot's dict. A request that overruns is cancelled
at most 10 ms after its deadline, as ``asyncio.timeout`` would cancel it, and the caller sees
:class:`DeadlineExceeded` instead of ``CancelledError``; a cancellation from elsewhere passes
through untouched.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import TypeVar

GRAIN_SECONDS = 0.01

T = TypeVar("T")


class DeadlineExceeded(Exception):
    """The call ran past its deadline and was cancelled."""


class _Slot:
    __slots__ = ("expired", "tasks")

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task] = set()
        self.expired = False


class Deadlines:
    """Deadlines grouped into slots of :data:`GRAIN_SECONDS`, each slot's timer on its own event loop."""

    def __init__(self) -> None:
        self._slots: dict[tuple[asyncio.AbstractEventLoop, int], _Slot] = {}

    async def run(self, seconds: float, call: Awaitable[T]) -> T:
        """``await call``, cancelled (DeadlineExceeded) if it is still running ``seconds`` from now."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadlines.run must be awaited inside a task")
        loop = asyncio.get_running_loop()
        number = math.ceil((loop.time() + seconds) / GRAIN_SECONDS)
        key = (loop, number)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
            loop.call_at(number * GRAIN_SECONDS, self._expire, key)
        slot.tasks.add(task)
        try:
            return await call
        except asyncio.CancelledError:
            if slot.expired and task in slot.tasks:  # cancelled by this deadline (and maybe from elsewhere too)
                slot.tasks.discard(task)
                if task.uncancel() == 0:
                    raise DeadlineExceeded() from None
            raise
        finally:
            if task in slot.tasks:
                slot.tasks.discard(task)
                if slot.expired:
                    task.uncancel()  # cancelled by the deadline, but the call ended by itself: undo the request

    def _expire(self, key: tuple[asyncio.AbstractEventLoop, int]) -> None:
        slot = self._slots.pop(key)
        slot.expired = True
        for task in slot.tasks:
            if not task.done():
                task.cancel()
