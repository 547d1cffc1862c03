"""Who may talk to the server: CORS origins and the DNS-rebinding Host check.

A server bound to loopback trusts the machine, so a web page elsewhere must
not reach it: not through a cross-origin request (CORS), and not through a
DNS name that an attacker re-points at 127.0.0.1 (the Host header check).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

# Local pages and desktop/editor shells that embed a client; OLLAMA_ORIGINS adds to these.
DEFAULT_ORIGINS: tuple[str, ...] = (
    *(
        f"{scheme}://{host}{port}"
        for scheme in ("http", "https")
        for host in ("localhost", "127.0.0.1", "0.0.0.0")
        for port in ("", ":*")
    ),
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
)
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")


def origin_regex(patterns: Iterable[str]) -> str:
    """One regular expression matching any of the glob-style origin patterns (``*`` = any)."""
    parts = [".*" if p == "*" else ".*".join(re.escape(s) for s in p.split("*")) for p in patterns]
    return "^(?:" + "|".join(parts) + ")$" if parts else "(?!)"


def split_host(header: str) -> str:
    """The host part of a Host header: without a port, IPv6 brackets removed."""
    header = header.strip()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    if header.count(":") == 1:
        return header.partition(":")[0]
    return header


def is_loopback_bind(bound: str) -> bool:
    try:
        return ipaddress.ip_address(split_host(bound) or "127.0.0.1").is_loopback
    except ValueError:
        return bound.lower() == "localhost"


def host_allowed(header: str, hostname: str | None = None) -> bool:
    """Whether a request to a loopback-bound server may carry this Host header.

    Allowed: no header, an IP that is loopback, private or unspecified, ``localhost``,
    this machine's name, and the reserved local suffixes. Anything else is a name
    somebody else's DNS controls.
    """
    host = split_host(header).lower().rstrip(".")
    if not host or host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return ip.is_loopback or ip.is_private or ip.is_unspecified or ip.is_link_local
    if host == (hostname if hostname is not None else socket.gethostname()).lower():
        return True
    return host.endswith(_LOCAL_SUFFIXES)


class HostCheck:
    """ASGI middleware: 403 for a Host header that fails ``host_allowed``."""

    def __init__(self, app: ASGIApp, *, bound: str) -> None:
        self.app = app
        self.active = is_loopback_bind(bound)
        self.hostname = socket.gethostname()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.active and scope["type"] == "http":
            header = Headers(scope=scope).get("host", "")
            if not host_allowed(header, self.hostname):
                await JSONResponse({"error": "forbidden host"}, status_code=403)(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)
