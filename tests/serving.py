"""A real ``pollama serve`` subprocess on a free port with a temporary store (test harness)."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

GREEDY = {"temperature": 0, "num_predict": 24}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _limit_file_size(limit: int) -> Callable[[], None]:
    def preexec() -> None:  # in the child, before exec
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed

    return preexec


class Server:
    def __init__(
        self,
        tmp: Path,
        *,
        bind: str = "127.0.0.1",
        file_size_limit: int | None = None,
        **env: str,
    ) -> None:
        """``file_size_limit``: RLIMIT_FSIZE for the server (and its runners): writing past it
        fails with EFBIG, as a full disk fails a write, without filling any disk."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {
            **os.environ,
            "OLLAMA_HOST": f"{bind}:{self.port}",
            "OLLAMA_MODELS": str(tmp / "models"),
            **env,
        }
        environ.pop("POLLAMA_GPUS", None)
        self.models = Path(environ["OLLAMA_MODELS"])
        self.log = open(tmp / "serve.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pollama", "serve"],
            env=environ,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=None if file_size_limit is None else _limit_file_size(file_size_limit),
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

    def named_events(self, path: str, body: Any) -> list[tuple[str, dict[str, Any]]]:
        """A stream of named server-sent events as (name, data) pairs, checking that each
        is exactly ``event: <name>\\ndata: <json>\\n\\n`` with the JSON's type its name."""
        with self.client.stream("POST", path, json={**body, "stream": True}) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            raw = response.read().decode()
        assert raw.endswith("\n\n") and "[DONE]" not in raw
        events = []
        for chunk in raw[:-2].split("\n\n"):
            name_line, data_line = chunk.split("\n")
            assert name_line.startswith("event: ") and data_line.startswith("data: ")
            name, data = name_line[len("event: ") :], json.loads(data_line[len("data: ") :])
            assert data["type"] == name
            events.append((name, data))
        return events

    def runner_pids(self) -> list[int]:
        """The runners serving a model: started with ``--model``, or a spare that took one
        (it names itself ``pollama-runner`` before it reads the model)."""
        return [pid for pid, spare in self._runner_children() if not spare]

    def spare_pids(self) -> list[int]:
        """Idle spare runners: started with no model, not yet told one."""
        return [pid for pid, spare in self._runner_children() if spare]

    def _runner_children(self) -> list[tuple[int, bool]]:
        found = []
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                with child.oneshot():
                    command, name = child.cmdline(), child.name()
            except psutil.NoSuchProcess:
                continue
            if "runner" in " ".join(command):
                found.append((child.pid, "--model" not in command and name != "pollama-runner"))
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        self.client.close()
        self.log.close()


def wait_for(condition: Callable[[], object], seconds: float = 30.0) -> bool:
    """Poll an observable condition (a process appearing, a file gone) until a deadline;
    whether it held. For states no event announces, never as a stand-in for one."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def greedy_chat(
    server: Server, model: str, prompt: str, tokens: int, **options: Any
) -> dict[str, Any]:
    """One whole, greedy ``/api/chat`` reply of at most ``tokens`` tokens (unless
    ``options`` set another ``num_predict``)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": False,
        "options": {"temperature": 0, "num_predict": tokens, **options},
    }
    response = server.post("/api/chat", body)
    assert response.status_code == 200, response.text
    return dict(response.json())
