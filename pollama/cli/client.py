"""A synchronous client for a running ``pollama serve``, and starting one when none answers.

    ClientError                 anything the command line shows as ``Error: <message>``
    ├── ServerUnreachable       nothing answers at OLLAMA_HOST (and none could be started)
    └── ResponseError           the server answered with an error; keeps the HTTP status

The server answers errors as ``{"error": "..."}``, before streaming with an HTTP
status, after the first byte as a last NDJSON line; both become a ResponseError
carrying that message.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Generator, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import httpx

from pollama.cli.launch import is_local, server_log_path, start_server, take_started
from pollama.settings import Settings

TIMEOUT = httpx.Timeout(None, connect=10.0)
"""Generation and model loads take as long as they take; only connecting is bounded."""
HEARTBEAT_TIMEOUT = httpx.Timeout(2.0)
START_DEADLINE_S = 60.0
"""How long a server started in the background may take to answer."""
_START_POLL_S = 0.02
"""Between polls of a server starting in the background (a refused connect is cheap)."""


Stream = Generator[dict[str, Any], None, None]
"""NDJSON records as they arrive; ``close()`` it to stop early (the connection is closed)."""


class ClientError(Exception):
    """An error the command line shows as ``Error: <message>``."""


class ServerUnreachable(ClientError):
    """Nothing answers at the server's address."""


class ResponseError(ClientError):
    """The server answered with an error."""

    def __init__(self, status_code: int, message: str, *, api_error: bool = True) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.api_error = api_error
        """False when the answer was not the API's ``{"error": ...}`` (a missing route)."""

    @property
    def not_found(self) -> bool:
        """The model (or blob) named does not exist: a 404 in the API's error shape."""
        return self.status_code == 404 and self.api_error


class Client:
    """One method per endpoint of Ollama's native API; streaming ones yield NDJSON records."""

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = TIMEOUT,
        api_key: str = "",
    ) -> None:
        self.base_url = base_url
        # POLLAMA_API_KEY / OLLAMA_API_KEY, for a server that requires keys.
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._http = httpx.Client(
            base_url=base_url,
            transport=transport,
            timeout=timeout,
            headers=headers,
            # Loading the CA bundle costs `pollama run` 35-60 ms before its first request;
            # a plain-HTTP server (the usual local one) never uses it. Redirects are not
            # followed, so an http:// base URL never reaches TLS.
            verify=base_url.startswith("https:"),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- endpoints -----------------------------------------------------------------------------

    def heartbeat(self) -> bool:
        """Whether a server answers ``GET /``."""
        try:
            return self._http.get("/", timeout=HEARTBEAT_TIMEOUT).status_code == 200
        except httpx.TransportError:
            return False

    def version(self) -> str:
        return str(self._json("GET", "/api/version").get("version", ""))

    def list_models(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/api/tags").get("models") or [])

    def running(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/api/ps").get("models") or [])

    def loading(self) -> dict[str, float]:
        """Models being loaded now (0–1 each), from pollama's addition to ``/api/ps``."""
        rows = self._json("GET", "/api/ps").get("loading") or []
        return {str(r["name"]): float(r["progress"]) for r in rows if "name" in r}

    def show(self, model: str, *, verbose: bool = False) -> dict[str, Any]:
        return self._json("POST", "/api/show", {"model": model, "verbose": verbose})

    def chat(self, body: dict[str, Any]) -> Stream:
        """``/api/chat`` streamed; close the iterator to stop the response early."""
        return self._stream("POST", "/api/chat", {**body, "stream": True})

    def generate(self, body: dict[str, Any]) -> dict[str, Any]:
        """``/api/generate`` as one object (``stream: false``)."""
        return self._json("POST", "/api/generate", {**body, "stream": False})

    def create(self, body: dict[str, Any]) -> Stream:
        return self._stream("POST", "/api/create", {**body, "stream": True})

    def blob_exists(self, digest: str) -> bool:
        with self._errors():
            response = self._http.head(f"/api/blobs/{digest}")
        if response.status_code == 404:
            return False
        _raise_for_error(response)
        return True

    def upload_blob(self, digest: str, chunks: Iterable[bytes], size: int) -> None:
        """POST a blob's bytes, streamed; the server checks them against ``digest``."""
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        self._request("POST", f"/api/blobs/{digest}", content=chunks, headers=headers)

    def copy(self, source: str, destination: str) -> None:
        self._request("POST", "/api/copy", json={"source": source, "destination": destination})

    def delete(self, model: str) -> None:
        self._request("DELETE", "/api/delete", json={"model": model})

    def pull(self, model: str, *, insecure: bool = False) -> Stream:
        body = {"model": model, "insecure": insecure, "stream": True}
        return self._stream("POST", "/api/pull", body)

    def push(self, model: str, *, insecure: bool = False) -> Stream:
        body = {"model": model, "insecure": insecure, "stream": True}
        return self._stream("POST", "/api/push", body)

    # -- plumbing ------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with self._errors():
            response = self._http.request(method, path, **kwargs)
        _raise_for_error(response)
        return response

    def _json(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        response = self._request(method, path, json=body)
        try:
            data = response.json()
        except ValueError:
            raise ClientError(f"{path}: the server did not answer JSON") from None
        if not isinstance(data, dict):
            raise ClientError(f"{path}: the server answered {type(data).__name__}, not an object")
        return data

    def _stream(self, method: str, path: str, body: Any) -> Stream:
        with self._errors(), self._http.stream(method, path, json=body) as response:
            if response.is_error:
                response.read()
                _raise_for_error(response)
            for line in response.iter_lines():
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    raise ClientError(f"{path}: the server sent a line that is not JSON") from None
                if isinstance(record, dict) and record.get("error"):
                    raise ResponseError(response.status_code, str(record["error"]))
                yield record

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError:
            raise ServerUnreachable(
                f"could not connect to a pollama server at {self.base_url}; "
                "is `pollama serve` running?"
            ) from None
        except httpx.TransportError as exc:
            raise ClientError(f"lost the connection to the server: {exc}") from None


def _raise_for_error(response: httpx.Response) -> None:
    if not response.is_error:
        return
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        raise ResponseError(response.status_code, data["error"])
    # Not the API's error shape: e.g. FastAPI's {"detail": "Not Found"} for a route
    # this server does not have.
    detail = data.get("detail") if isinstance(data, dict) else None
    text = detail if isinstance(detail, str) else response.text.strip()
    request = response.request
    raise ResponseError(
        response.status_code,
        f"{request.method} {request.url.path}: {response.status_code} "
        f"{text or response.reason_phrase}",
        api_error=False,
    )


# -- starting a server -------------------------------------------------------------------------


def ensure_server(settings: Settings, *, err: TextIO | None = None) -> Client:
    """A client for the server at OLLAMA_HOST, starting ``pollama serve`` in the
    background (and saying so on ``err``) when nothing answers there."""
    client = Client(settings.base_url, api_key=settings.client_api_key)
    if client.heartbeat():
        return client
    try:
        if not is_local(settings.host):
            raise ServerUnreachable(f"could not connect to a pollama server at {settings.base_url}")
        log_path = server_log_path(settings)
        process, offset = take_started() or start_server(log_path)
        print(
            f"started pollama serve in the background (pid {process.pid}); log: {log_path}",
            file=err or sys.stderr,
            flush=True,
        )
        wait_until_up(client, process, log_path, offset, START_DEADLINE_S)
    except BaseException:
        client.close()
        raise
    return client


def wait_until_up(
    client: Client,
    process: subprocess.Popen[bytes],
    log_path: Path,
    offset: int,
    deadline_s: float,
) -> None:
    """Poll ``GET /`` until the server answers; ServerUnreachable with the tail of its log
    if the process exits first or the deadline passes."""
    give_up = time.monotonic() + deadline_s
    while time.monotonic() < give_up:
        if client.heartbeat():
            return
        try:
            process.wait(timeout=_START_POLL_S)  # also the pause between polls
        except subprocess.TimeoutExpired:
            continue
        if client.heartbeat():  # another server won the race for the port
            return
        raise ServerUnreachable(
            f"pollama serve exited with status {process.returncode} before it answered; "
            f"the end of {log_path}:\n{log_tail(log_path, offset)}"
        )
    raise ServerUnreachable(
        f"pollama serve (pid {process.pid}) did not answer within {deadline_s:.0f}s; see {log_path}"
    )


def log_tail(path: Path, offset: int = 0, lines: int = 20) -> str:
    """The last ``lines`` lines written to ``path`` after byte ``offset``."""
    try:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(cannot read the log: {exc})"
    return "\n".join(text.rstrip().splitlines()[-lines:])
