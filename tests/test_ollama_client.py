"""pollama driven through the official ``ollama`` Python client, as its users will drive it.

Every test talks to a real ``pollama serve`` subprocess (temporary store, free
port) that runs real runner subprocesses with the demo model.
"""

from __future__ import annotations

import math
import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import ollama
import pytest
from serving import GREEDY, Server

from pollama.demo import demo_model_path

pytestmark = pytest.mark.llama

PROMPT = "Why is the sky blue?"


@contextmanager
def serving(tmp: Path, **env: str) -> Iterator[tuple[Server, ollama.Client]]:
    """A server of our own with a client; both closed (server stopped) at the end."""
    server = Server(tmp, **env)
    try:
        with ollama.Client(host=server.url, timeout=300) as client:
            yield server, client
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("client"), OLLAMA_NUM_PARALLEL="2")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[ollama.Client]:
    with ollama.Client(host=server.url, timeout=300) as connected:
        yield connected


def test_generate_streamed_equals_whole(client: ollama.Client):
    chunks = list(client.generate("smollm2", PROMPT, options=GREEDY, stream=True))
    assert chunks[-1].done and chunks[-1].done_reason == "length"
    assert all(not c.done for c in chunks[:-1])
    whole = client.generate("smollm2", PROMPT, options=GREEDY)
    assert whole.response == "".join(c.response or "" for c in chunks)
    assert whole.response.strip()
    assert whole.eval_count == GREEDY["num_predict"]
    assert whole.total_duration and whole.total_duration >= (whole.eval_duration or 0)
    assert whole.context, "generate returns the conversation context"
    follow = client.generate("smollm2", "And at night?", context=whole.context, options=GREEDY)
    assert follow.prompt_eval_count and follow.prompt_eval_count > len(whole.context)


def test_chat_streamed_equals_whole(client: ollama.Client):
    messages = [{"role": "user", "content": "Name three colours."}]
    chunks = list(client.chat("smollm2", messages=messages, options=GREEDY, stream=True))
    whole = client.chat("smollm2", messages=messages, options=GREEDY)
    assert whole.message.role == "assistant"
    assert whole.message.content == "".join(c.message.content or "" for c in chunks)
    assert whole.done_reason == "length" and whole.prompt_eval_count


def test_embed_is_normalized_and_sliced(client: ollama.Client):
    result = client.embed("smollm2", input=["The sky is blue.", "Grass is green."])
    assert len(result.embeddings) == 2
    first, second = result.embeddings
    assert len(first) == 576  # SmolLM2-135M's embedding length
    for vector in (first, second):
        assert math.isclose(math.hypot(*vector), 1.0, rel_tol=1e-5)
    assert first != second and result.prompt_eval_count
    sliced = client.embed("smollm2", input="The sky is blue.", dimensions=64).embeddings[0]
    assert len(sliced) == 64 and math.isclose(math.hypot(*sliced), 1.0, rel_tol=1e-5)
    # Slicing then re-normalizing points the same way as the full vector's prefix.
    prefix = first[:64]
    scale = math.hypot(*prefix)
    assert all(
        math.isclose(a, b / scale, abs_tol=1e-4) for a, b in zip(sliced, prefix, strict=True)
    )


def test_legacy_embeddings_are_not_normalized(client: ollama.Client):
    legacy = client.embeddings("smollm2", prompt="The sky is blue.").embedding
    modern = client.embed("smollm2", input="The sky is blue.").embeddings[0]
    norm = math.hypot(*legacy)
    assert not math.isclose(norm, 1.0, rel_tol=1e-3)
    assert all(math.isclose(a / norm, b, abs_tol=1e-4) for a, b in zip(legacy, modern, strict=True))


def test_embed_too_long_without_truncation_is_400(client: ollama.Client):
    # Unload first: a runner loaded with a larger num_ctx serves this request too (as in
    # Ollama) and would truncate to its own context, embedding thousands of tokens.
    client.generate("smollm2", "", keep_alive=0)
    long = "word " * 5000
    with pytest.raises(ollama.ResponseError) as error:
        client.embed("smollm2", input=long, truncate=False, options={"num_ctx": 512})
    assert error.value.status_code == 400 and "context length" in error.value.error
    truncated = client.embed("smollm2", input=long, options={"num_ctx": 512})
    assert len(truncated.embeddings[0]) == 576


def test_list_show_and_ps(client: ollama.Client):
    client.generate("smollm2", "Hi", options=GREEDY)
    names = [m.model for m in client.list().models]
    assert "smollm2:latest" in names
    shown = client.show("smollm2")
    assert shown.details.family == "llama" and shown.details.quantization_level == "Q4_1"
    assert shown.capabilities and "completion" in shown.capabilities
    assert shown.modelinfo and shown.modelinfo["general.architecture"] == "llama"
    running = {m.model: m for m in client.ps().models}
    assert "smollm2:latest" in running
    row = running["smollm2:latest"]
    assert row.size and row.size_vram == 0 and row.context_length


def test_keep_alive_forever_then_zero(client: ollama.Client, server: Server):
    client.generate("smollm2", "Hi", options=GREEDY, keep_alive=-1)
    (row,) = [m for m in client.ps().models if m.model == "smollm2:latest"]
    assert row.expires_at and row.expires_at > datetime.now(UTC) + timedelta(days=365 * 100)
    client.generate("smollm2", "Hi", options=GREEDY, keep_alive="10m")
    (row,) = [m for m in client.ps().models if m.model == "smollm2:latest"]
    assert row.expires_at
    left = row.expires_at - datetime.now(UTC)
    assert timedelta(minutes=9) < left <= timedelta(minutes=10)
    unloaded = client.generate("smollm2", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert client.ps().models == [] and server.runner_pids() == []


def test_errors_reach_the_client_with_statuses(client: ollama.Client, server: Server):
    with pytest.raises(ollama.ResponseError) as missing:
        client.generate("no-such-model", "Hi")
    assert missing.value.status_code == 404 and "not found" in missing.value.error
    # The client validates `format` itself; a raw request shows the server's answer.
    bad_format = server.post("/api/chat", {"model": "smollm2", "messages": [], "format": "yaml"})
    assert bad_format.status_code == 400 and "format" in bad_format.json()["error"]
    malformed = server.client.post("/api/embed", content=b'{"model": "smollm2",')
    assert malformed.status_code == 400 and "error" in malformed.json()
    bad_name = server.post("/api/generate", {"model": "../../etc/passwd", "prompt": "x"})
    assert bad_name.status_code == 400


def test_four_concurrent_requests_match_serial(client: ollama.Client):
    prompts = ["Count to five.", "Name a fruit.", "What is 2+2?", "Say hello."]
    alone = [client.generate("smollm2", p, options=GREEDY).response for p in prompts]
    with ThreadPoolExecutor(4) as pool:
        together = list(
            pool.map(lambda p: client.generate("smollm2", p, options=GREEDY).response, prompts)
        )
    assert together == alone


def test_copy_and_delete(client: ollama.Client):
    client.copy("smollm2", "copied:v1")
    assert "copied:v1" in [m.model for m in client.list().models]
    assert client.show("copied:v1").details.family == "llama"
    client.delete("copied:v1")
    assert "copied:v1" not in [m.model for m in client.list().models]
    with pytest.raises(ollama.ResponseError) as gone:
        client.delete("copied:v1")
    assert gone.value.status_code == 404


def test_create_from_blob(client: ollama.Client):
    digest = client.create_blob(demo_model_path())
    assert digest.startswith("sha256:")
    statuses = [
        p.status
        for p in client.create(
            "pirate",
            files={"model.gguf": digest},
            system="You are a pirate.",
            parameters={"temperature": 0, "num_predict": 8},
            stream=True,
        )
    ]
    assert statuses[-1] == "success"
    shown = client.show("pirate")
    # The client's ShowResponse has no `system` field; the Modelfile carries it.
    assert "You are a pirate." in (shown.modelfile or "")
    assert shown.parameters and "num_predict" in shown.parameters
    answer = client.chat("pirate", messages=[{"role": "user", "content": "Hi"}])
    assert answer.eval_count == 8  # the Modelfile parameter applies


def test_runner_killed_mid_stream_then_recovers(client: ollama.Client, server: Server):
    for running in client.ps().models:  # models earlier tests left loaded
        if running.model != "smollm2:latest":
            client.generate(running.model, keep_alive=0)
    client.generate("smollm2", "Hi", options=GREEDY)
    stream = client.generate(
        "smollm2", PROMPT, options={"temperature": 0, "num_predict": 4000}, stream=True
    )
    next(stream)
    (pid,) = server.runner_pids()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ollama.ResponseError) as died:
        for _ in stream:
            pass
    assert "SIGKILL" in died.value.error or "killed" in died.value.error
    again = client.generate("smollm2", "Hi", options=GREEDY)
    assert again.done and again.response


def test_queue_overflow_is_503(tmp_path: Path):
    with serving(tmp_path, OLLAMA_MAX_QUEUE="1", OLLAMA_NUM_PARALLEL="1") as (server, client):
        client.generate("smollm2", "Hi", options=GREEDY)  # loaded; the next waits for a slot
        long = client.generate(
            "smollm2", PROMPT, options={"temperature": 0, "num_predict": 4000}, stream=True
        )
        next(long)  # holds the only slot
        answers: list[httpx.Response] = []

        def ask() -> None:
            response = httpx.post(
                f"{server.url}/api/generate",
                json={"model": "smollm2", "prompt": "Hi", "stream": False, "options": GREEDY},
                timeout=300,
            )
            answers.append(response)
            if response.status_code == 503:
                long.close()  # the one still waiting may now run

        waiters = [threading.Thread(target=ask) for _ in range(2)]
        for thread in waiters:
            thread.start()
        for thread in waiters:
            thread.join(timeout=300)
        assert sorted(a.status_code for a in answers) == [200, 503]
        (refused,) = [a for a in answers if a.status_code == 503]
        assert "maximum pending requests exceeded" in refused.json()["error"]


def test_max_loaded_models_one_evicts(tmp_path: Path):
    with serving(tmp_path, OLLAMA_MAX_LOADED_MODELS="1") as (server, client):
        client.copy("smollm2", "second")
        client.generate("smollm2", "Hi", options=GREEDY)
        assert [m.model for m in client.ps().models] == ["smollm2:latest"]
        client.generate("second", "Hi", options=GREEDY)
        assert [m.model for m in client.ps().models] == ["second:latest"]
        assert len(server.runner_pids()) == 1


def test_restart_keeps_every_model(tmp_path: Path):
    with serving(tmp_path) as (_, client):
        client.copy("smollm2", "kept:a")
        client.create("kept-b", from_="smollm2", system="Be brief.")
        before = {m.model: m.digest for m in client.list().models}
    assert {"smollm2:latest", "kept:a", "kept-b:latest"} <= set(before)
    with serving(tmp_path) as (_, client):
        after = {m.model: m.digest for m in client.list().models}
        assert after == before
        assert "Be brief." in (client.show("kept-b").modelfile or "")
        assert client.generate("kept:a", "Hi", options=GREEDY).response
