"""pollama on Ray Serve, on a local Ray cluster: 2 replicas, 1 llama.cpp thread each.

Real Ray (a local cluster on loopback), real replicas each running ``pollama serve``
with the demo model, the official clients through Ray's HTTP proxy. Generations are
bounded with ``num_predict``/``max_tokens``; the model's words are never pinned.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import ollama
import openai
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving import free_port

ray = pytest.importorskip("ray")  # pollama[test] installs it; pollama[ray] for users
from ray import serve  # noqa: E402

from pollama.ray.app import REPLICAS, Deployment, ReplicaResources, build  # noqa: E402
from pollama.ray.ingress import REPLICA_HEADER  # noqa: E402

MODEL = "smollm2"
SYSTEM = " ".join(
    f"Rule {i}: answer in plain words, never in lists, and keep every answer short."
    for i in range(12)
)
"""A long system prompt (~250 tokens): what a second turn finds in its replica's cache."""


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    models = tmp_path_factory.mktemp("ray-store") / "models"
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        env = {"OLLAMA_MODELS": str(models), "OLLAMA_KEEP_ALIVE": "-1"}
        if "POLLAMA_STATE_DIR" in os.environ:
            env["POLLAMA_STATE_DIR"] = os.environ["POLLAMA_STATE_DIR"]
        deployment = Deployment(replicas=2, resources=ReplicaResources(num_cpus=1), env=env)
        serve.run(build(deployment), name="pollama", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def chat(base: str, messages: list[dict[str, str]], **options: Any) -> httpx.Response:
    body = {
        "model": MODEL,
        "messages": messages,
        "stream": False,
        "options": {"num_predict": 8, "temperature": 0, **options},
    }
    response = httpx.post(f"{base}/api/chat", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response


def running_replicas() -> int:
    status = serve.status().applications["pollama"].deployments[REPLICAS]
    return int(status.replica_states.get("RUNNING", 0))


def test_the_official_clients_work_through_the_proxy(proxy: str):
    hello = [{"role": "user", "content": "Hi"}]
    with ollama.Client(host=proxy, timeout=300) as client:
        whole = client.chat(MODEL, hello, options={"num_predict": 8})
        assert whole.message.content and whole.done
        pieces = list(client.chat(MODEL, hello, stream=True, options={"num_predict": 8}))
        assert len(pieces) > 2 and pieces[-1].done
        assert client.list().models is not None
    with openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused") as oai:
        done = oai.chat.completions.create(model=MODEL, messages=hello, max_tokens=8)  # type: ignore[arg-type]
        assert done.choices[0].message.content
        chunks = list(
            oai.chat.completions.create(
                model=MODEL,
                messages=hello,  # type: ignore[arg-type]
                max_tokens=8,
                stream=True,
            )
        )
    assert len(chunks) > 2 and chunks[-1].choices[-1].finish_reason == "length"


def test_a_stream_arrives_byte_for_byte_as_the_replica_wrote_it(proxy: str):
    body = {"model": MODEL, "prompt": "Count to five.", "options": {"num_predict": 12, "seed": 1}}
    with httpx.stream("POST", f"{proxy}/api/generate", json=body, timeout=120) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        assert response.headers[REPLICA_HEADER]
        lines = [line for line in response.iter_lines() if line]
    assert len(lines) >= 3 and '"done":true' in lines[-1].replace(" ", "")


def test_a_second_turn_lands_where_the_first_did_and_finds_its_prefix(proxy: str):
    for topic in ("a colour", "a fruit", "a tree", "a river"):
        first = [  # a system prompt of its own: no other conversation shares its cache
            {"role": "system", "content": f"About {topic}. {SYSTEM}"},
            {"role": "user", "content": f"Name {topic}."},
        ]
        one = chat(proxy, first)
        reply = one.json()["message"]
        second = [*first, reply, {"role": "user", "content": "And another one?"}]
        two = chat(proxy, second)
        assert two.headers[REPLICA_HEADER] == one.headers[REPLICA_HEADER], topic
        # Only what the first turn did not leave in the cache is evaluated.
        assert two.json()["prompt_eval_count"] < one.json()["prompt_eval_count"] / 2, topic


def test_a_model_loaded_on_one_replica_goes_there(proxy: str):
    created = httpx.post(
        f"{proxy}/api/create",
        json={"model": "solo", "from": MODEL, "system": "You are solo.", "stream": False},
        timeout=120,
    )
    assert created.status_code == 200, created.text
    body = {"model": "solo", "stream": False, "options": {"num_predict": 4}}
    first = httpx.post(f"{proxy}/api/generate", json={**body, "prompt": "Hi"}, timeout=120)
    assert first.status_code == 200, first.text
    home = first.headers[REPLICA_HEADER]
    for prompt in ("Hello", "Good day", "Hey there", "Greetings"):  # new conversations
        again = httpx.post(f"{proxy}/api/generate", json={**body, "prompt": prompt}, timeout=120)
        assert again.status_code == 200 and again.headers[REPLICA_HEADER] == home


def test_metrics_through_the_proxy_cover_every_replica(proxy: str):
    for _ in range(4):  # some work, wherever it lands
        chat(proxy, [{"role": "user", "content": "Hi"}])
    deadline = time.monotonic() + 60
    while True:  # each replica posts its figures every second (record_routing_stats)
        text = httpx.get(f"{proxy}/metrics", timeout=60).text
        replicas = {
            s.labels.get("replica") for f in text_string_to_metric_families(text) for s in f.samples
        }
        if len(replicas - {None}) >= 2:
            break
        assert time.monotonic() < deadline, text[:2000]
        time.sleep(0.5)  # polling what the board holds: nothing to wait on instead
    assert "pollama_" in text and None not in replicas


def _replica_process(replica: str) -> psutil.Process:
    """The Ray worker of ``replica``: the parent of the pollama serve it started."""
    for process in psutil.process_iter(["cmdline"]):
        if "serve" not in (process.info["cmdline"] or []):
            continue
        try:
            if process.environ().get("POLLAMA_REPLICA_ID") == replica:
                parent = process.parent()
                assert parent is not None
                return parent
        except psutil.Error:
            continue
    raise AssertionError(f"no process of replica {replica}")


def test_a_replica_killed_mid_stream_fails_clearly_and_the_other_serves(proxy: str):
    body = {"model": MODEL, "prompt": "Tell me a long story.", "options": {"num_predict": 400}}
    with httpx.stream("POST", f"{proxy}/api/generate", json=body, timeout=120) as response:
        replica = response.headers[REPLICA_HEADER]
        lines = response.iter_lines()
        assert next(lines)  # it is streaming
        victim = _replica_process(replica)
        victim.send_signal(signal.SIGKILL)
        rest = [line for line in lines if line]
    assert rest and '"error"' in rest[-1] and "replica" in rest[-1]  # a clear end, not a hang
    # New requests are served meanwhile, by the replica left.
    for _ in range(3):
        served = chat(proxy, [{"role": "user", "content": "Still there?"}])
        assert served.headers[REPLICA_HEADER] != replica
    # And Ray starts a replacement.
    deadline = time.monotonic() + 180
    while running_replicas() < 2:
        assert time.monotonic() < deadline, serve.status()
        time.sleep(0.5)  # polling Ray's own status: nothing to wait on instead


def test_concurrent_writes_through_both_replicas_keep_the_store_consistent(proxy: str):
    def create(i: int) -> int:
        body = {"model": f"w{i}", "from": MODEL, "system": f"You are writer {i}.", "stream": False}
        return httpx.post(f"{proxy}/api/create", json=body, timeout=180).status_code

    def delete(i: int) -> int:
        return httpx.request(
            "DELETE", f"{proxy}/api/delete", json={"model": f"w{i}"}, timeout=180
        ).status_code

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(create, range(6))) == [200] * 6
        assert list(pool.map(delete, range(0, 6, 2))) == [200] * 3
    names = set()
    for _ in range(4):  # whichever replica answers, the same store
        listed = httpx.get(f"{proxy}/api/tags", timeout=60).json()["models"]
        names.add(frozenset(m["name"] for m in listed if m["name"].startswith("w")))
    assert names == {frozenset({"w1:latest", "w3:latest", "w5:latest"})}
    for i in (1, 3, 5):
        shown = httpx.post(f"{proxy}/api/show", json={"model": f"w{i}"}, timeout=60)
        assert shown.status_code == 200 and f"writer {i}" in shown.json()["system"]
