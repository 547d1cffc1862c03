"""One replica: its own ``pollama serve`` on loopback, and the requests sent to it.

The replica is a Ray Serve deployment class (``app`` wraps it). It starts ``pollama
serve`` as a child process with its share of the machine (``POLLAMA_NUM_THREAD``) and
the shared model store, so each replica has its own scheduler, runners and prefix
caches, exactly as a server on its own. ``forward`` relays one HTTP request and
yields the response: first its status and headers, then its body as the server
writes it, chunk by chunk. The child dies with the replica (``PR_SET_PDEATHSIG``), and
its runners with it (``runner/parent.py``), so a replica Ray kills or restarts
leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from pollama.llm.process import free_port
from pollama.ray.affinity import Recent
from pollama.ray.metrics import board

START_TIMEOUT_S = 120.0
_PR_SET_PDEATHSIG = 1
_HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}
_DROPPED_REPLY = {"content-length", "transfer-encoding", "connection", "date", "server"}
"""Headers the proxy writes itself (the body streams, so its length is not fixed)."""


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the replica's process ends (Linux)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class PollamaReplica:
    """A Ray Serve replica serving every API through its own ``pollama serve``."""

    def __init__(self, env: Mapping[str, str]) -> None:
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = Path(tempfile.mkdtemp(prefix="pollama-replica-")) / "serve.log"
        self.id = replica_id()
        child_env = {
            **os.environ,
            **env,
            "OLLAMA_HOST": f"127.0.0.1:{port}",
            "POLLAMA_REPLICA_ID": self.id,  # which replica a server process belongs to
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pollama", "serve"],
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl only, before exec
            )
        self._wait_until_up()
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(None, connect=10.0),
            verify=False,  # plain HTTP over loopback: skip loading a CA bundle
        )
        self._prefixes = Recent(capacity=2_000)
        self.ongoing = 0
        self._board: Any = None
        key = os.environ.get("POLLAMA_API_KEY") or os.environ.get("OLLAMA_API_KEY")
        self._auth = {"Authorization": f"Bearer {key}"} if key else {}

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        with httpx.Client(base_url=self.base_url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"pollama serve exited ({self.log_tail()})")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/").status_code == 200:
                        return
                time.sleep(0.05)  # a refused connect is cheap; the child needs ~1 s
        raise RuntimeError(f"pollama serve did not answer within {START_TIMEOUT_S:.0f}s")

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def forward(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        hint: Mapping[str, str],
    ) -> AsyncIterator[dict[str, Any] | bytes]:
        """Relay one request: yields ``{"status", "headers", "replica"}``, then the
        body's chunks as they come. ``hint`` is what the router routed on."""
        prefix = hint.get("prefix", "")
        if prefix:
            self._prefixes.put(prefix)
        sent = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP]
        self.ongoing += 1
        try:
            request = self._client.build_request(method, path, headers=sent, content=body)
            response = await self._client.send(request, stream=True)
            try:
                yield {
                    "status": response.status_code,
                    "headers": [
                        (k, v)
                        for k, v in response.headers.multi_items()
                        if k.lower() not in _DROPPED_REPLY
                    ],
                    "replica": self.id,
                }
                async for chunk in response.aiter_raw():
                    yield chunk
            finally:
                await response.aclose()
        finally:
            self.ongoing -= 1

    async def record_routing_stats(self) -> dict[str, Any]:
        """What the router ranks on: loaded models, conversations served, requests now.
        (Asked every second: the replica posts its ``/metrics`` to the board then too.)"""
        models: list[str] = []
        with contextlib.suppress(httpx.HTTPError, ValueError):
            reply = await self._client.get("/api/ps", timeout=2.0)
            models = [m["name"] for m in reply.json().get("models", [])]
        await self._post_metrics()
        return {"models": models, "prefixes": self._prefixes.keys(), "ongoing": self.ongoing}

    async def _post_metrics(self) -> None:
        with contextlib.suppress(httpx.HTTPError):
            reply = await self._client.get("/metrics", headers=self._auth, timeout=2.0)
            if reply.status_code == 200:
                if self._board is None:
                    self._board = board()
                self._board.put.remote(self.id, reply.text)

    async def check_health(self) -> None:
        """Ray restarts a replica whose server died or stopped answering."""
        if self.process.poll() is not None:
            raise RuntimeError(f"pollama serve exited: {self.log_tail()}")
        reply = await self._client.get("/", timeout=10.0)
        reply.raise_for_status()

    def __del__(self) -> None:
        process = getattr(self, "process", None)
        if process is not None and process.poll() is None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


def replica_id() -> str:
    """This replica's id in Ray Serve ("" outside a replica)."""
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # noqa: BLE001 - outside a replica there is no context
        return ""
