"""A real ``pollama serve`` subprocess with a temporary store, driven over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from serving import GREEDY, Server
from toolmodel import create_tool_model

from pollama.protocol.wire import memory_from_json

pytestmark = pytest.mark.llama


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("serve"))
    yield running
    running.stop()


def test_root_and_version(server: Server):
    assert server.client.head("/").status_code == 200
    assert server.client.get("/api/version").json()["version"]


def test_generate_streamed_equals_not_streamed(server: Server):
    body = {"model": "smollm2", "prompt": "Why is the sky blue?", "options": GREEDY}
    lines = server.stream("/api/generate", body)
    assert all(line["model"] == "smollm2" for line in lines)
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "length"
    assert final["eval_count"] == 24 and final["total_duration"] > 0
    assert isinstance(final["context"], list) and final["context"]
    streamed = "".join(line["response"] for line in lines)
    whole = server.post("/api/generate", {**body, "stream": False}).json()
    assert whole["response"] == streamed and whole["done"] is True
    assert whole["eval_count"] == 24


def test_chat_streamed_equals_not_streamed(server: Server):
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Name three colours."}],
        "options": GREEDY,
    }
    lines = server.stream("/api/chat", body)
    assert lines[-1]["done"] is True
    streamed = "".join(line["message"]["content"] for line in lines)
    whole = server.post("/api/chat", {**body, "stream": False}).json()
    assert whole["message"] == {"role": "assistant", "content": streamed}
    assert streamed.strip()


def test_tags_and_ps_describe_the_demo_model(server: Server):
    server.post("/api/generate", {"model": "smollm2", "prompt": "Hi", "options": GREEDY})
    (model,) = server.client.get("/api/tags").json()["models"]
    assert model["name"] == "smollm2:latest" and len(model["digest"]) == 64
    assert model["details"]["family"] == "llama"
    assert model["details"]["quantization_level"] == "Q4_1"
    assert model["details"]["parameter_size"] == "134.52M"
    (running,) = server.client.get("/api/ps").json()["models"]
    assert running["name"] == "smollm2:latest"
    assert running["size"] > 100 * 2**20 and running["size_vram"] == 0
    assert running["context_length"] > 0


def test_ps_reports_what_the_runner_measured(server: Server):
    """/api/ps's size and size_vram are the runner's measured allocations (llama.cpp's
    own buffer sizes), not the plan the layout was made from."""
    server.post("/api/generate", {"model": "smollm2", "prompt": "Hi", "options": GREEDY})
    rows = {m["name"]: m for m in server.client.get("/api/ps").json()["models"]}
    row = rows["smollm2:latest"]
    ports = [
        int(arg.split("=", 1)[1]) if "=" in arg else int(cmd[i + 1])
        for pid in server.runner_pids()
        for cmd in [psutil.Process(pid).cmdline()]
        for i, arg in enumerate(cmd)
        if arg.startswith("--port")
    ]
    measured = []
    for port in ports:
        reply = httpx.get(f"http://127.0.0.1:{port}/memory", timeout=30)
        if reply.status_code == 200:
            measured.append(memory_from_json(reply.json()).memory_size())
    assert (row["size"], row["size_vram"]) in measured
    assert row["size"] > 0


def test_empty_prompt_loads_and_keep_alive_zero_unloads(server: Server):
    loaded = server.post("/api/generate", {"model": "smollm2"}).json()
    assert loaded["done"] is True and loaded["done_reason"] == "load"
    assert server.client.get("/api/ps").json()["models"]
    unloaded = server.post("/api/generate", {"model": "smollm2", "keep_alive": 0}).json()
    assert unloaded["done_reason"] == "unload"
    assert server.client.get("/api/ps").json()["models"] == []
    assert server.runner_pids() == []


def test_sigterm_leaves_no_runner_behind(tmp_path: Path):
    server = Server(tmp_path, OLLAMA_KEEP_ALIVE="-1")
    try:
        server.post("/api/generate", {"model": "smollm2", "prompt": "Hi", "options": GREEDY})
        pids = server.runner_pids()
        assert pids
    finally:
        server.stop()
    assert server.process.returncode is not None
    assert not any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids
    )


def test_thinking_is_separated_from_the_content(server: Server):
    name = create_tool_model(server.url)
    capabilities = server.post("/api/show", {"model": name}).json()["capabilities"]
    assert {"tools", "thinking"} <= set(capabilities)
    assert "thinking" not in server.post("/api/show", {"model": "smollm2"}).json()["capabilities"]
    body = {
        "model": name,
        "messages": [{"role": "user", "content": "Why is the sky blue?"}],
        "think": True,
        "options": {**GREEDY, "num_predict": 12},
    }
    lines = server.stream("/api/chat", body)
    thinking = "".join(line["message"].get("thinking", "") for line in lines)
    content = "".join(line["message"]["content"] for line in lines)
    # The template does not open the block; asked to think, the server opened it, so
    # everything the model wrote (it never closes it within 12 tokens) is thinking.
    assert thinking.strip() and "<think>" not in thinking and content == ""
    whole = server.post("/api/chat", {**body, "stream": False}).json()["message"]
    assert whole["thinking"] == thinking.strip() and whole["content"] == ""
