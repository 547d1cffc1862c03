"""Pull and push through a real registry: Debian's ``docker-registry`` (CNCF distribution
2.8), run on a loopback port with a temporary storage directory, no auth and no TLS.

The minimal registry in ``oci_registry.py`` is ours; this one is what users run. The
fault test puts a TCP proxy between pollama and the registry: it sees every request head
(the registry's own requests are out of sight) and can hold a blob's response midway
while the registry is killed, so the pull is cut off at a known point, every time.

``.ci/run`` installs the package; without it these tests fail, saying how to install it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving import Server, free_port

pytestmark = pytest.mark.llama

BINARY = "docker-registry"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
MANIFEST_ACCEPT = "application/vnd.docker.distribution.manifest.v2+json"
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "<|im_start|>assistant\n"
)
SYSTEM = "You answer in one short sentence."
PARAMETERS = {"temperature": 0.3, "top_k": 7, "stop": ["<|im_end|>"], "num_ctx": 1024}
GREEDY = {"temperature": 0, "num_predict": 8}
STARTUP_SECONDS = 30.0
HOLD_SECONDS = 60.0


# -- the real registry -------------------------------------------------------------------------


class RealRegistry:
    """``docker-registry serve config.yml`` on 127.0.0.1:<free port>, storage under ``root``.

    ``kill()`` and ``start()`` again keep the storage and the port: a registry that died
    and came back.
    """

    def __init__(self, root: Path) -> None:
        binary = shutil.which(BINARY) or shutil.which(BINARY, path="/usr/bin:/usr/sbin")
        if binary is None:
            pytest.fail(
                f"the real-registry tests need Debian's {BINARY} package (CNCF distribution "
                f"2.8), which is not installed: apt-get install -y {BINARY} (.ci/run does)",
                pytrace=False,
            )
        self.binary = binary
        self.root = root
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.config = root / "config.yml"
        self.config.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'storage'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        # REGISTRY_* variables override the config file (REGISTRY_HTTP_ADDR could make it
        # listen beyond loopback): none is passed on.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        with open(self.root / "registry.log", "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "serve", str(self.config)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_up()

    def _wait_until_up(self) -> None:
        """Poll ``GET /v2/`` until it answers 200; fail if the process exits first."""
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_SECONDS
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    log = (self.root / "registry.log").read_text(errors="replace")
                    pytest.fail(f"{BINARY} exited with {self.process.returncode}: {log[-2000:]}")
                try:
                    if client.get(f"http://{self.host}/v2/").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                try:  # a moment's wait on the process itself (it may exit)
                    self.process.wait(timeout=0.05)
                except subprocess.TimeoutExpired:
                    pass
        pytest.fail(f"{BINARY} did not answer GET /v2/ within {STARTUP_SECONDS} s")

    def kill(self) -> None:
        """SIGKILL: no chance to finish a response or close a connection politely."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def model_layer(self, repository: str, tag: str) -> tuple[str, int]:
        """The digest and size of a pushed model's weights, as the registry has them."""
        url = f"http://{self.host}/v2/{repository}/manifests/{tag}"
        response = httpx.get(url, headers={"Accept": MANIFEST_ACCEPT}, timeout=10)
        assert response.status_code == 200, response.text
        layer = next(x for x in response.json()["layers"] if x["mediaType"] == MODEL_MEDIA_TYPE)
        return layer["digest"], layer["size"]


# -- a proxy that sees requests and cuts responses ---------------------------------------------


class Proxy:
    """TCP from a free loopback port to ``upstream_port``, one thread per direction.

    It records every HTTP request head it forwards. ``hold(digest, n)`` makes it forward
    only ``n`` bytes of the response to the next GET of that blob; ``held`` is set once
    those are through, and ``release()`` then drops the connection.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.heads: list[str] = []
        self.held = threading.Event()
        self._release = threading.Event()
        self._hold: tuple[str, int] | None = None
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self, digest: str, n: int) -> None:
        self._hold = (digest, n)

    def release(self) -> None:
        self._release.set()

    def ranges(self, digest: str) -> list[str | None]:
        """The Range header of each GET of blob ``digest`` forwarded (None: none)."""
        found: list[str | None] = []
        for head in self.heads:
            if head.startswith("GET ") and f"/blobs/{digest} " in head.split("\r\n")[0]:
                match = re.search(r"^range:\s*(\S+)\s*$", head, re.IGNORECASE | re.MULTILINE)
                found.append(match.group(1) if match else None)
        return found

    def close(self) -> None:
        self._release.set()
        for sock in (self._listener, *self._sockets):
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()  # the registry is down: so is the connection
                continue
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            budget: list[int | None] = [None]  # response bytes left to forward, if limited
            _spawn(self._requests, client, upstream, budget)
            _spawn(self._responses, upstream, client, budget)

    def _requests(self, client: socket.socket, upstream: socket.socket, budget: list[Any]) -> None:
        pending = b""
        try:
            while data := client.recv(1 << 16):
                pending += data
                while b"\r\n\r\n" in pending:  # pollama's pulls send heads only (GETs)
                    raw, pending = pending.split(b"\r\n\r\n", 1)
                    head = raw.decode("latin-1")
                    self.heads.append(head)
                    if self._hold and f"/blobs/{self._hold[0]} " in head.split("\r\n")[0]:
                        budget[0], self._hold = self._hold[1], None
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, upstream)

    def _responses(self, upstream: socket.socket, client: socket.socket, budget: list[Any]) -> None:
        try:
            while data := upstream.recv(1 << 16):
                if budget[0] is not None:
                    data = data[: budget[0]]
                    budget[0] -= len(data)
                client.sendall(data)
                if budget[0] == 0:
                    self.held.set()
                    self._release.wait(timeout=HOLD_SECONDS)
                    return
        except OSError:
            pass
        finally:
            _close(client, upstream)


def _spawn(target: Callable[..., None], *args: Any) -> None:
    threading.Thread(target=target, args=args, daemon=True).start()


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealRegistry]:
    running = RealRegistry(tmp_path_factory.mktemp("real-registry"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server holding ``custom``: the demo model with a template, system and parameters."""
    running = Server(tmp_path_factory.mktemp("source"))
    body = {
        "model": "custom",
        "from": "smollm2",
        "template": TEMPLATE,
        "system": SYSTEM,
        "parameters": PARAMETERS,
    }
    try:
        assert running.stream("/api/create", body)[-1]["status"] == "success"
        yield running
    finally:
        running.stop()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Server]:
    """A server with an empty store, to pull into."""
    running = Server(tmp_path)
    yield running
    running.stop()


def push(source: Server, name: str) -> float:
    """Push ``custom`` as ``name``; the seconds it took."""
    assert source.post("/api/copy", {"source": "custom", "destination": name}).status_code == 200
    began = time.monotonic()
    pushed = source.post("/api/push", {"model": name, "insecure": True, "stream": False})
    assert pushed.status_code == 200 and pushed.json() == {"status": "success"}, pushed.text
    return time.monotonic() - began


def pull_stream(server: Server, name: str) -> tuple[int, list[dict[str, Any]]]:
    with server.client.stream("POST", "/api/pull", json={"model": name, "insecure": True}) as r:
        return r.status_code, [json.loads(line) for line in r.iter_lines() if line]


def shown(server: Server, name: str) -> dict[str, Any]:
    response = server.post("/api/show", {"model": name})
    assert response.status_code == 200, response.text
    info: dict[str, Any] = response.json()
    return info


def greedy_text(server: Server, name: str) -> str:
    body = {"model": name, "prompt": "Name a colour.", "options": GREEDY, "stream": False}
    response = server.post("/api/generate", {**body, "keep_alive": 0})
    assert response.status_code == 200, response.text
    text: str = response.json()["response"]
    return text


def digests(server: Server) -> dict[str, str]:
    """Each listed model's manifest digest, by name."""
    return {m["name"]: m["digest"] for m in server.client.get("/api/tags").json()["models"]}


def tag_names(server: Server) -> list[str]:
    return list(digests(server))


def models_of(server: Server) -> Path:
    """The server's OLLAMA_MODELS (serving.Server keeps its log beside it)."""
    return Path(server.log.name).parent / "models"


def sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


# -- tests -------------------------------------------------------------------------------------


def test_push_then_pull_round_trips_the_model(
    source: Server, registry: RealRegistry, fresh: Server
):
    name = f"{registry.host}/library/custom:v1"
    push_seconds = push(source, name)
    began = time.monotonic()
    status, lines = pull_stream(fresh, name)
    pull_seconds = time.monotonic() - began
    assert status == 200 and lines[-1] == {"status": "success"}, lines[-1]
    print(f"real registry: push {push_seconds:.2f} s, pull {pull_seconds:.2f} s")

    original, pulled = shown(source, "custom"), shown(fresh, name)
    assert pulled["template"] == original["template"] == TEMPLATE
    assert pulled["system"] == original["system"] == SYSTEM
    assert pulled["parameters"] == original["parameters"]
    assert any(line.split() == ["top_k", "7"] for line in pulled["parameters"].splitlines())
    assert pulled["details"] == original["details"]
    source_digest = {
        m["name"]: m["digest"] for m in source.client.get("/api/tags").json()["models"]
    }
    fresh_digest = {m["name"]: m["digest"] for m in fresh.client.get("/api/tags").json()["models"]}
    assert fresh_digest == {name: source_digest[name]}  # the very manifest, byte for byte
    assert greedy_text(fresh, name) == greedy_text(source, "custom") != ""


def test_a_pull_cut_off_by_the_registry_dying_resumes_with_a_range(
    source: Server, registry: RealRegistry, fresh: Server
):
    push(source, f"{registry.host}/library/resumable:v1")
    digest, size = registry.model_layer("library/resumable", "v1")
    assert size > 50 << 20  # the demo model's weights: a blob worth resuming
    proxy = Proxy(registry.port)
    try:
        name = f"{proxy.host}/library/resumable:v1"
        models = models_of(fresh)
        kept = models / "blobs" / (".resumable-sha256-" + digest.removeprefix("sha256:"))
        complete = models / "blobs" / ("sha256-" + digest.removeprefix("sha256:"))

        proxy.hold(digest, size // 3)
        with fresh.client.stream("POST", "/api/pull", json={"model": name, "insecure": True}) as r:
            assert r.status_code == 200
            assert proxy.held.wait(timeout=HOLD_SECONDS), "the blob's download never began"
            # Mid-blob, nothing partial is visible: no blob by its name, no manifest, no model.
            assert kept.is_file() and not complete.exists()
            assert not any(p.is_file() for p in (models / "manifests").rglob("resumable/*"))
            assert name not in tag_names(fresh)
            assert fresh.client.head(f"/api/blobs/{digest}").status_code == 404
            registry.kill()
            proxy.release()
            first = [json.loads(line) for line in r.iter_lines() if line]
        assert "error" in first[-1] and digest[7:19] in first[-1]["error"], first[-1]
        held = kept.stat().st_size
        assert 0 < held < size // 3
        assert not complete.exists() and name not in tag_names(fresh)

        registry.start()  # the same storage, the same port
        status, lines = pull_stream(fresh, name)
        assert status == 200 and lines[-1] == {"status": "success"}, lines[-1]
        assert proxy.ranges(digest) == [None, f"bytes={held}-"]
        records = [x for x in lines if x.get("digest") == digest and "completed" in x]
        completed = [x["completed"] for x in records]
        assert all(x["total"] == size for x in records)
        assert completed[0] == held and completed == sorted(completed) and completed[-1] == size
        assert sha256_of(complete) == digest and not kept.exists()
        assert name in tag_names(fresh)
    finally:
        proxy.close()
