"""A real ``pollama serve`` subprocess with a temporary store, driven over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

pytestmark = pytest.mark.llama

GREEDY = {"temperature": 0, "num_predict": 24}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, tmp: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {
            **os.environ,
            "OLLAMA_HOST": f"127.0.0.1:{self.port}",
            "OLLAMA_MODELS": str(tmp / "models"),
            **env,
        }
        environ.pop("POLLAMA_GPUS", None)
        self.log = open(tmp / "serve.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pollama", "serve"],
            env=environ,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=120)
        self._wait_until_up()

    def _wait_until_up(self) -> None:
        # Poll the observable readiness signal: the root answers once uvicorn listens.
        for _ in range(600):
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited: {Path(self.log.name).read_text()}")
            try:
                if self.client.get("/").text == "Ollama is running":
                    return
            except httpx.TransportError:
                # Not listening yet: wait a moment on the process itself (it may exit).
                try:
                    self.process.wait(timeout=0.05)
                except subprocess.TimeoutExpired:
                    pass
        raise RuntimeError("serve did not come up")

    def post(self, path: str, body: Any) -> httpx.Response:
        return self.client.post(path, json=body)

    def stream(self, path: str, body: Any) -> list[dict[str, Any]]:
        lines = []
        with self.client.stream("POST", path, json=body) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"] == "application/x-ndjson"
            for line in response.iter_lines():
                assert line, "no empty NDJSON lines"
                lines.append(json.loads(line))
        return lines

    def runner_pids(self) -> list[int]:
        children = psutil.Process(self.process.pid).children(recursive=True)
        return [c.pid for c in children if "runner" in " ".join(c.cmdline())]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        self.client.close()
        self.log.close()


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


def test_errors_have_ollama_statuses(server: Server):
    missing = server.post("/api/generate", {"model": "nope", "prompt": "x"})
    assert missing.status_code == 404 and "not found" in missing.json()["error"]
    bad_json = server.client.post("/api/chat", content=b"{nope")
    assert bad_json.status_code == 400 and "error" in bad_json.json()
    empty = server.client.post("/api/generate", content=b"")
    assert empty.status_code == 400 and empty.json() == {"error": "missing request body"}
    bad_format = server.post("/api/generate", {"model": "smollm2", "prompt": "x", "format": "yaml"})
    assert bad_format.status_code == 400 and "format" in bad_format.json()["error"]
    bad_keep = server.post("/api/generate", {"model": "smollm2", "keep_alive": "300"})
    assert bad_keep.status_code == 400
    raw_with_system = server.post(
        "/api/generate", {"model": "smollm2", "prompt": "x", "raw": True, "system": "s"}
    )
    assert raw_with_system.status_code == 400
    bad_option = server.post(
        "/api/generate", {"model": "smollm2", "prompt": "x", "options": {"stop": "a"}}
    )
    assert bad_option.status_code == 500
    assert bad_option.json()["error"] == 'option "stop" must be of type array'


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
