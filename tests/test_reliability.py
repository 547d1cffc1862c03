"""Reliability against the real server and runner: abandoned requests, shutdown, faults."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from gguf_files import write_gguf
from oci_registry import Registry
from serving import Server

from pollama.demo import demo_model_path
from pollama.ggufmeta import read_model

LONG = 3000  # tokens a request asks for and is abandoned long before
HI = [{"role": "user", "content": "List numbers."}]
# A thousand six-digit numbers: the model cannot end its reply before LONG tokens.
ENDLESS = {"type": "array", "minItems": 1000, "items": {"type": "integer", "minimum": 100000}}


def runner_port(server: Server) -> int:
    (pid,) = server.runner_pids()
    cmd = psutil.Process(pid).cmdline()
    return int(cmd[cmd.index("--port") + 1])


def decoded(server: Server) -> int:
    """Tokens the (one) runner has decoded so far, from its own /stats."""
    stats = httpx.get(f"http://127.0.0.1:{runner_port(server)}/stats", timeout=30).json()
    return int(stats["tokens_decoded"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("reliability"), OLLAMA_NUM_PARALLEL="1")
    yield running
    running.stop()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"prompt": "List numbers.", "format": ENDLESS}),
        ("/api/chat", {"messages": HI, "format": ENDLESS}),
        (
            "/v1/chat/completions",
            {
                "messages": HI,
                "max_tokens": LONG,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "numbers", "schema": ENDLESS},
                },
            },
        ),
        (
            "/v1/messages",
            {
                "messages": HI,
                "max_tokens": LONG,
                "output_config": {"format": {"type": "json_schema", "schema": ENDLESS}},
            },
        ),
        (
            "/v1/responses",
            {
                "input": "List numbers.",
                "max_output_tokens": LONG,
                "text": {"format": {"type": "json_schema", "name": "n", "schema": ENDLESS}},
            },
        ),
    ],
)
def test_an_abandoned_whole_reply_stops_generating(
    server: Server, path: str, body: dict[str, Any]
) -> None:
    # One slot: while an abandoned request generated on for nobody, the next would wait.
    request = {"model": "smollm2", **body, "stream": False, "options": {"num_predict": LONG}}
    warm = {"model": "smollm2", "prompt": "Hi", "stream": False, "options": {"num_predict": 1}}
    assert server.post("/api/generate", warm).status_code == 200
    before = decoded(server)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up while it generates
        httpx.post(server.url + path, json=request, timeout=httpx.Timeout(30, read=1.5))
    after = server.post(
        "/api/generate",
        {"model": "smollm2", "prompt": "Hi", "stream": False, "options": {"num_predict": 4}},
    )
    assert after.status_code == 200 and after.json()["eval_count"] == 4
    # The abandoned reply was cut short: nowhere near LONG tokens were decoded for it.
    assert decoded(server) - before < LONG // 2


def test_sigterm_with_a_request_in_flight_exits_within_the_grace(tmp_path: Path) -> None:
    server = Server(tmp_path, POLLAMA_SHUTDOWN_GRACE="1")
    warm = {"model": "smollm2", "prompt": "Hi", "stream": False, "options": {"num_predict": 1}}
    assert server.post("/api/generate", warm).status_code == 200
    runners, before = server.runner_pids(), decoded(server)
    body = {"model": "smollm2", "prompt": "List numbers.", "format": ENDLESS, "stream": False}
    with ThreadPoolExecutor(1) as pool:
        # A whole reply of 3,000 tokens in flight: uvicorn alone waits for it to finish.
        pending = pool.submit(httpx.post, server.url + "/api/generate", json=body, timeout=120)
        while decoded(server) <= before + 8:  # until it is generating (polls the runner)
            assert not pending.done(), pending.result()
        server.process.send_signal(signal.SIGTERM)
        # Bounded: the grace, then the request is cancelled and the runners stopped.
        # uvicorn re-raises the signal it handled once it is done, so the status is -15.
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.HTTPError):
            pending.result().raise_for_status()
    server.stop()
    assert "scheduler stopped" in (tmp_path / "serve.log").read_text()  # a clean shutdown
    assert runners and not any(psutil.pid_exists(pid) for pid in runners)


def test_runners_leave_with_a_server_killed_outright(tmp_path: Path) -> None:
    # SIGKILL gives the server no shutdown: its runners see end-of-file on the stdin it
    # held (runner/parent.py) and exit, the loaded one and the idle spare alike.
    server = Server(tmp_path)
    warm = {"model": "smollm2", "prompt": "Hi", "stream": False, "options": {"num_predict": 1}}
    assert server.post("/api/generate", warm).status_code == 200
    children = [psutil.Process(pid) for pid in server.runner_pids() + server.spare_pids()]
    assert server.runner_pids()
    server.process.kill()
    server.process.wait(timeout=30)
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.pid for p in alive]
    server.stop()


def test_a_stopped_runner_is_detected_killed_and_replaced(tmp_path: Path) -> None:
    server = Server(tmp_path, POLLAMA_STALL_TIMEOUT="2")
    try:
        body = {"model": "smollm2", "prompt": "List numbers.", "format": ENDLESS}
        with server.client.stream("POST", "/api/generate", json=body) as reply:
            lines = reply.iter_lines()
            assert "response" in json.loads(next(lines))
            (stopped,) = server.runner_pids()
            os.kill(stopped, signal.SIGSTOP)  # alive, but answers nothing
            last = json.loads(list(lines)[-1])  # the stream ends: it does not hang
        assert "the runner stopped answering for 2s" in last["error"]
        assert not psutil.pid_exists(stopped) or psutil.Process(stopped).status() == "zombie"
        again = {"model": "smollm2", "prompt": "Hi", "stream": False, "options": {"num_predict": 2}}
        assert server.post("/api/generate", again).status_code == 200
        assert server.runner_pids() != [stopped]
    finally:
        server.stop()


# -- damaged files on disk ------------------------------------------------------------------


def upload(server: Server, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert server.client.post(f"/api/blobs/{digest}", content=data).status_code == 201
    return digest


def blob_file(server: Server, digest: str) -> Path:
    return server.models / "blobs" / digest.replace(":", "-")


def test_a_damaged_model_reports_an_error_and_the_others_keep_working(server: Server) -> None:
    # A copy of the demo model with other bytes at its end: another blob, another model.
    data = demo_model_path().read_bytes() + b"\0" * 64
    digest = upload(server, data)
    created = server.post("/api/create", {"model": "victim", "files": {"m.gguf": digest}})
    assert created.status_code == 200, created.text
    # The disk damages it: its tensor data is cut off after the header.
    offset = read_model(demo_model_path()).data_offset
    with open(blob_file(server, digest), "r+b") as f:
        f.truncate(offset + 1000)
    hi = {"prompt": "Hi", "stream": False, "options": {"num_predict": 2}}
    broken = server.post("/api/generate", {"model": "victim", **hi})
    assert broken.status_code in (400, 500), broken.text  # the file's fault, said in words
    assert "model file" in broken.json()["error"], broken.text
    assert server.post("/api/generate", {"model": "smollm2", **hi}).status_code == 200
    assert {"victim:latest", "smollm2:latest"} <= {
        m["name"] for m in server.client.get("/api/tags").json()["models"]
    }


def test_a_corrupt_manifest_fails_that_model_only(server: Server) -> None:
    assert (
        server.post("/api/copy", {"source": "smollm2", "destination": "spoilt"}).status_code == 200
    )
    manifest = server.models / "manifests" / "registry.ollama.ai" / "library" / "spoilt" / "latest"
    manifest.write_bytes(b'{"schemaVersion": 2, "layers": [')  # cut off mid-write
    hi = {"prompt": "Hi", "stream": False, "options": {"num_predict": 2}}
    spoilt = server.post("/api/generate", {"model": "spoilt", **hi})
    assert spoilt.status_code == 500 and "corrupt model manifest" in spoilt.json()["error"]
    assert server.post("/api/generate", {"model": "smollm2", **hi}).status_code == 200
    assert "smollm2:latest" in {m["name"] for m in server.client.get("/api/tags").json()["models"]}


def runners_used(log: str) -> int:
    """Runners that loads used: started for the load, or the spare the load took."""
    return log.count("starting runner") + log.count(" takes model=")


def test_a_runner_that_cannot_load_its_model_is_one_clear_error_per_request(
    server: Server, tmp_path: Path
) -> None:
    # A well-formed GGUF of an architecture llama.cpp does not know: the server reads its
    # header, the runner starts, and llama.cpp refuses it.
    def kv(writer: Any) -> None:
        writer.add_block_count(1)

    data = write_gguf(tmp_path / "alien.gguf", "nonesuch", kv).read_bytes()
    created = server.post(
        "/api/create", {"model": "alien", "files": {"a.gguf": upload(server, data)}}
    )
    assert created.status_code == 200, created.text
    log = server.log.name
    before = runners_used(Path(log).read_text())
    for _ in range(2):
        reply = server.post("/api/generate", {"model": "alien", "prompt": "Hi", "stream": False})
        assert reply.status_code == 500
        assert "not supported by your version of pollama" in reply.json()["error"]
    # One runner per request, no retries in between: no storm.
    assert runners_used(Path(log).read_text()) - before == 2


def test_a_runner_that_cannot_start_is_one_clear_error_per_request(tmp_path: Path) -> None:
    # A broken environment: the engine's shared library cannot be loaded, so the runner
    # process dies while it starts (the server itself never imports the engine).
    # The bindings module is where llama-cpp-python loads it (the runner imports only
    # that, not the package's __init__).
    broken = tmp_path / "broken" / "llama_cpp"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("from .llama_cpp import *\n")
    (broken / "llama_cpp.py").write_text(
        'raise OSError("libllama.so: cannot open shared object file")\n'
    )
    server = Server(tmp_path, PYTHONPATH=str(broken.parent))
    try:
        body = {"model": "smollm2", "prompt": "Hi", "stream": False, "options": {"num_predict": 2}}
        for _ in range(2):
            reply = server.post("/api/generate", body)
            assert reply.status_code == 500
            assert "libllama.so: cannot open shared object file" in reply.json()["error"]
        assert server.client.get("/api/tags").status_code == 200  # and still serving
        log = (tmp_path / "serve.log").read_text()
        assert runners_used(log) == 2  # one runner per request, no storm
    finally:
        server.stop()


def test_a_huge_header_is_431_and_the_server_keeps_serving(server: Server) -> None:
    # llhttp buffers a header of any size; the server stops reading at 64 KiB.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        head = b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 200_000
        sock.sendall(head + b"\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 431 ")
    for _ in range(3):  # and requests on a kept-alive connection are counted afresh
        assert server.client.get("/api/version", headers={"X-Ok": "b" * 30_000}).status_code == 200


# -- a full disk ------------------------------------------------------------------------------

MiB = 1 << 20


def leftovers(models: Path) -> list[str]:
    """Files a write in progress (or a crash) leaves: partial blobs, temporary manifests."""
    return sorted(p.name for p in models.rglob("*") if p.name.startswith((".partial-", ".tmp-")))


def test_a_full_disk_during_an_upload_is_507_and_leaves_nothing(tmp_path: Path) -> None:
    # Writes past 120 MiB fail as on a full disk (EFBIG): the demo model (98 MiB) fits.
    server = Server(tmp_path, file_size_limit=120 * MiB)
    try:
        size = 130 * MiB
        digest = "sha256:" + hashlib.sha256(b"\0" * size).hexdigest()

        def zeros() -> Iterator[bytes]:
            for _ in range(size // MiB):
                yield b"\0" * MiB

        full = server.client.post(f"/api/blobs/{digest}", content=zeros())
        assert full.status_code == 507, full.text
        assert "out of space" in full.json()["error"]
        assert not blob_file(server, digest).exists() and leftovers(server.models) == []
        assert upload(server, b"small enough") and server.client.get("/api/tags").status_code == 200
    finally:
        server.stop()


def test_a_full_disk_during_create_is_507_and_the_store_stays_consistent(tmp_path: Path) -> None:
    models = tmp_path / "store"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = Server(tmp_path / "a", OLLAMA_MODELS=str(models))
    try:  # the demo model is imported while the disk has room
        assert first.post("/api/show", {"model": "smollm2"}).status_code == 200
    finally:
        first.stop()
    server = Server(tmp_path / "b", file_size_limit=64 * 1024, OLLAMA_MODELS=str(models))
    try:
        body = {"model": "big", "from": "smollm2", "template": "{{ .Prompt }}" + "x" * 100_000}
        full = server.post("/api/create", {**body, "stream": False})
        assert full.status_code == 507, full.text
        assert not (models / "manifests" / "registry.ollama.ai" / "library" / "big").exists()
        assert leftovers(models) == []
        names = {m["name"] for m in server.client.get("/api/tags").json()["models"]}
        assert names == {"smollm2:latest"}
        assert server.post("/api/show", {"model": "smollm2"}).status_code == 200
    finally:
        server.stop()


# -- serve killed mid-write -----------------------------------------------------------------


def test_serve_killed_during_an_upload_and_a_create_leaves_a_store_that_restarts_clean(
    tmp_path: Path,
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    models = tmp_path / "store"
    server = Server(tmp_path / "a", OLLAMA_MODELS=str(models))
    assert server.post("/api/show", {"model": "smollm2"}).status_code == 200
    data = os.urandom(8 * MiB)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    def chunks() -> Iterator[bytes]:
        for i in range(8):
            if i == 4:  # half-way: the upload is being written to a partial file
                assert leftovers(models)
                server.process.kill()
            yield data[i * MiB : (i + 1) * MiB]

    with pytest.raises(httpx.HTTPError):
        server.client.post(f"/api/blobs/{digest}", content=chunks())
    server.stop()
    assert any(name.startswith(".partial-") for name in leftovers(models))
    # A create cut short the same way leaves a manifest written half-way beside the others.
    half = models / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / ".tmp-5a1e"
    half.write_bytes(b'{"schemaVersion": 2, "lay')
    again = Server(tmp_path / "b", OLLAMA_MODELS=str(models), OLLAMA_NOPRUNE="1")
    try:
        assert leftovers(models) == []  # removed at start-up, even with OLLAMA_NOPRUNE
        assert not (models / "blobs" / digest.replace(":", "-")).exists()
        names = {m["name"] for m in again.client.get("/api/tags").json()["models"]}
        assert names == {"smollm2:latest"}
        hi = {"model": "smollm2", "prompt": "Hi", "stream": False, "options": {"num_predict": 2}}
        assert again.post("/api/generate", hi).status_code == 200
    finally:
        again.stop()


def test_a_full_disk_during_a_pull_fails_clearly_and_shows_nothing(
    server: Server, tmp_path: Path
) -> None:
    registry = Registry(tmp_path / "registry")
    try:
        name = f"{registry.host}/library/demo:v1"
        assert (
            server.post("/api/copy", {"source": "smollm2", "destination": name}).status_code == 200
        )
        pushed = server.post("/api/push", {"model": name, "insecure": True, "stream": False})
        assert pushed.status_code == 200, pushed.text
        (tmp_path / "full").mkdir()
        full = Server(tmp_path / "full", file_size_limit=32 * MiB)  # the model is 98 MiB
        try:
            pulled = full.post("/api/pull", {"model": name, "insecure": True, "stream": False})
            assert pulled.status_code == 507, pulled.text
            assert "out of space" in pulled.json()["error"]
            assert name not in {m["name"] for m in full.client.get("/api/tags").json()["models"]}
            blobs = list((full.models / "blobs").glob("sha256-*"))
            assert all(b.stat().st_size < 32 * MiB for b in blobs)  # no blob at all of it
            assert [p.name for p in full.models.rglob("*") if p.name.startswith(".partial-")] == []
        finally:
            full.stop()
    finally:
        registry.stop()
