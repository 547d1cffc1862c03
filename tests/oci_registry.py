"""A minimal OCI distribution registry for tests: a directory served over real HTTP.

    <root>/manifests/<namespace>/<model>/<tag>   manifest bytes as pushed
    <root>/blobs/sha256-<hex>                    blobs, verified on upload

Enough of the protocol for pull and push: manifests GET/HEAD/PUT, blobs GET/HEAD (a
``Range: bytes=<start>-[<end>]`` answered ``206 Partial Content``), uploads by POST (a
relative Location) then one PUT ``?digest=``. It runs uvicorn in a background thread on
a free port. Faults on demand: ``cut_after(digest, n)`` makes the next GET of a blob
send ``n`` bytes of its body, then drop the connection.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
_CHUNK = 1 << 16


@dataclass
class Faults:
    """What the registry does wrong on purpose, and what it saw."""

    cuts: dict[str, int] = field(default_factory=dict)  # digest -> body bytes before the cut
    headers: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    unlogged: int = 0  # cuts whose server-side error is not worth a traceback
    ignore_ranges: bool = False  # answer a Range with the whole blob (200), as some servers do


async def _file_body(path: Path, start: int, end: int, cut: int | None) -> AsyncIterator[bytes]:
    """Bytes ``start`` to ``end`` (exclusive) of ``path``; with ``cut``, only that many:
    the body then ends short of its Content-Length, and uvicorn drops the connection."""
    sent = 0
    with open(path, "rb") as f:
        f.seek(start)
        while start + sent < end:
            want = min(_CHUNK, end - start - sent)
            if cut is not None:
                want = min(want, cut - sent)
            if want <= 0:
                return
            chunk = f.read(want)
            if not chunk:
                return
            sent += len(chunk)
            yield chunk


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"errors": [{"code": code, "message": message}]}, status_code=status)


def registry_app(
    root: Path,
    log: list[tuple[str, str]],
    token: str | None = None,
    faults: Faults | None = None,
) -> FastAPI:
    """The registry over ``root``; every request's (method, path) is appended to ``log``
    (and, with ``faults``, its headers to ``faults.headers``).

    With a ``token``, /v2/ answers 401 with a Bearer challenge unless the request
    carries it; ``GET /token`` hands it out.
    """
    app = FastAPI()
    faults = faults or Faults()

    @app.middleware("http")
    async def record(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        log.append((request.method, request.url.path))
        faults.headers.append((request.method, request.url.path, dict(request.headers)))
        authorized = request.headers.get("Authorization") == f"Bearer {token}"
        if token and request.url.path.startswith("/v2/") and not authorized:
            realm = f"{request.url.scheme}://{request.url.netloc}/token"
            challenge = f'Bearer realm="{realm}",service="test",scope="repository:x:pull"'
            response = _error(401, "UNAUTHORIZED", "authentication required")
            response.headers["WWW-Authenticate"] = challenge
            return response
        return await call_next(request)

    @app.get("/token")
    async def issue(service: str = "", scope: str = "") -> Response:
        if not token or service != "test" or not scope.startswith("repository:"):
            return _error(400, "DENIED", "bad token request")
        return JSONResponse({"token": token})

    blobs = root / "blobs"
    uploads = root / "uploads"
    for directory in (blobs, uploads):
        directory.mkdir(parents=True, exist_ok=True)

    def manifest_path(namespace: str, model: str, tag: str) -> Path | None:
        if not all(_PART.fullmatch(p) and ".." not in p for p in (namespace, model, tag)):
            return None
        return root / "manifests" / namespace / model / tag

    def blob_path(digest: str) -> Path | None:
        match = _DIGEST.fullmatch(digest)
        return blobs / f"sha256-{match.group(1)}" if match else None

    @app.get("/v2/")
    async def base() -> JSONResponse:
        return JSONResponse({})

    @app.api_route("/v2/{namespace}/{model}/manifests/{tag}", methods=["GET", "HEAD"])
    async def get_manifest(namespace: str, model: str, tag: str) -> Response:
        path = manifest_path(namespace, model, tag)
        if path is None or not path.is_file():
            return _error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        data = path.read_bytes()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        headers = {"Docker-Content-Digest": digest}
        return Response(data, media_type=MANIFEST, headers=headers)

    @app.put("/v2/{namespace}/{model}/manifests/{tag}")
    async def put_manifest(namespace: str, model: str, tag: str, request: Request) -> Response:
        path = manifest_path(namespace, model, tag)
        if path is None:
            return _error(400, "NAME_INVALID", "invalid repository name")
        data = await request.body()
        body = json.loads(data)
        for layer in [body["config"], *body["layers"]]:
            blob = blob_path(layer["digest"])
            if blob is None or not blob.is_file():
                return _error(400, "MANIFEST_BLOB_UNKNOWN", f"blob {layer['digest']} unknown")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return Response(status_code=201)

    @app.api_route("/v2/{namespace}/{model}/blobs/{digest}", methods=["GET", "HEAD"])
    async def get_blob(namespace: str, model: str, digest: str, request: Request) -> Response:
        path = blob_path(digest)
        if path is None or not path.is_file():
            return _error(404, "BLOB_UNKNOWN", "blob unknown")
        size = path.stat().st_size
        headers = {"Accept-Ranges": "bytes", "Docker-Content-Digest": digest}
        start, end, status = 0, size, 200
        asked = request.headers.get("Range")
        if asked is not None and not faults.ignore_ranges:
            match = _RANGE.fullmatch(asked.strip())
            if match is None or int(match.group(1)) >= size:
                headers["Content-Range"] = f"bytes */{size}"
                return Response(status_code=416, headers=headers)
            start, status = int(match.group(1)), 206
            if match.group(2):
                end = min(size, int(match.group(2)) + 1)
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        headers["Content-Length"] = str(end - start)
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        cut = faults.cuts.pop(digest, None)
        if cut is not None:
            faults.unlogged += 1
        return StreamingResponse(
            _file_body(path, start, end, cut),
            status_code=status,
            headers=headers,
            media_type="application/octet-stream",
        )

    @app.post("/v2/{namespace}/{model}/blobs/uploads/")
    async def start_upload(namespace: str, model: str) -> Response:
        upload = secrets.token_hex(8)
        (uploads / upload).touch()
        location = f"/v2/{namespace}/{model}/blobs/uploads/{upload}?_state=x"
        return Response(status_code=202, headers={"Location": location})

    @app.put("/v2/{namespace}/{model}/blobs/uploads/{upload}")
    async def finish_upload(namespace: str, model: str, upload: str, request: Request) -> Response:
        digest = request.query_params.get("digest", "")
        target = blob_path(digest)
        partial = uploads / upload
        if not re.fullmatch(r"[0-9a-f]{16}", upload) or not partial.is_file():
            return _error(404, "BLOB_UPLOAD_UNKNOWN", "upload unknown")
        if target is None:
            return _error(400, "DIGEST_INVALID", "invalid digest")
        hasher = hashlib.sha256()
        with open(partial, "wb") as f:
            async for chunk in request.stream():
                hasher.update(chunk)
                f.write(chunk)
        if "sha256:" + hasher.hexdigest() != digest:
            partial.unlink()
            return _error(400, "DIGEST_INVALID", "digest mismatch")
        partial.replace(target)
        return Response(
            status_code=201, headers={"Location": f"/v2/{namespace}/{model}/blobs/{digest}"}
        )

    return app


class _QuietCuts(logging.Filter):
    """Drops uvicorn's complaint about a body cut short, once per cut asked for: the
    fault was on purpose."""

    def __init__(self, faults: Faults) -> None:
        super().__init__()
        self.faults = faults

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if self.faults.unlogged > 0 and "shorter than Content-Length" in str(exc):
            self.faults.unlogged -= 1
            return False
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    """``registry_app(root)`` served on 127.0.0.1:<port> until ``stop()``."""

    def __init__(self, root: Path, token: str | None = None) -> None:
        self.root = root
        self.requests: list[tuple[str, str]] = []
        self.faults = Faults()
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        config = uvicorn.Config(
            registry_app(root, self.requests, token, self.faults),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
        )
        self._quiet = _QuietCuts(self.faults)
        logging.getLogger("uvicorn.error").addFilter(self._quiet)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test registry did not start")
            time.sleep(0.02)

    def cut_after(self, digest: str, n: int) -> None:
        """The next GET of blob ``digest`` sends ``n`` bytes of its body, then drops the
        connection (as a registry that dies, or a network that fails, does)."""
        self.faults.cuts[digest] = n

    def ranges(self, digest: str) -> list[str | None]:
        """The ``Range`` header of each GET of blob ``digest`` so far (None: none sent)."""
        return [
            headers.get("range")
            for method, path, headers in self.faults.headers
            if method == "GET" and path.endswith(f"/blobs/{digest}")
        ]

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        logging.getLogger("uvicorn.error").removeFilter(self._quiet)
