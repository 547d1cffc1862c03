"""Reliability against the real server and runner: abandoned requests, shutdown, faults."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from serving import Server

LONG = 3000  # tokens a request asks for and is abandoned long before
HI = [{"role": "user", "content": "List numbers."}]
# A thousand six-digit numbers: the model cannot end its reply before LONG tokens.
ENDLESS = {"type": "array", "minItems": 1000, "items": {"type": "integer", "minimum": 100000}}


def runner_port(server: Server) -> int:
    (pid,) = server.runner_pids()
    cmd = psutil.Process(pid).cmdline()
    return int(cmd[cmd.index("--port") + 1])


def decoded(server: Server) -> int:
    """Tokens the (one) runner has decoded so far, from its own /stats."""
    stats = httpx.get(f"http://127.0.0.1:{runner_port(server)}/stats", timeout=30).json()
    return int(stats["tokens_decoded"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("reliability"), OLLAMA_NUM_PARALLEL="1")
    yield running
    running.stop()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"prompt": "List numbers.", "format": ENDLESS}),
        ("/api/chat", {"messages": HI, "format": ENDLESS}),
        (
            "/v1/chat/completions",
            {
                "messages": HI,
                "max_tokens": LONG,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "numbers", "schema": ENDLESS},
                },
            },
        ),
        (
            "/v1/messages",
            {
                "messages": HI,
                "max_tokens": LONG,
                "output_config": {"format": {"type": "json_schema", "schema": ENDLESS}},
            },
        ),
        (
            "/v1/responses",
            {
                "input": "List numbers.",
                "max_output_tokens": LONG,
                "text": {"format": {"type": "json_schema", "name": "n", "schema": ENDLESS}},
            },
        ),
    ],
)
def test_an_abandoned_whole_reply_stops_generating(
    server: Server, path: str, body: dict[str, Any]
) -> None:
    # One slot: while an abandoned request generated on for nobody, the next would wait.
    request = {"model": "smollm2", **body, "stream": False, "options": {"num_predict": LONG}}
    warm = {"model": "smollm2", "prompt": "Hi", "stream": False, "options": {"num_predict": 1}}
    assert server.post("/api/generate", warm).status_code == 200
    before = decoded(server)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up while it generates
        httpx.post(server.url + path, json=request, timeout=httpx.Timeout(30, read=1.5))
    after = server.post(
        "/api/generate",
        {"model": "smollm2", "prompt": "Hi", "stream": False, "options": {"num_predict": 4}},
    )
    assert after.status_code == 200 and after.json()["eval_count"] == 4
    # The abandoned reply was cut short: nowhere near LONG tokens were decoded for it.
    assert decoded(server) - before < LONG // 2


def test_sigterm_with_a_request_in_flight_exits_within_the_grace(tmp_path: Path) -> None:
    server = Server(tmp_path, POLLAMA_SHUTDOWN_GRACE="1")
    warm = {"model": "smollm2", "prompt": "Hi", "stream": False, "options": {"num_predict": 1}}
    assert server.post("/api/generate", warm).status_code == 200
    runners, before = server.runner_pids(), decoded(server)
    body = {"model": "smollm2", "prompt": "List numbers.", "format": ENDLESS, "stream": False}
    with ThreadPoolExecutor(1) as pool:
        # A whole reply of 3,000 tokens in flight: uvicorn alone waits for it to finish.
        pending = pool.submit(httpx.post, server.url + "/api/generate", json=body, timeout=120)
        while decoded(server) <= before + 8:  # until it is generating (polls the runner)
            assert not pending.done(), pending.result()
        server.process.send_signal(signal.SIGTERM)
        # Bounded: the grace, then the request is cancelled and the runners stopped.
        # uvicorn re-raises the signal it handled once it is done, so the status is -15.
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.HTTPError):
            pending.result().raise_for_status()
    server.stop()
    assert "scheduler stopped" in (tmp_path / "serve.log").read_text()  # a clean shutdown
    assert runners and not any(psutil.pid_exists(pid) for pid in runners)


def test_a_stopped_runner_is_detected_killed_and_replaced(tmp_path: Path) -> None:
    server = Server(tmp_path, POLLAMA_STALL_TIMEOUT="2")
    try:
        body = {"model": "smollm2", "prompt": "List numbers.", "format": ENDLESS}
        with server.client.stream("POST", "/api/generate", json=body) as reply:
            lines = reply.iter_lines()
            assert "response" in json.loads(next(lines))
            (stopped,) = server.runner_pids()
            os.kill(stopped, signal.SIGSTOP)  # alive, but answers nothing
            last = json.loads(list(lines)[-1])  # the stream ends: it does not hang
        assert "the runner stopped answering for 2s" in last["error"]
        assert not psutil.pid_exists(stopped) or psutil.Process(stopped).status() == "zombie"
        again = {"model": "smollm2", "prompt": "Hi", "stream": False, "options": {"num_predict": 2}}
        assert server.post("/api/generate", again).status_code == 200
        assert server.runner_pids() != [stopped]
    finally:
        server.stop()
