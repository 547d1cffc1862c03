"""Two ``pollama serve`` processes sharing one model store (one ``OLLAMA_MODELS``).

Writes from both are serialised by the store's lock (``store/lock.py``); each server
reads the disk, so what one writes the other serves at once; a server starting while
another writes waits for the write before it cleans up.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from serving import Server, wait_for

from pollama.store.disk import Store
from pollama.store.lock import WAITING, StoreLock
from pollama.store.manifest import CONFIG_MEDIA_TYPE, LICENSE, Layer, Manifest, parse_manifest
from pollama.store.names import ModelName

HI = {"prompt": "Hi", "stream": False, "options": {"temperature": 0, "num_predict": 4}}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared") / "models"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, store: Path) -> Iterator[tuple[Server, Server]]:
    a = Server(tmp_path_factory.mktemp("a"), OLLAMA_MODELS=str(store))
    try:
        b = Server(tmp_path_factory.mktemp("b"), OLLAMA_MODELS=str(store))
    except BaseException:
        a.stop()
        raise
    try:
        assert a.post("/api/show", {"model": "smollm2"}).status_code == 200  # the demo, once
        yield a, b
    finally:
        a.stop()
        b.stop()


def tags(server: Server) -> dict[str, str]:
    reply = server.client.get("/api/tags")
    assert reply.status_code == 200
    return {m["name"]: m["digest"] for m in reply.json()["models"]}


def leftovers(models: Path) -> list[str]:
    return sorted(p.name for p in models.rglob("*") if p.name.startswith((".partial-", ".tmp-")))


def check_consistent(models: Path) -> None:
    """Every manifest parses and names blobs that exist; no write left a temporary file."""
    for path in (models / "manifests").rglob("*"):
        if path.is_file():
            manifest = parse_manifest(path.read_bytes(), str(path))
            for digest in manifest.digests():
                blob = models / "blobs" / digest.replace(":", "-")
                assert blob.is_file(), f"{path} names the missing blob {digest}"
    assert leftovers(models) == []


def test_concurrent_writes_from_both_servers_leave_a_consistent_store(
    pair: tuple[Server, Server], store: Path
) -> None:
    a, b = pair
    for i in range(3):  # models to delete while the others are written
        body = {"model": f"doomed{i}", "from": "smollm2", "system": f"Doomed {i}."}
        assert a.post("/api/create", {**body, "stream": False}).status_code == 200
    writes: list[tuple[Server, str, str, dict[str, Any]]] = []
    for i in range(6):
        here, there = (a, b) if i % 2 else (b, a)
        create = {
            "model": f"mixed{i}",
            "from": "smollm2",
            "system": f"You are assistant number {i}.",
            "parameters": {"temperature": i / 10, "num_ctx": 512 + i},
            "stream": False,
        }
        writes.append((here, "POST", "/api/create", create))
        copy = {"source": "smollm2", "destination": f"twin{i}"}
        writes.append((there, "POST", "/api/copy", copy))
        data = os.urandom(4096)
        blob = "/api/blobs/sha256:" + hashlib.sha256(data).hexdigest()
        writes.append((here, "BLOB", blob, {"data": data}))
    for i in range(3):
        writes.append(((a, b)[i % 2], "DELETE", "/api/delete", {"model": f"doomed{i}"}))

    def send(write: tuple[Server, str, str, dict[str, Any]]) -> int:
        server, method, path, body = write
        if method == "BLOB":
            return server.client.post(path, content=body["data"]).status_code
        return server.client.request(method, path, json=body).status_code

    with ThreadPoolExecutor(len(writes)) as pool:
        statuses = list(pool.map(send, writes))
    assert all(status in (200, 201) for status in statuses), statuses

    check_consistent(store)
    listed = tags(a)
    assert listed == tags(b)
    expected = {"smollm2:latest"} | {
        f"{kind}{i}:latest" for kind in ("mixed", "twin") for i in range(6)
    }
    assert set(listed) == expected
    for i in range(6):  # each create got its own settings, whichever server is asked
        shown = b.post("/api/show", {"model": f"mixed{i}"}).json()
        assert shown["system"] == f"You are assistant number {i}."
        assert re.search(rf"^num_ctx\s+{512 + i}$", shown["parameters"], re.M)


def test_a_model_created_on_one_server_is_served_by_the_other_and_deleted_from_both(
    pair: tuple[Server, Server],
) -> None:
    a, b = pair
    body = {"model": "crossing", "from": "smollm2", "system": "Answer briefly.", "stream": False}
    assert a.post("/api/create", body).status_code == 200
    assert "crossing:latest" in tags(b)
    assert b.post("/api/show", {"model": "crossing"}).json()["system"] == "Answer briefly."
    reply = b.post("/api/generate", {"model": "crossing", **HI})
    assert reply.status_code == 200, reply.text
    assert reply.json()["eval_count"] <= 4

    deleted = b.client.request("DELETE", "/api/delete", json={"model": "crossing"})
    assert deleted.status_code == 200
    assert "crossing:latest" not in tags(a)
    assert a.post("/api/show", {"model": "crossing"}).status_code == 404
    assert a.post("/api/generate", {"model": "crossing", **HI}).status_code == 404


def test_a_write_waits_for_another_process_holding_the_lock(
    pair: tuple[Server, Server], store: Path
) -> None:
    a, _ = pair
    body = {"model": "patient", "from": "smollm2", "system": "Wait your turn."}
    lock = StoreLock(store)
    fd = lock.try_acquire()  # another process's write, as far as the server knows
    assert fd is not None
    try:
        with a.client.stream("POST", "/api/create", json=body) as reply:
            assert reply.status_code == 200
            lines = reply.iter_lines()
            assert json.loads(next(lines)) == {"status": WAITING}  # it waits; no failure
            assert "patient:latest" not in tags(a)
            StoreLock.release(fd)
            fd = None
            rest = [json.loads(line) for line in lines]
    finally:
        if fd is not None:
            StoreLock.release(fd)
    assert rest[-1] == {"status": "success"}
    assert "patient:latest" in tags(a)


def test_a_server_starting_while_another_process_writes_waits_and_spares_its_files(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    disk = Store(models)
    (tmp_path / "serve").mkdir()
    with ThreadPoolExecutor(1) as pool:
        with disk.lock.hold():  # a writer in another process, half-way through a create
            license_blob = disk.write_blob_bytes(b"A license being written.")
            hour_ago = time.time() - 3600  # older than any prune grace: only the lock saves it
            os.utime(disk.blob_path(license_blob), (hour_ago, hour_ago))
            partial = models / "blobs" / ".partial-being-written"
            partial.write_bytes(b"weights arriving")
            starting = pool.submit(Server, tmp_path / "serve", OLLAMA_MODELS=str(models))
            log = tmp_path / "serve" / "serve.log"
            waiting = "waiting for another process's write"
            assert wait_for(lambda: log.is_file() and waiting in log.read_text())
            assert partial.is_file() and disk.has_blob(license_blob)  # nothing removed
            assert not starting.done()  # and it does not serve before its cleanup
            # The writer finishes: its manifest names the old blob.
            config = disk.write_blob_bytes(b"{}")
            manifest = Manifest(
                config=Layer(CONFIG_MEDIA_TYPE, config, 2),
                layers=(Layer(LICENSE, license_blob, len(b"A license being written.")),),
            )
            disk.write_manifest(ModelName.parse("written-meanwhile"), manifest)
        server = starting.result(timeout=120)
    try:
        assert disk.has_blob(license_blob)  # referenced by then: not pruned
        # The partial file, no longer anybody's once the writer let go, was cleaned up.
        assert not partial.exists() and leftovers(models) == []
        assert "written-meanwhile:latest" in tags(server)
    finally:
        server.stop()
