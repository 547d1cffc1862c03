"""A lean OpenAI-API client on ``http.client``: streamed chat completions and JSON posts.

``http.client`` rather than httpx: on two cores every
microsecond the measuring client spends per token is taken from the server
under test, and ``http.client`` spends about half of what httpx does.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class RequestFailed(RuntimeError):
    """The server answered with an error, or the stream ended early."""


@dataclass
class Streamed:
    """One streamed chat completion, timed on the client's clock (perf_counter)."""

    sent: float
    first: float
    """When the first chunk with content arrived (``sent`` if none did)."""
    last: float
    """When the last chunk with content arrived."""
    done: float
    """When the stream ended."""
    completion_tokens: int
    prompt_tokens: int | None
    content: str
    content_chunks: int

    @property
    def ttft(self) -> float:
        return self.first - self.sent

    @property
    def latency(self) -> float:
        return self.done - self.sent

    @property
    def decode_rate(self) -> float:
        """Tokens per second from the first content to the last; the first token is
        prompt evaluation's, so it is not counted."""
        span = self.last - self.first
        return (self.completion_tokens - 1) / span if span > 0 else 0.0


def _connect(url: str, timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)


def post_json(url: str, path: str, body: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    """POST ``body``; the decoded JSON reply, RequestFailed on a non-200 status."""
    connection = _connect(url, timeout)
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RequestFailed(f"{path}: HTTP {response.status}: {data[:500]!r}")
        reply: dict[str, Any] = json.loads(data)
        return reply
    finally:
        connection.close()


def stream_chat(url: str, body: dict[str, Any], timeout: float = 600) -> Streamed:
    """POST a streaming ``/v1/chat/completions`` and read its server-sent events.

    The completion's token count is the server's ``usage`` when it sends one; else,
    with ``finish_reason: length``, the ``max_tokens`` asked for; else the number of
    chunks that carried content (one per token on the servers we compare).
    """
    body = {**body, "stream": True}
    connection = _connect(url, timeout)
    content: list[str] = []
    usage: dict[str, Any] | None = None
    finish: str | None = None
    sent = time.perf_counter()
    first = last = 0.0
    try:
        connection.request(
            "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        if response.status != 200:
            raise RequestFailed(f"HTTP {response.status}: {response.read()[:500]!r}")
        while line := response.readline():
            if not line.startswith(b"data:"):
                continue  # blank separators, comments (pings), event names
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            now = time.perf_counter()
            chunk = json.loads(data)
            if "error" in chunk:
                raise RequestFailed(str(chunk["error"]))
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or ():
                finish = choice.get("finish_reason") or finish
                text = (choice.get("delta") or {}).get("content")
                if text:
                    content.append(text)
                    first = first or now
                    last = now
        done = time.perf_counter()
    finally:
        connection.close()
    if usage and usage.get("completion_tokens") is not None:
        tokens = int(usage["completion_tokens"])
    elif finish == "length" and body.get("max_tokens"):
        tokens = int(body["max_tokens"])
    else:
        tokens = len(content)
    prompt_tokens = usage.get("prompt_tokens") if usage else None
    return Streamed(
        sent=sent,
        first=first or done,
        last=last or done,
        done=done,
        completion_tokens=tokens,
        prompt_tokens=None if prompt_tokens is None else int(prompt_tokens),
        content="".join(content),
        content_chunks=len(content),
    )


def chat_once(url: str, body: dict[str, Any], timeout: float = 600) -> tuple[float, dict[str, Any]]:
    """A non-streamed chat completion: (seconds from sending to the whole reply, reply)."""
    started = time.perf_counter()
    reply = post_json(url, "/v1/chat/completions", {**body, "stream": False}, timeout)
    return time.perf_counter() - started, reply
