"""The store's write lock (``store/lock.py``): processes contend for it, death releases it."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pollama.store.lock import LOCK_FILE, StoreLock, to_thread_to_the_end

# A second process that takes the lock, says so, and on a line from its stdin writes a
# marker file while it still holds the lock, then releases it and exits.
HOLDER = """
import sys
from pathlib import Path
from pollama.store.lock import StoreLock

root = Path(sys.argv[1])
with StoreLock(root).hold():
    print("held", flush=True)
    sys.stdin.readline()
    (root / "released-by-holder").write_text("x")
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline() == "held\n"
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            pipe.close()


def release(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.write("\n")
    holder.stdin.flush()


def test_the_lock_file_lives_in_the_store(tmp_path: Path) -> None:
    lock = StoreLock(tmp_path / "models")  # made on first use
    fd = lock.try_acquire()
    assert fd is not None and (tmp_path / "models" / LOCK_FILE).is_file()
    StoreLock.release(fd)


def test_two_writers_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    lock = StoreLock(tmp_path)
    first = lock.try_acquire()
    assert first is not None
    assert lock.try_acquire() is None and lock.is_held()
    StoreLock.release(first)
    assert not lock.is_held()


def test_an_async_writer_waits_for_another_process_and_then_holds_the_lock(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    lock = StoreLock(tmp_path)

    async def go() -> None:
        waiting = asyncio.Event()

        async def write() -> bool:
            async with lock.held(on_wait=waiting.set):
                # The holder wrote its marker before it let go: we came after it.
                return (tmp_path / "released-by-holder").is_file()

        task = asyncio.create_task(write())
        await waiting.wait()  # it found the lock taken; it waits, it does not fail
        assert not task.done()
        release(holder)
        assert await task

    asyncio.run(go())
    assert not lock.is_held()  # and it let go in turn


def test_a_blocking_writer_waits_for_another_process(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    lock = StoreLock(tmp_path)
    waiting = threading.Event()
    seen: list[bool] = []

    def write() -> None:
        with lock.hold(on_wait=waiting.set):
            seen.append((tmp_path / "released-by-holder").is_file())

    thread = threading.Thread(target=write)
    thread.start()
    assert waiting.wait(30)
    assert not seen
    release(holder)
    thread.join(30)
    assert seen == [True]


def test_the_lock_goes_when_its_holder_dies(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    lock = StoreLock(tmp_path)
    assert lock.is_held()
    holder.send_signal(signal.SIGKILL)  # no chance to release anything itself
    holder.wait(timeout=30)
    fd = lock.try_acquire()
    assert fd is not None
    StoreLock.release(fd)


def test_a_writer_cancelled_while_it_waits_holds_nothing(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    lock = StoreLock(tmp_path)

    async def go() -> None:
        waiting = asyncio.Event()

        async def write() -> None:
            async with lock.held(on_wait=waiting.set):
                raise AssertionError("never reached")

        task = asyncio.create_task(write())
        await waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    release(holder)
    holder.wait(timeout=30)
    assert not lock.is_held()


def test_a_cancelled_thread_is_waited_for_before_the_cancellation_goes_on() -> None:
    started, go_on = threading.Event(), threading.Event()
    finished: list[int] = []

    def work() -> int:
        started.set()
        go_on.wait(30)
        finished.append(1)
        return 1

    async def go() -> None:
        task = asyncio.create_task(to_thread_to_the_end(work))
        await asyncio.to_thread(started.wait, 30)
        task.cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        assert not task.done()  # a lock held around it would still be held
        go_on.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished == [1]

    asyncio.run(go())
