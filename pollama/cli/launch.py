"""Starting ``pollama serve`` in the background, as early as the command line can.

A command that needs a server and finds none at OLLAMA_HOST starts one, as Ollama's
CLI does (``client.ensure_server``). For ``pollama run`` on a machine with no server,
that start is most of what the user waits for, so ``cli.main`` starts it before the
command line imports its own modules (``start_early``); both then start at once, and
``ensure_server`` adopts the process (``take_started``) instead of starting another.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
from pathlib import Path

from pollama.settings import Settings

_started: tuple[subprocess.Popen[bytes], int] | None = None


def server_log_path(settings: Settings) -> Path:
    """Where a server started in the background writes: ``logs/server.log`` beside the
    model store (``~/.ollama/logs/server.log`` by default, as Ollama's app does)."""
    return settings.models_dir.parent / "logs" / "server.log"


def is_local(host: str) -> bool:
    """Whether a server bound to ``host`` would run on this machine."""
    if host in ("", "localhost", "0.0.0.0", "::"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def start_server(log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``pollama serve`` detached from this terminal, appending to ``log_path``;
    returns the process and where its output starts in the log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        offset = log.tell()
        process = subprocess.Popen(
            [sys.executable, "-m", "pollama", "serve"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in this terminal must not reach the server
        )
    return process, offset


def start_early(settings: Settings) -> None:
    """Start a server now if this machine should have one at OLLAMA_HOST and nothing
    listens there (a refused connect: a port that answers is left to the command)."""
    global _started
    if _started is not None or not is_local(settings.host):
        return
    address = ("127.0.0.1" if settings.host in ("", "0.0.0.0") else settings.host, settings.port)
    try:
        with socket.create_connection(address, timeout=0.5):
            return
    except ConnectionRefusedError:
        pass
    except OSError:
        return  # unresolvable, unreachable or slow: the command reports it
    _started = start_server(server_log_path(settings))


def take_started() -> tuple[subprocess.Popen[bytes], int] | None:
    """The server ``start_early`` started, once (None if it started none)."""
    global _started
    started, _started = _started, None
    return started
