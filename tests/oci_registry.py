"""A minimal OCI distribution registry for tests: a directory served over real HTTP.

    <root>/manifests/<namespace>/<model>/<tag>   manifest bytes as pushed
    <root>/blobs/sha256-<hex>                    blobs, verified on upload

Enough of the protocol for pull and push: manifests GET/HEAD/PUT, blobs GET/HEAD,
uploads by POST (a relative Location) then one PUT ``?digest=``. It runs uvicorn in a
background thread on a free port.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"errors": [{"code": code, "message": message}]}, status_code=status)


def registry_app(root: Path, log: list[tuple[str, str]], token: str | None = None) -> FastAPI:
    """The registry over ``root``; every request's (method, path) is appended to ``log``.

    With a ``token``, /v2/ answers 401 with a Bearer challenge unless the request
    carries it; ``GET /token`` hands it out.
    """
    app = FastAPI()

    @app.middleware("http")
    async def record(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        log.append((request.method, request.url.path))
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
    async def get_blob(namespace: str, model: str, digest: str) -> Response:
        path = blob_path(digest)
        if path is None or not path.is_file():
            return _error(404, "BLOB_UNKNOWN", "blob unknown")
        return FileResponse(path, media_type="application/octet-stream")

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    """``registry_app(root)`` served on 127.0.0.1:<port> until ``stop()``."""

    def __init__(self, root: Path, token: str | None = None) -> None:
        self.root = root
        self.requests: list[tuple[str, str]] = []
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        config = uvicorn.Config(
            registry_app(root, self.requests, token),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test registry did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
