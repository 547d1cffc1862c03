"""The store's write lock: one writer at a time across every process sharing a store.

Several ``pollama serve`` processes may share one ``OLLAMA_MODELS``. Every write
(create, blob upload, copy, delete, pull, the demo model's import) and start-up's
cleanup hold an exclusive ``flock`` on ``<models>/.lock`` for the write's whole
duration, so a cleanup never removes what another process is writing and a prune never
runs between a create's blobs and its manifest. Reads take no lock: every file a
reader sees is complete (blobs and manifests are renamed into place).

``flock`` belongs to the open file: each acquisition opens the file afresh, so two
writers in one process exclude each other as two processes do, and the kernel drops
the lock when its holder dies, however it dies. The descriptor is not inheritable
(Python's default), so a child started meanwhile (a runner, the quantizer) never holds
it. The filesystem must implement ``flock`` across its clients: local disks do, and
NFSv4 (Linux emulates ``flock`` with its byte-range locks); some network filesystems
accept the call and lock nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import ParamSpec, TypeVar

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
WAITING = "waiting for another write to the model store"
"""The progress status a write streams while another holds the lock."""
P = ParamSpec("P")
T = TypeVar("T")

# The async wait polls: first soon (a short write ends in milliseconds), then at most
# this often (a long write — a pull — takes minutes, and a writer waiting behind it
# notices its end within this).
_FIRST_POLL = 0.005
_LONGEST_POLL = 0.2


class StoreLock:
    """The exclusive write lock of the store rooted at ``root``."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / LOCK_FILE

    def try_acquire(self) -> int | None:
        """The lock's descriptor when it was free (release it with ``release``); None
        when another open file holds it."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open(self) -> int:
        """A new open file of the lock (each holds or waits for the lock on its own)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    @staticmethod
    def release(fd: int) -> None:
        """Closing the descriptor drops the lock."""
        os.close(fd)

    @contextlib.contextmanager
    def hold(self, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the lock, blocking this thread until it is free. For threads and for
        start-up before the event loop serves anything; never on the event loop.
        ``on_wait`` is called once if the lock is taken when asked for."""
        fd = self.try_acquire()
        if fd is None:
            if on_wait is not None:
                on_wait()
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # the kernel wakes us when it is released
            except BaseException:
                os.close(fd)
                raise
        try:
            yield
        finally:
            self.release(fd)

    @contextlib.asynccontextmanager
    async def held(self, on_wait: Callable[[], None] | None = None) -> AsyncIterator[None]:
        """Hold the lock, waiting on the event loop until it is free.

        It polls with a non-blocking ``flock`` and an async sleep rather than blocking a
        worker thread in ``flock``: a request cancelled while it waits (its client left)
        then simply stops waiting, where a thread would go on waiting, take the lock
        for nobody and need handing back; and writers queued behind a long pull do not
        fill the thread pool that every store read runs on. ``on_wait`` is called once
        if the lock is taken when asked for.
        """
        fd = self.try_acquire()
        if fd is None:
            if on_wait is not None:
                on_wait()
            delay = _FIRST_POLL
            while fd is None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _LONGEST_POLL)
                fd = self.try_acquire()
        try:
            yield
        finally:
            self.release(fd)

    def is_held(self) -> bool:
        """Whether some open file holds the lock now (a snapshot, for logs and tests)."""
        fd = self.try_acquire()
        if fd is None:
            return True
        self.release(fd)
        return False


async def to_thread_to_the_end(func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``func`` in a worker thread, like ``asyncio.to_thread``; cancelled meanwhile, it
    still waits for the thread to end before the cancellation goes on. A lock held
    around it is then held until the thread has stopped writing, not released while the
    thread (which cannot be cancelled) still renames files into place."""
    future = asyncio.ensure_future(asyncio.to_thread(func, *args, **kwargs))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({future})
        if not future.cancelled():
            future.exception()  # retrieved: the cancellation is what the caller sees
        raise
