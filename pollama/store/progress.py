"""Progress of long store operations (create, pull, push), streamed while the work runs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One status line: ``pulling 0123456789ab`` with bytes ``completed`` of ``total``."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


@dataclass(frozen=True)
class _Item(Generic[T]):
    value: T


async def reports_from(
    work: Callable[[Callable[[T], None]], Awaitable[None]],
) -> AsyncGenerator[T, None]:
    """Run ``work(report)`` and yield what it reports, in order, while it runs.

    ``report`` may be called on the event loop or from a worker thread. The work's
    exception is raised after the reports made before it; closing the iterator early
    cancels the work (a worker thread it started runs to its end, unobserved).
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[_Item[T] | None] = asyncio.Queue()

    def report(value: T) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, _Item(value))

    async def run() -> None:
        try:
            await work(report)
        finally:
            # Queued behind every report made so far, thread-side ones included.
            loop.call_soon_threadsafe(queue.put_nowait, None)

    task = asyncio.create_task(run())
    try:
        while (item := await queue.get()) is not None:
            yield item.value
        await task
    finally:
        # Closed early: stop the work. Its outcome is collected either way, so a failure
        # the consumer no longer waits for is not logged as never retrieved.
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
