"""Pull and push models over the OCI distribution protocol (what Ollama's registry speaks).

A model ``host[:port]/namespace/model:tag`` lives at ``https://host[:port]`` (``http``
when ``insecure``) as repository ``namespace/model``:

    GET  /v2/<ns>/<model>/manifests/<tag>         the manifest (pull)
    GET  /v2/<ns>/<model>/blobs/<digest>          a layer or the config blob (pull)
    HEAD /v2/<ns>/<model>/blobs/<digest>          is it there already? (push)
    POST /v2/<ns>/<model>/blobs/uploads/          start an upload -> Location (push)
    PUT  <Location>?digest=<digest>               the blob, in one request (push)
    PUT  /v2/<ns>/<model>/manifests/<tag>         the manifest, last (push)

A pull streams each blob into the store (hashed as it arrives, verified, renamed into
place) and writes the manifest last, so a pull that fails leaves no model behind, only
verified blobs that a later pull reuses and pruning removes. A blob cut off midway (the
registry died, the connection dropped, the client went away) keeps its bytes in a
resumable file (``BlobStore.open_download``); the next pull asks for the rest with
``Range: bytes=<held>-`` and appends a ``206`` answer, or starts over on a ``200``.
Its progress starts at the bytes held and never goes back. Every request has a
timeout: a registry that cannot be reached fails the pull within the connect timeout.
A ``401`` with a ``Bearer`` challenge is answered once with a token from the realm it
names, the way Docker registries expect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from pollama.errors import DigestMismatch, ModelNotFound, RegistryError
from pollama.store.blobs import BlobDownload
from pollama.store.disk import Store
from pollama.store.lock import WAITING, to_thread_to_the_end
from pollama.store.manifest import (
    MANIFEST_MEDIA_TYPE,
    CorruptManifest,
    Layer,
    Manifest,
    parse_manifest,
)
from pollama.store.names import ModelName
from pollama.store.progress import Progress, reports_from

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
"""Connect within 10 s; then no read, write or pool wait may stall for over 60 s."""

OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
MAX_MANIFEST = 4 << 20
_UPLOAD_CHUNK = 1 << 20
# Progress is reported at most once per this share of a blob (and at its end).
_PROGRESS_STEP = 0.01
_MIN_PROGRESS_BYTES = 1 << 20

Report = Callable[[Progress], None]


async def pull(
    store: Store,
    name: ModelName,
    *,
    insecure: bool = False,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncGenerator[Progress, None]:
    """Pull ``name`` into ``store``, yielding Ollama's progress statuses.

    The manifest is fetched before the first status, so a missing model (ModelNotFound)
    or an unreachable registry (RegistryError) fails before anything is streamed.
    """
    async with _Session(name, insecure=insecure, timeout=timeout, transport=transport) as session:
        manifest, data = await session.fetch_manifest()
        yield Progress("pulling manifest")

        async def write(report: Report) -> None:
            # The blobs and the manifest under one hold of the store's lock: no other
            # server's prune runs between them, nor another write.
            async with store.lock.held(on_wait=lambda: report(Progress(WAITING))):
                await session.download(store, manifest, report)
                report(Progress("verifying sha256 digest"))
                report(Progress("writing manifest"))
                # The registry's bytes, not a re-serialisation: the digest is the remote one.
                await to_thread_to_the_end(store.write_manifest_bytes, name, data)

        async with aclosing(reports_from(write)) as steps:
            async for progress in steps:
                yield progress
        yield Progress("success")


async def push(
    store: Store,
    name: ModelName,
    *,
    insecure: bool = False,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncGenerator[Progress, None]:
    """Push the stored model ``name`` to its registry, yielding Ollama's progress statuses.

    ModelNotFound, before the first status, when there is no such model here.
    """
    resolved = await asyncio.to_thread(store.resolve, name)
    # The stored bytes, not a re-serialisation: the registry then holds the same digest.
    data = await asyncio.to_thread(store.manifest_path(resolved.name).read_bytes)
    manifest = parse_manifest(data, resolved.name.display)
    async with _Session(name, insecure=insecure, timeout=timeout, transport=transport) as session:
        yield Progress("retrieving manifest")
        async with aclosing(reports_from(partial(session.upload, store, manifest))) as steps:
            async for progress in steps:
                yield progress
        yield Progress("pushing manifest")
        await session.put_manifest(data, manifest.media_type)
        yield Progress("success")


def short_digest(digest: str) -> str:
    """The 12 hex digits progress lines name a blob by."""
    return digest.removeprefix("sha256:")[:12]


class _Session:
    """Requests to one repository of one registry, sharing a connection pool and a token."""

    def __init__(
        self,
        name: ModelName,
        *,
        insecure: bool,
        timeout: httpx.Timeout,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self.name = name
        self.host = name.host
        self.repository = f"/v2/{name.namespace}/{name.model}"
        self._timeout = timeout
        self._pushing = False
        self._token: str | None = None
        self._client = httpx.AsyncClient(
            base_url=f"{'http' if insecure else 'https'}://{name.host}",
            timeout=timeout,
            follow_redirects=True,
            transport=transport,
        )

    async def __aenter__(self) -> _Session:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._client.aclose()

    # -- pull --------------------------------------------------------------------------------

    async def fetch_manifest(self) -> tuple[Manifest, bytes]:
        what = "pull model manifest"
        url = f"{self.repository}/manifests/{self.name.tag}"
        accept = f"{MANIFEST_MEDIA_TYPE}, {OCI_MANIFEST_MEDIA_TYPE}"
        with self._translated(what):
            async with self._open("GET", url, headers={"Accept": accept}) as response:
                if response.status_code == 404:
                    raise ModelNotFound(self.name.display)
                await self._expect(response, what, 200)
                data = await _read_limited(response, MAX_MANIFEST, what)
        try:
            return parse_manifest(data, f"{self.name.display} from {self.host}"), data
        except CorruptManifest as exc:
            problem = f"{self.host} sent an unusable manifest: {exc.problem}"
            raise RegistryError(f"{what}: {problem}") from None

    async def download(self, store: Store, manifest: Manifest, report: Report) -> None:
        """Every blob the manifest names that the store lacks; the config blob last."""
        blobs = _unique((*manifest.layers, manifest.config))
        for layer in blobs:
            await self._download(store, layer, report)
        # A blob present when the pull began (or finished early in a long pull) may have
        # been pruned meanwhile; fetch any such again before the manifest names it.
        for layer in blobs:
            if not store.has_blob(layer.digest):
                await self._download(store, layer, report)

    async def _download(self, store: Store, layer: Layer, report: Report) -> None:
        status = f"pulling {short_digest(layer.digest)}"
        download = None
        if not store.has_blob(layer.digest):
            download = await asyncio.to_thread(store.open_download, layer.digest)
        if download is None:
            report(Progress(status, layer.digest, layer.size, layer.size))
            return
        what = f"pull model: {status}"
        with download, self._translated(what):
            if download.offset > layer.size or (
                download.offset == layer.size and not download.matches()
            ):
                download.restart()  # longer than the blob, or all of it but wrong
            meter = _Meter(report, status, layer)
            if download.offset < layer.size:
                await self._fetch(download, layer, meter, what)
            try:
                await download.commit()
            except DigestMismatch as exc:
                raise RegistryError(f"{what}: {exc}") from None
        meter.finish()

    async def _fetch(self, download: BlobDownload, layer: Layer, meter: _Meter, what: str) -> None:
        """The blob's bytes after those ``download`` holds, appended to it."""
        url = f"{self.repository}/blobs/{layer.digest}"
        # Identity: a Range counts the bytes as stored, not as some encoding of them.
        headers = {"Accept-Encoding": "identity"}
        if download.offset:
            headers["Range"] = f"bytes={download.offset}-"
        async with self._open("GET", url, headers=headers) as response:
            if response.status_code == 416 and "Range" in headers:
                # The registry will not serve what we asked for: start over next time.
                download.discard()
            await self._expect(response, what, 200, 206)
            start = _range_start(response, layer.size)
            if start is None or start not in (0, download.offset):
                download.discard()
                raise RegistryError(f"{what}: {self.host} answered an unusable byte range")
            if start == 0:
                download.restart()  # a 200: the whole blob, whatever we asked for
            if start:
                log.info(
                    "resuming blob download: host=%s digest=%s offset=%d size=%d",
                    self.host,
                    layer.digest,
                    start,
                    layer.size,
                )
            meter.start_at(start)
            try:
                async for chunk in meter.count(response.aiter_bytes()):
                    download.write(chunk)
            except _TooLarge as exc:
                download.discard()
                raise RegistryError(f"{what}: {exc}") from None
        if download.offset < layer.size:
            raise RegistryError(
                f"{what}: {self.host} sent {download.offset} of the blob's {layer.size} bytes"
            )

    # -- push --------------------------------------------------------------------------------

    async def upload(self, store: Store, manifest: Manifest, report: Report) -> None:
        self._pushing = True
        for layer in _unique((*manifest.layers, manifest.config)):
            await self._upload(store, layer, report)

    async def _upload(self, store: Store, layer: Layer, report: Report) -> None:
        status = f"pushing {short_digest(layer.digest)}"
        what = f"push model: {status}"
        meter = _Meter(report, status, layer)
        report(Progress(status, layer.digest, layer.size, 0))
        blob_url = f"{self.repository}/blobs/{layer.digest}"
        with self._translated(what):
            async with self._open("HEAD", blob_url) as response:
                if response.status_code == 200:
                    meter.finish()
                    return
                if response.status_code in (401, 403):
                    await self._expect(response, what, 200)
            async with self._open("POST", f"{self.repository}/blobs/uploads/") as response:
                await self._expect(response, what, 201, 202)
                location = response.headers.get("Location")
                if response.status_code == 201:  # the registry had it after all
                    meter.finish()
                    return
            if not location:
                raise RegistryError(f"{what}: {self.host} started an upload without a Location")
            target = self._client.base_url.join(location)
            target = target.copy_merge_params({"digest": layer.digest})
            path = store.blob_path(layer.digest)
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(layer.size),
            }
            body = partial(_file_chunks, path, meter)
            async with self._open("PUT", target, headers=headers, body=body) as response:
                await self._expect(response, what, 201, 204)
        meter.finish()

    async def put_manifest(self, data: bytes, media_type: str) -> None:
        what = "push model manifest"
        url = f"{self.repository}/manifests/{self.name.tag}"
        body = partial(_once, data)
        with self._translated(what):
            async with self._open(
                "PUT", url, headers={"Content-Type": media_type}, body=body
            ) as response:
                await self._expect(response, what, 200, 201, 202)

    # -- HTTP --------------------------------------------------------------------------------

    @asynccontextmanager
    async def _open(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        headers: dict[str, str] | None = None,
        body: Callable[[], AsyncIterator[bytes]] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """A streamed response; a Bearer challenge is answered once and the request
        re-sent (``body`` makes a fresh body for each attempt)."""
        for attempt in range(2):
            request = self._client.build_request(
                method,
                url,
                headers={**self._auth_headers(url), **(headers or {})},
                content=body() if body else None,
            )
            response = await self._client.send(request, stream=True)
            if (
                response.status_code == 401
                and attempt == 0
                and await self._authenticate(response.headers.get("WWW-Authenticate", ""))
            ):
                await response.aclose()
                continue
            try:
                yield response
            finally:
                await response.aclose()
            return

    def _auth_headers(self, url: str | httpx.URL) -> dict[str, str]:
        """The token goes to the registry itself only, never to an upload URL elsewhere."""
        target = self._client.base_url.join(url)
        if self._token is None or target.host != self._client.base_url.host:
            return {}
        return {"Authorization": f"Bearer {self._token}"}

    async def _authenticate(self, challenge: str) -> bool:
        """Fetch a token for a ``Bearer realm=...,service=...,scope=...`` challenge."""
        scheme, _, rest = challenge.partition(" ")
        if scheme.lower() != "bearer" or self._token is not None:
            return False
        params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        realm = params.pop("realm", "")
        if not realm.startswith(("https://", "http://")):
            return False
        if self._pushing:
            params["scope"] = f"repository:{self.name.namespace}/{self.name.model}:pull,push"
        response = await self._client.get(realm, params=params)
        if response.status_code != 200:
            raise RegistryError(
                f"authenticating to {self.host}: {realm} answered {response.status_code}"
            )
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"authenticating to {self.host}: {realm} sent no token")
        self._token = token
        return True

    async def _expect(self, response: httpx.Response, what: str, *ok: int) -> None:
        if response.status_code in ok:
            return
        detail = _registry_message(await _read_limited(response, 64 << 10, what, strict=False))
        problem = "refused access" if response.status_code in (401, 403) else "answered"
        message = f"{what}: {self.host} {problem} {response.status_code}"
        raise RegistryError(f"{message}: {detail}" if detail else message)

    @contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        """Transport failures as RegistryErrors that say which step failed and why."""
        try:
            yield
        except httpx.ConnectTimeout:
            raise RegistryError(
                f"{what}: cannot reach {self.host}: no connection within {self._timeout.connect} s"
            ) from None
        except httpx.TimeoutException:
            raise RegistryError(
                f"{what}: {self.host} stopped answering (no data for {self._timeout.read} s)"
            ) from None
        except httpx.ConnectError as exc:
            raise RegistryError(f"{what}: cannot reach {self.host}: {_reason(exc)}") from None
        except httpx.HTTPError as exc:
            raise RegistryError(f"{what}: {self.host}: {_reason(exc)}") from None


class _Meter:
    """Counts a blob's bytes as they pass and reports them, a step at a time."""

    def __init__(self, report: Report, status: str, layer: Layer) -> None:
        self.report, self.status, self.layer = report, status, layer
        self.done = 0
        self._reported = 0
        self._step = max(int(layer.size * _PROGRESS_STEP), _MIN_PROGRESS_BYTES)

    def start_at(self, done: int) -> None:
        """The first report: ``done`` bytes are there already (a resumed download)."""
        self.done = self._reported = done
        self.report(Progress(self.status, self.layer.digest, self.layer.size, done))

    def add(self, n: int) -> None:
        self.done += n
        if self.done - self._reported >= self._step:
            self._reported = self.done
            self.report(Progress(self.status, self.layer.digest, self.layer.size, self.done))

    def reset(self) -> None:
        self.done = self._reported = 0

    def finish(self) -> None:
        size = self.layer.size
        self.report(Progress(self.status, self.layer.digest, size, size))

    async def count(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``chunks`` passed through; more bytes than the manifest says is an error (a
        registry cannot make us write without end)."""
        async for chunk in chunks:
            if self.done + len(chunk) > self.layer.size:
                raise _TooLarge(
                    f"blob {self.layer.digest} is larger than the "
                    f"{self.layer.size} bytes its manifest says"
                )
            yield chunk
            self.add(len(chunk))


class _TooLarge(Exception):
    """A blob that goes on past the size its manifest gives."""


def _range_start(response: httpx.Response, size: int) -> int | None:
    """Where the body starts in the blob: 0 for a ``200``; for a ``206`` the start of its
    ``Content-Range: bytes <start>-<end>/<size>``, which must run to the blob's end.
    None when the range is not one to append."""
    if response.status_code != 206:
        return 0
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", ""))
    if match is None:
        return None
    start, end, total = match.groups()
    if int(end) != size - 1 or total not in ("*", str(size)):
        return None
    return int(start)


async def _file_chunks(path: Path, meter: _Meter) -> AsyncIterator[bytes]:
    meter.reset()
    with open(path, "rb") as f:
        while chunk := await asyncio.to_thread(f.read, _UPLOAD_CHUNK):
            yield chunk
            meter.add(len(chunk))


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _read_limited(
    response: httpx.Response, limit: int, what: str, *, strict: bool = True
) -> bytes:
    """At most ``limit`` bytes of a body; RegistryError past it when ``strict``."""
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > limit:
            if strict:
                raise RegistryError(f"{what}: the answer is larger than {limit} bytes")
            return bytes(data[:limit])
    return bytes(data)


def _registry_message(body: bytes) -> str:
    """The message of an OCI error body ``{"errors": [{"code", "message"}]}``, or the text."""
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()[:200]
    if isinstance(parsed, dict):
        errors = parsed.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            return str(first.get("message") or first.get("code") or "")
        if isinstance(parsed.get("error"), str):
            return str(parsed["error"])
    return ""


def _reason(exc: httpx.HTTPError) -> str:
    """What went wrong, as plainly as the innermost cause says it: ``Connection refused``
    rather than httpx's ``All connection attempts failed``."""
    inner: BaseException = exc
    for _ in range(10):  # a chain, not a cycle; bounded anyway
        cause = inner.__cause__ or inner.__context__
        if cause is None:
            break
        inner = cause
    if isinstance(inner, OSError):
        if inner.errno is not None and inner.errno > 0:
            return os.strerror(inner.errno)
        if inner.strerror:
            return inner.strerror
    return str(exc) or type(exc).__name__


def _unique(layers: tuple[Layer, ...]) -> list[Layer]:
    seen: set[str] = set()
    out: list[Layer] = []
    for layer in layers:
        if layer.digest not in seen:
            seen.add(layer.digest)
            out.append(layer)
    return out
