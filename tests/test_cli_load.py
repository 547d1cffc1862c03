"""`pollama run`'s load display: a spinner with the server's load progress, on a terminal."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from pollama.cli.chat import load_model


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class LoadingServer:
    """Reports a load in progress; the load ends after the display has polled three times."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.polls = 0
        self.loaded = threading.Event()
        self.fail = fail
        self.asked: list[dict[str, Any]] = []

    def loading(self) -> dict[str, float]:
        self.polls += 1
        if self.polls == 3:
            self.loaded.set()
        return {"smollm2:latest": 0.42}

    def chat(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self.asked.append(body)
        self.loaded.wait()
        if self.fail is not None:
            raise self.fail
        yield {"done": True, "done_reason": "load"}


def test_the_spinner_shows_the_load_progress_until_the_load_ends() -> None:
    server, out = LoadingServer(), Terminal()
    load_model(server, {"model": "smollm2", "keep_alive": "5m"}, out)  # type: ignore[arg-type]
    assert "loading smollm2 42%" in out.getvalue()
    assert server.asked == [{"model": "smollm2", "keep_alive": "5m", "messages": []}]


def test_a_failed_load_raises_in_the_callers_thread() -> None:
    server = LoadingServer(fail=RuntimeError("model requires more system memory"))
    with pytest.raises(RuntimeError, match="more system memory"):
        load_model(server, {"model": "smollm2"}, Terminal())  # type: ignore[arg-type]


def test_without_a_terminal_nothing_is_drawn() -> None:
    server = LoadingServer()
    server.loaded.set()
    load_model(server, {"model": "smollm2"})  # type: ignore[arg-type]
    assert server.polls == 0 and server.asked[0]["messages"] == []
