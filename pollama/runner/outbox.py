"""What the engine thread emits, handed to the HTTP event loop once per decode step.

With many streams, waking the event loop once per token per stream (a
``call_soon_threadsafe`` each: a lock, a self-pipe write, a loop iteration) costs
CPU that the decode threads need on a small machine. Here the engine thread only
appends to a list while it steps; when the step ends it calls ``flush``, which wakes
the loop once for everything that step produced. On the loop each stream's items
collect in its ``Stream``; its writer takes them all at once, so a stream whose
writer was busy while several steps went by sends their tokens in one write.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class Stream(Generic[T]):
    """One request's items on the event loop, in the order they were emitted."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: list[T] = []
        self._waiter: asyncio.Future[None] | None = None

    def deliver(self, item: T) -> None:
        """On the loop: one more item; wakes the reader if it waits."""
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> list[T]:
        """Everything delivered since the last take (at least one item; waits for it)."""
        while not self._items:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items, self._items = self._items, []
        return items


class Outbox(Generic[T]):
    """Items for ``Stream``s on one event loop, put from any thread, delivered in bulk."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[Stream[T], T]] = []
        self._holding = False

    def stream(self) -> Stream[T]:
        return Stream(self._loop)

    def hold(self) -> None:
        """The engine thread starts a step: puts wait for ``flush``."""
        with self._lock:
            self._holding = True

    def put(self, stream: Stream[T], item: T) -> None:
        """Queue ``item`` for ``stream``; outside a step it goes at once."""
        with self._lock:
            self._pending.append((stream, item))
            if self._holding or len(self._pending) > 1:
                return  # the step's flush, or a wake-up already scheduled, takes it
        self._wake()

    def flush(self) -> None:
        """The step is over: one wake-up of the loop for all it produced."""
        with self._lock:
            self._holding = False
            if not self._pending:
                return
        self._wake()

    def _wake(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:
            pass  # the loop is closed: the runner is shutting down, nobody reads

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for stream, item in pending:
            stream.deliver(item)
