"""LlamaServer against real child processes that behave like runners (no llama.cpp).

Each test starts ``fake_runner.py MODE --model PATH --port N``, a small script
written below that emulates one aspect of a runner's *process* behaviour: how
it starts, fails, streams, dies, and ignores signals. Synchronisation is always
on an observable event (a /health answer, a request the fake blocks until it
has seen something); nothing sleeps to wait for the other side.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from pollama.demo import demo_model_path
from pollama.devices.types import DeviceID, DeviceInfo, SystemInfo
from pollama.errors import LoadError, RunnerDied, RunnerError, RunnerHTTPError
from pollama.ggufmeta import read_model
from pollama.llm.server import LlamaServer
from pollama.llm.status import StatusWriter
from pollama.memory.layout import LayoutPolicy
from pollama.options.load import FlashAttention, LoadConfig
from pollama.protocol.wire import (
    CompletionChunk,
    CompletionDone,
    CompletionRequest,
    ProtocolError,
    RunnerReported,
    SamplingOptions,
    parse_completion_line,
)
from pollama.settings import Settings
from pollama.units import GiB

FAKE_RUNNER = r"""
import json, os, signal, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

mode = sys.argv[1]
port = int(sys.argv[sys.argv.index("--port") + 1])
state = {"health": 0, "active": 0, "max_active": 0, "ops": []}
lock = threading.Lock()
disconnected = threading.Event()

def err(line):
    sys.stderr.write(line + "\n")
    sys.stderr.flush()

if mode == "bad-arch":
    print("llama_model_loader: loaded meta data with 3 key-value pairs", flush=True)
    err("llama_model_load: error loading model: unknown model architecture: 'foo'")
    sys.exit(1)
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "env":
    with open(sys.argv[2], "w") as f:
        json.dump(dict(os.environ), f)

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, body, status=200):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def chunk(self, obj):
        data = (json.dumps(obj) + "\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self):
        if self.path == "/health":
            with lock:
                state["health"] += 1
                n = state["health"]
            if mode == "progress" and n < 15:
                return self.reply({"status": "loading-model", "progress": n / 15})
            if mode == "stuck":
                return self.reply({"status": "loading-model", "progress": 0.3})
            return self.reply({"status": "ready", "progress": 1.0})
        if self.path == "/disconnected":
            return self.reply({"disconnected": disconnected.wait(30)})
        if self.path == "/max-active":
            return self.reply({"max_active": state["max_active"]})
        if self.path == "/ops":
            return self.reply({"ops": state["ops"]})
        self.reply({"error": "not found"}, 404)

    def do_POST(self):
        body = self.body()
        if self.path == "/load":
            state["ops"].append(body)
            return self.reply({"success": True, "memory": None, "error": ""})
        if self.path == "/tokenize":
            return self.reply({"tokens": [ord(c) for c in body["content"]]})
        if self.path == "/detokenize":
            return self.reply({"content": "".join(chr(t) for t in body["tokens"])})
        if self.path == "/embedding":
            vectors = [[float(len(c)), 1.0] for c in body["content"]]
            return self.reply({"embeddings": vectors, "prompt_eval_count": 3})
        if self.path != "/completion":
            return self.reply({"error": "not found"}, 404)
        if mode == "reject":
            return self.reply({"error": "prompt is too long"}, 400)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        done = {"done": True, "done_reason": "stop", "prompt_eval_count": 1,
                "prompt_eval_duration": 1, "eval_count": 2, "eval_duration": 1}
        if mode == "die-mid-stream":
            self.chunk({"content": "Hello"})
            self.chunk({"content": " world"})
            err("CUDA error: an illegal memory access was encountered")
            os._exit(134)
        if mode == "error-line":
            self.chunk({"content": "Hi"})
            self.chunk({"error": "decode failed: no KV slot"})
        elif mode in ("forever", "repeat"):
            try:
                i = 0
                while True:
                    self.chunk({"content": "ha" if mode == "repeat" else f"t{i}"})
                    i += 1
                    time.sleep(0.005)
            except OSError:
                disconnected.set()
                return
        elif mode == "echo":
            self.chunk({"content": json.dumps(body)})
            self.chunk(done)
        else:  # concurrency: a few pieces, slowly enough to overlap
            with lock:
                state["active"] += 1
                state["max_active"] = max(state["max_active"], state["active"])
            for i in range(3):
                self.chunk({"content": str(i)})
                time.sleep(0.01)
            with lock:
                state["active"] -= 1
            self.chunk(done)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""

SYSTEM = SystemInfo(total_memory=64 * GiB, free_memory=32 * GiB, free_swap=0, thread_count=2)


def config(parallel: int = 1, num_ctx: int = 2048) -> LoadConfig:
    return LoadConfig(
        num_ctx=num_ctx,
        parallel=parallel,
        batch_size=512,
        num_threads=2,
        flash_attention=FlashAttention.AUTO,
        kv_cache_type="f16",
        use_mmap=True,
        num_gpu=-1,
        main_gpu=0,
    )


def sim_gpu(library: str, index: str) -> DeviceInfo:
    name = f"sim {library}{index}"
    return DeviceInfo(DeviceID(library, index), name, 8 * GiB, 8 * GiB, 8, 9, simulated=True)


@pytest.fixture(scope="module")
def model():
    return read_model(demo_model_path())


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "fake_runner.py"
    path.write_text(FAKE_RUNNER)
    return path


async def start(
    model: Any,
    script: Path,
    *mode: str,
    settings: Settings | None = None,
    gpus: list[DeviceInfo] | None = None,
    parallel: int = 1,
    stop_grace: float = 5.0,
) -> LlamaServer:
    return await LlamaServer.start(
        model,
        config(parallel),
        settings or Settings(load_timeout=10.0),
        gpus or [],
        runner_command=[sys.executable, str(script), *mode],
        stop_grace=stop_grace,
    )


async def get(server: LlamaServer, path: str) -> Any:
    async with httpx.AsyncClient(timeout=30) as http:
        return (await http.get(f"http://127.0.0.1:{server.port}{path}")).json()


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_unknown_architecture_fails_at_once_with_a_useful_message(model, script):
    async def scenario() -> None:
        server = await start(model, script, "bad-arch")
        try:
            with pytest.raises(RunnerDied) as info:
                await server.wait_until_running()
            assert "not supported by your version of pollama" in str(info.value)
            assert "unknown model architecture: 'foo'" in str(info.value)
            assert server.has_exited()
            with pytest.raises(RunnerDied):
                await server.ping()
        finally:
            await server.close()
            await server.close()  # idempotent on a dead process too

    asyncio.run(scenario())


def test_wait_until_running_follows_progress_past_the_timeout(model, script):
    async def scenario() -> None:
        # 15 polls at 0.1 s take longer than the 1 s timeout: only progress keeps it alive.
        server = await start(model, script, "progress", settings=Settings(load_timeout=1.0))
        try:
            await server.wait_until_running()
            assert (await get(server, "/health"))["status"] == "ready"
        finally:
            await server.close()

    asyncio.run(scenario())


def test_wait_until_running_times_out_without_progress(model, script):
    async def scenario() -> None:
        server = await start(model, script, "stuck", settings=Settings(load_timeout=1.0))
        try:
            with pytest.raises(LoadError, match=r"timed out .* progress 0\.30"):
                await server.wait_until_running()
            assert not server.has_exited()
        finally:
            await server.close()

    asyncio.run(scenario())


def test_runner_dying_mid_stream_raises_runner_died_with_its_last_error(model, script):
    async def scenario() -> None:
        server = await start(model, script, "die-mid-stream")
        received: list[str] = []
        try:
            await server.wait_until_running()
            with pytest.raises(RunnerDied, match="illegal memory access"):
                async for item in server.completion(CompletionRequest(prompt="hi")):
                    assert isinstance(item, CompletionChunk)
                    received.append(item.content)
            assert received == ["Hello", " world"]
            assert server.has_exited()
        finally:
            await server.close()

    asyncio.run(scenario())


def test_close_escalates_to_sigkill_and_leaves_no_child(model, script):
    async def scenario() -> None:
        server = await start(model, script, "ignore-term", stop_grace=0.5)
        pid = server.pid
        await server.wait_until_running()  # SIGTERM is ignored from here on
        assert pid in children()
        await asyncio.gather(server.close(), server.close())
        await server.close()
        assert server.has_exited()
        assert pid not in children()
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # already reaped: no zombie left behind

    asyncio.run(scenario())


def test_child_sees_only_the_chosen_gpus(model, script, tmp_path):
    out = tmp_path / "env.json"
    gpus = [sim_gpu("CUDA", "1"), sim_gpu("CUDA", "3"), sim_gpu("ROCm", "0")]

    async def scenario() -> None:
        server = await start(model, script, "env", str(out), gpus=gpus)
        try:
            await server.wait_until_running()  # the env file is written before serving
        finally:
            await server.close()

    asyncio.run(scenario())
    env = json.loads(out.read_text())
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert env["HIP_VISIBLE_DEVICES"] == "0"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env.get("PATH") == os.environ.get("PATH")


def test_error_line_and_http_error_become_runner_errors(model, script):
    async def scenario() -> None:
        server = await start(model, script, "error-line")
        try:
            await server.wait_until_running()
            with pytest.raises(RunnerError, match="decode failed") as info:
                async for _ in server.completion(CompletionRequest(prompt="hi")):
                    pass
            assert not isinstance(info.value, RunnerDied)
            assert not server.has_exited()
        finally:
            await server.close()
        server = await start(model, script, "reject")
        try:
            await server.wait_until_running()
            with pytest.raises(RunnerHTTPError, match="prompt is too long") as rejected:
                async for _ in server.completion(CompletionRequest(prompt="hi")):
                    pass
            assert rejected.value.status == 400
        finally:
            await server.close()

    asyncio.run(scenario())


def test_consumer_leaving_the_stream_disconnects_the_runner(model, script):
    async def scenario() -> None:
        server = await start(model, script, "forever")
        try:
            await server.wait_until_running()
            stream = server.completion(CompletionRequest(prompt="hi"))
            pieces = [await anext(stream) for _ in range(3)]
            assert [p.content for p in pieces if isinstance(p, CompletionChunk)] == [
                "t0",
                "t1",
                "t2",
            ]
            await stream.aclose()
            assert (await get(server, "/disconnected")) == {"disconnected": True}
        finally:
            await server.close()

    asyncio.run(scenario())


def test_repeating_piece_ends_generation_and_disconnects(model, script):
    async def scenario() -> None:
        server = await start(model, script, "repeat")
        try:
            await server.wait_until_running()
            items = [i async for i in server.completion(CompletionRequest(prompt="hi"))]
            *pieces, done = items
            assert [p.content for p in pieces] == ["ha"] * 31  # the first + 30 repeats
            assert isinstance(done, CompletionDone) and done.done_reason == "stop"
            assert done.eval_count == 31
            assert (await get(server, "/disconnected")) == {"disconnected": True}
        finally:
            await server.close()

    asyncio.run(scenario())


def test_num_predict_is_capped_by_ten_contexts_or_the_setting(model, script):
    async def sent(server: LlamaServer, num_predict: int) -> dict[str, Any]:
        options = SamplingOptions(num_predict=num_predict)
        items = [i async for i in server.completion(CompletionRequest("x", options=options))]
        first = items[0]
        assert isinstance(first, CompletionChunk) and isinstance(items[-1], CompletionDone)
        return dict(json.loads(first.content))

    async def scenario() -> None:
        server = await start(model, script, "echo")
        try:
            await server.wait_until_running()
            assert (await sent(server, -1))["options"]["num_predict"] == 20480
            assert (await sent(server, 10**6))["options"]["num_predict"] == 20480
            assert (await sent(server, 100))["options"]["num_predict"] == 100
        finally:
            await server.close()
        capped = await start(model, script, "echo", settings=Settings(max_tokens=64))
        try:
            await capped.wait_until_running()
            assert (await sent(capped, -1))["options"]["num_predict"] == 64
            assert (await sent(capped, 100))["options"]["num_predict"] == 64
            assert (await sent(capped, 10))["options"]["num_predict"] == 10
        finally:
            await capped.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("parallel", [1, 2])
def test_parallel_limits_concurrent_generations(model, script, parallel):
    async def drain(server: LlamaServer) -> int:
        return len([i async for i in server.completion(CompletionRequest("x"))])

    async def scenario() -> None:
        server = await start(model, script, "concurrency", parallel=parallel)
        try:
            await server.wait_until_running()
            assert await asyncio.gather(*(drain(server) for _ in range(4))) == [4] * 4
            assert (await get(server, "/max-active"))["max_active"] <= parallel
        finally:
            await server.close()

    asyncio.run(scenario())


def test_embedding_tokenize_detokenize(model, script):
    async def scenario() -> None:
        server = await start(model, script, "serve")
        try:
            await server.wait_until_running()
            await server.ping()
            assert await server.tokenize("hi") == [104, 105]
            assert await server.detokenize([104, 105]) == "hi"
            response = await server.embedding(["a", "bcd"])
            assert response.embeddings == ((1.0, 1.0), (3.0, 1.0))
            assert response.prompt_eval_count == 3
        finally:
            await server.close()

    asyncio.run(scenario())


def test_load_runs_fit_alloc_commit_through_the_runner(model, script):
    gpus = [sim_gpu("CUDA", "0")]

    async def scenario() -> None:
        server = await start(model, script, "serve", gpus=gpus)
        try:
            assert server.memory_size() == (0, 0)
            devices = await server.load(SYSTEM, gpus, LayoutPolicy())
            assert devices == [gpus[0].id]
            ops = (await get(server, "/ops"))["ops"]
            assert [op["operation"] for op in ops] == ["fit", "alloc", "commit"]
            assert ops[-1]["num_ctx"] == 2048
            total, vram = server.memory_size()
            assert 0 < vram <= total
            assert server.vram_by_gpu(gpus[0].id) == vram
            assert server.layout.count == model.block_count + 1
            assert server.context_length == 2048
            assert server.model_path == model.path
        finally:
            await server.close()

    asyncio.run(scenario())


def test_status_writer_keeps_the_last_error_cleaned(caplog):
    status = StatusWriter()
    with caplog.at_level("DEBUG", logger="pollama.runner"):
        status.write(b"llama_model_loader: loaded meta data\nggml_cuda_init: failed to ")
        assert status.last_error == ""  # the second line is not complete yet
        status.write(b"initialize CUDA\r\n2025-01-02 03:04:05,678 INFO pollama.runner: ok\n")
        assert status.last_error == "failed to initialize CUDA"
        status.write(b"2025-01-02 03:04:05,678 ERROR pollama.runner.engine: out of memory")
        status.close()
    assert status.last_error == "out of memory"
    assert [r.getMessage() for r in caplog.records][0] == "llama_model_loader: loaded meta data"
    assert len(caplog.records) == 4


def test_status_writer_explains_an_unknown_architecture():
    status = StatusWriter()
    status.line("llama_model_load: error loading model: unknown model architecture: 'qwen9'")
    assert status.last_error == (
        "this model is not supported by your version of pollama; you may need to upgrade "
        "(error loading model: unknown model architecture: 'qwen9')"
    )


def test_the_runners_error_line_is_its_own_error_not_a_bad_line():
    with pytest.raises(RunnerReported, match="^model unloaded$"):
        parse_completion_line({"error": "model unloaded"})
    with pytest.raises(ProtocolError):
        parse_completion_line({"done": True})  # a done line without its counts
    assert not issubclass(RunnerReported, RuntimeError | ProtocolError)
