"""The runner's per-step delivery of streamed tokens (``pollama.runner.outbox``): the
outbox on its own with a real event loop and thread, then a real runner's
``/completion`` stream read as raw HTTP chunks (one chunk is one write)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import pytest
from test_runner_integration import CHAT, Loop, complete, start_server, text

from pollama.llm.ndjson_stream import _chunks, _read_head
from pollama.llm.server import LlamaServer
from pollama.protocol.wire import CompletionRequest, SamplingOptions
from pollama.runner.outbox import Outbox, Stream

# -- the outbox --------------------------------------------------------------------


def _in_thread(fn: object) -> None:
    thread = threading.Thread(target=fn)  # type: ignore[arg-type]
    thread.start()
    thread.join()


def test_a_steps_items_reach_each_stream_together_and_in_order() -> None:
    async def scenario() -> tuple[list[str], list[str], bool]:
        outbox: Outbox[str] = Outbox(asyncio.get_running_loop())
        a, b = outbox.stream(), outbox.stream()

        def engine_step() -> None:
            outbox.hold()
            for i in range(3):
                outbox.put(a, f"a{i}")
                outbox.put(b, f"b{i}")

        _in_thread(engine_step)
        waiting = asyncio.ensure_future(a.take())
        await asyncio.sleep(0)  # let it run up to its wait
        held = not waiting.done()  # nothing is delivered before the step's flush
        _in_thread(outbox.flush)
        return await waiting, await b.take(), held

    got_a, got_b, held = asyncio.run(scenario())
    assert held
    assert got_a == ["a0", "a1", "a2"]
    assert got_b == ["b0", "b1", "b2"]


def test_an_item_put_outside_a_step_is_delivered_without_a_flush() -> None:
    async def scenario() -> list[str]:
        outbox: Outbox[str] = Outbox(asyncio.get_running_loop())
        stream = outbox.stream()
        _in_thread(lambda: outbox.put(stream, "error"))  # e.g. an unload failing requests
        return await stream.take()

    assert asyncio.run(scenario()) == ["error"]


def test_a_reader_that_falls_behind_takes_every_step_at_once() -> None:
    async def scenario() -> list[int]:
        outbox: Outbox[int] = Outbox(asyncio.get_running_loop())
        stream: Stream[int] = outbox.stream()
        for step in range(5):

            def one(step: int = step) -> None:
                outbox.hold()
                outbox.put(stream, step)
                outbox.flush()

            _in_thread(one)
        # Five steps went by while nobody read: one take gets them all.
        return await stream.take()

    assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]


# -- a real runner -----------------------------------------------------------------

OPTIONS = SamplingOptions(temperature=0, num_predict=32)


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    running = Loop()
    yield running
    running.close()


@pytest.fixture(scope="module")
def two_slots(loop: Loop) -> Iterator[LlamaServer]:
    server = loop.run(start_server(parallel=2))
    yield server
    loop.run(server.close())


async def _open(port: int, request: CompletionRequest) -> tuple[asyncio.StreamReader, object]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps(request.to_json()).encode()
    writer.write(
        b"POST /completion HTTP/1.1\r\nHost: runner\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    return reader, writer


async def _writes(reader: asyncio.StreamReader) -> list[list[dict[str, object]]]:
    """The rest of a runner's stream, one entry per HTTP chunk (per write), each the
    NDJSON lines it carried."""
    status, chunked, length = await _read_head(reader)
    assert status == 200 and chunked
    writes = []
    async for data in _chunks(reader, chunked, length):
        assert data.endswith(b"\n")  # a write holds whole lines only
        writes.append([json.loads(line) for line in data.splitlines()])
    return writes


@pytest.mark.llama
def test_the_last_token_and_done_leave_in_one_write(loop: Loop, two_slots: LlamaServer) -> None:
    request = CompletionRequest(prompt=CHAT.format("Count to fifty."), options=OPTIONS)

    async def run() -> list[list[dict[str, object]]]:
        reader, writer = await _open(two_slots.port, request)
        try:
            return await _writes(reader)
        finally:
            writer.close()  # type: ignore[attr-defined]

    writes = loop.run(run())
    last = writes[-1]
    assert last[-1].get("done") is True
    if last[-1]["done_reason"] == "length":  # the step that hit the limit sent both
        assert len(last) >= 2 and "content" in last[-2]
    # Every token arrives, in order: the same text as the server's own client reads.
    chunks, _ = loop.run(complete(two_slots, request.prompt, OPTIONS))
    streamed = "".join(str(line["content"]) for w in writes for line in w if "done" not in line)
    assert streamed == text(chunks)


@pytest.mark.llama
def test_a_reader_that_pauses_stalls_no_one_and_loses_nothing(
    loop: Loop, two_slots: LlamaServer
) -> None:
    paused = CompletionRequest(prompt=CHAT.format("Name ten rivers."), options=OPTIONS)
    other = CHAT.format("Name ten mountains.")

    async def run() -> tuple[list[list[dict[str, object]]], str]:
        reader, writer = await _open(two_slots.port, paused)
        try:
            # The paused stream's reader reads nothing until the other one is done.
            chunks, done = await complete(two_slots, other, OPTIONS)
            assert done.eval_count > 0
            return await _writes(reader), text(chunks)
        finally:
            writer.close()  # type: ignore[attr-defined]

    writes, other_text = loop.run(run())
    alone, _ = loop.run(complete(two_slots, paused.prompt, OPTIONS))
    streamed = "".join(str(line["content"]) for w in writes for line in w if "done" not in line)
    assert streamed == text(alone)
    assert other_text == text(loop.run(complete(two_slots, other, OPTIONS))[0])
