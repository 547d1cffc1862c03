"""``GET /metrics``: the Metrics class and its middleware on their own, then a real
``pollama serve`` whose counters must move by exactly what its answers report."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from serving import Server
from starlette.types import Message, Receive, Scope, Send

from pollama.api.app import create_app
from pollama.api.metrics import CONTENT_TYPE, Metrics, RequestMetrics
from pollama.api.state import ServerState
from pollama.demo import demo_model_path
from pollama.devices.types import DeviceID, DeviceInfo, SystemInfo
from pollama.ggufmeta import read_model
from pollama.memory.estimate import estimate_memory
from pollama.memory.layout import GPULayers, Layout, place
from pollama.memory.types import BackendMemory
from pollama.options.load import LoadOptions, resolve_load_options
from pollama.scheduler.loaded import LoadedModel, ModelSpec
from pollama.scheduler.scheduler import Scheduler
from pollama.settings import Settings
from pollama.store.disk import Store
from pollama.units import GiB

MODEL = "smollm2:latest"
SHORT = {"temperature": 0, "num_predict": 8}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a series not (yet) reported."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return {key: v for (n, key), v in samples.items() if n == name and wanted <= key}


# -- the Metrics class, no server -------------------------------------------------------------


def rendered(metrics: Metrics) -> Samples:
    return parse(metrics.render().decode())


def requests(samples: Samples, endpoint: str, status: str) -> float:
    return value(samples, "pollama_requests_total", endpoint=endpoint, status=status)


def test_each_metrics_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()
    one.request("/api/tags", 200, 0.01)
    assert requests(rendered(one), "/api/tags", "200") == 1
    assert requests(rendered(two), "/api/tags", "200") == 0


def test_a_completion_meter_counts_tokens_and_times_once() -> None:
    metrics = Metrics()
    meter = metrics.completion("m", 0)
    meter.first_token()
    meter.first_token()  # only the first delta is the first token
    meter.finish(prompt_eval_count=7, eval_count=4, eval_duration=200_000_000)
    idle = metrics.completion("m", 0)
    idle.finish(prompt_eval_count=3, eval_count=0, eval_duration=0)  # nothing generated
    metrics.embedded("m", 5)
    samples = rendered(metrics)
    assert value(samples, "pollama_prompt_tokens_total", model="m") == 7 + 3 + 5
    assert value(samples, "pollama_generated_tokens_total", model="m") == 4
    assert value(samples, "pollama_time_to_first_token_seconds_count", model="m") == 1
    assert value(samples, "pollama_time_per_output_token_seconds_count", model="m") == 1
    assert value(samples, "pollama_time_per_output_token_seconds_sum", model="m") == 0.05
    assert value(samples, "pollama_time_per_output_token_seconds_bucket", model="m", le="0.05") == 1
    assert value(samples, "pollama_time_per_output_token_seconds_bucket", model="m", le="0.03") == 0


@dataclass
class Route:
    path: str


async def call(middleware: RequestMetrics, scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await middleware({"type": "http", "path": "/x", **scope}, receive, send)
    return sent


def test_the_middleware_passes_a_stream_through_and_counts_it_when_it_ends() -> None:
    metrics = Metrics()
    counted_during: list[float] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = Route("/api/chat")  # what the router leaves in the scope
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for piece in (b"a", b"b", b"c"):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            counted_during.append(requests(rendered(metrics), "/api/chat", "200"))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    sent = asyncio.run(call(RequestMetrics(app, metrics=metrics), {}))
    assert [m.get("body") for m in sent] == [None, b"a", b"b", b"c", b""]
    assert counted_during == [0, 0, 0]  # timed until the response completes
    samples = rendered(metrics)
    assert requests(samples, "/api/chat", "200") == 1
    assert value(samples, "pollama_request_duration_seconds_count", endpoint="/api/chat") == 1


def test_the_middleware_counts_failures_and_unmatched_paths() -> None:
    metrics = Metrics()

    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    async def abandoned(scope: Scope, receive: Receive, send: Send) -> None:
        raise asyncio.CancelledError

    with pytest.raises(RuntimeError):
        asyncio.run(call(RequestMetrics(broken, metrics=metrics), {}))
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(call(RequestMetrics(abandoned, metrics=metrics), {}))
    samples = rendered(metrics)
    assert requests(samples, "other", "500") == 1
    assert requests(samples, "other", "499") == 1


def test_the_app_serves_metrics_by_route_template(tmp_path: Path) -> None:
    settings = Settings.from_env({"OLLAMA_MODELS": str(tmp_path)})
    state = ServerState(settings, Store(settings.models_dir), Scheduler.create(settings))
    with TestClient(create_app(state), base_url="http://localhost:11434") as client:
        assert client.get("/api/tags").status_code == 200
        assert client.get("/no/such/path").status_code == 404
        assert (
            client.post("/api/generate", json={"model": "nope", "prompt": "x"}).status_code == 404
        )
        assert client.head(f"/api/blobs/sha256:{'0' * 64}").status_code == 404
        answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"] == CONTENT_TYPE
    samples = parse(answer.text)
    for endpoint, status in (
        ("/api/tags", "200"),
        ("other", "404"),
        ("/api/generate", "404"),
        ("/api/blobs/{digest:path}", "404"),
    ):
        assert requests(samples, endpoint, status) == 1
    assert value(samples, "pollama_queue_depth") == 0
    assert value(samples, "pollama_loaded_models") == 0


# -- the scrape-time collector, with a fake scheduler --------------------------------------------


GPU = DeviceInfo(DeviceID("CUDA", "0"), "fake", 24 * GiB, 20 * GiB, compute_major=8)


@dataclass
class FakeServer:
    memory: BackendMemory | None

    def has_exited(self) -> bool:
        return False


@dataclass
class FakeScheduler:
    runners: list[LoadedModel]
    waiting: int = 0
    waiters: dict[str, int] = field(default_factory=dict)
    on_load: Any = None
    on_restart: Any = None

    def loaded(self) -> list[LoadedModel]:
        return self.runners

    def demand(self) -> dict[str, int]:
        return self.waiters


def test_memory_per_device_measured_and_estimated_for_the_same_layout() -> None:
    model = read_model(str(demo_model_path()))
    config = resolve_load_options(
        model, LoadOptions(num_ctx=2048), SystemInfo(64 * GiB, 32 * GiB, 0, 8), [GPU]
    )
    layout = Layout((GPULayers(GPU.id, tuple(range(10, model.block_count + 1))),))
    estimated = place(estimate_memory(model, config, [GPU]), layout)
    # The runner's figures differ from the estimate (a smaller graph on the GPU).
    measured = estimated.with_gpu_graph(GPU.id, 1000)
    measured = replace(measured, cpu=replace(measured.cpu, graph=2000))
    spec = ModelSpec(name="demo:latest", model=model)
    runner = LoadedModel(spec, FakeServer(measured), LoadOptions(), config, 300.0)  # type: ignore[arg-type]
    metrics = Metrics()
    metrics.watch(FakeScheduler([runner], waiting=2, waiters={"demo:latest": 3}))  # type: ignore[arg-type]
    samples = rendered(metrics)
    assert value(samples, "pollama_queue_depth") == 2
    assert value(samples, "pollama_model_waiters", model="demo:latest") == 3
    assert value(samples, "pollama_loaded_models") == 1

    def held(device: str, kind: str) -> float:
        return value(samples, "pollama_memory_bytes", model="demo:latest", device=device, kind=kind)

    for kind, figures in (("measured", measured), ("estimated", estimated)):
        assert held("cpu", kind) == figures.cpu_total
        assert held("CUDA:0", kind) == figures.gpus[0].size
        total = sum(series(samples, "pollama_memory_bytes", kind=kind).values())
        assert total == figures.memory_size()[0]
    assert held("CUDA:0", "estimated") != held("CUDA:0", "measured")


# -- a real server -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("metrics"))
    yield running
    running.stop()


def scrape(server: Server) -> Samples:
    answer = server.client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(answer.text)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def moved_requests(before: Samples, after: Samples, endpoint: str, status: str) -> float:
    return requests(after, endpoint, status) - requests(before, endpoint, status)


@pytest.mark.llama
def test_generate_moves_the_request_and_token_counters(server: Server) -> None:
    server.post("/api/generate", {"model": "smollm2"})  # loaded before we count
    before = scrape(server)
    bodies = [
        {"model": "smollm2", "prompt": prompt, "stream": False, "options": SHORT}
        for prompt in ("Why is the sky blue?", "Name a fruit.")
    ]
    answers = [server.post("/api/generate", body).json() for body in bodies]
    after = scrape(server)
    assert moved_requests(before, after, "/api/generate", "200") == 2
    assert (
        moved(before, after, "pollama_request_duration_seconds_count", endpoint="/api/generate")
        == 2
    )
    assert moved(before, after, "pollama_generated_tokens_total", model=MODEL) == sum(
        a["eval_count"] for a in answers
    )
    assert moved(before, after, "pollama_prompt_tokens_total", model=MODEL) == sum(
        a["prompt_eval_count"] for a in answers
    )
    assert moved(before, after, "pollama_time_to_first_token_seconds_count", model=MODEL) == 2
    assert moved(before, after, "pollama_time_per_output_token_seconds_count", model=MODEL) == 2
    per_token = moved(before, after, "pollama_time_per_output_token_seconds_sum", model=MODEL)
    expected = sum(a["eval_duration"] / a["eval_count"] / 1e9 for a in answers)
    assert per_token == pytest.approx(expected)


@pytest.mark.llama
def test_streamed_chat_and_openai_count_their_tokens(server: Server) -> None:
    before = scrape(server)
    chat = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Name three colours."}],
        "options": SHORT,
    }
    final = server.stream("/api/chat", chat)[-1]
    openai = server.post(
        "/v1/chat/completions",
        {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Name a bird."}],
            "max_tokens": 8,
            "temperature": 0,
        },
    ).json()
    usage = openai["usage"]
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    after = scrape(server)
    assert moved(before, after, "pollama_generated_tokens_total", model=MODEL) == (
        final["eval_count"] + usage["completion_tokens"]
    )
    assert moved(before, after, "pollama_prompt_tokens_total", model=MODEL) == (
        final["prompt_eval_count"] + usage["prompt_tokens"] - cached
    )
    assert moved(before, after, "pollama_time_to_first_token_seconds_count", model=MODEL) == 2
    assert moved_requests(before, after, "/v1/chat/completions", "200") == 1


@pytest.mark.llama
def test_errors_are_counted_with_their_status(server: Server) -> None:
    before = scrape(server)
    assert (
        server.post("/api/generate", {"model": "no-such-model", "prompt": "x"}).status_code == 404
    )
    assert server.client.get("/no/such/path").status_code == 404
    after = scrape(server)
    assert moved_requests(before, after, "/api/generate", "404") == 1
    assert moved_requests(before, after, "other", "404") == 1


@pytest.mark.llama
def test_embeddings_count_their_prompt_tokens(server: Server) -> None:
    before = scrape(server)
    inputs = ["red", "a green apple", "the blue sky above the sea"]
    answer = server.post("/api/embed", {"model": "smollm2", "input": inputs}).json()
    assert len(answer["embeddings"]) == 3 and answer["prompt_eval_count"] > 3
    after = scrape(server)
    assert (
        moved(before, after, "pollama_prompt_tokens_total", model=MODEL)
        == answer["prompt_eval_count"]
    )
    assert moved(before, after, "pollama_generated_tokens_total", model=MODEL) == 0
    assert moved_requests(before, after, "/api/embed", "200") == 1


@pytest.mark.llama
def test_loaded_models_memory_and_load_time_follow_loads_and_unloads(server: Server) -> None:
    server.post("/api/generate", {"model": "smollm2"})
    loaded = scrape(server)
    (running,) = server.client.get("/api/ps").json()["models"]
    assert value(loaded, "pollama_loaded_models") == 1
    assert value(loaded, "pollama_queue_depth") == 0
    assert value(loaded, "pollama_model_waiters", model=MODEL) == 0
    # Measured: the runner's figures, summing to /api/ps's size; estimated: the GGUF
    # estimate for the same layout (the same devices), close to it.
    measured = series(loaded, "pollama_memory_bytes", model=MODEL, kind="measured")
    estimated = series(loaded, "pollama_memory_bytes", model=MODEL, kind="estimated")
    assert sum(measured.values()) == running["size"]
    devices = {dict(key)["device"] for key in measured}
    assert "cpu" in devices and {dict(key)["device"] for key in estimated} == devices
    assert 0.5 < sum(estimated.values()) / running["size"] < 2

    server.post("/api/generate", {"model": "smollm2", "keep_alive": 0})
    unloaded = scrape(server)
    assert value(unloaded, "pollama_loaded_models") == 0
    assert not series(unloaded, "pollama_memory_bytes", model=MODEL)
    assert not series(unloaded, "pollama_model_waiters", model=MODEL)

    server.post("/api/generate", {"model": "smollm2"})
    reloaded = scrape(server)
    assert value(reloaded, "pollama_loaded_models") == 1
    assert moved(unloaded, reloaded, "pollama_model_load_seconds_count", model=MODEL) == 1
    assert moved(unloaded, reloaded, "pollama_model_load_seconds_sum", model=MODEL) > 0
    assert moved(unloaded, reloaded, "pollama_runner_restarts_total", model=MODEL) == 0


@pytest.mark.llama
def test_a_running_request_is_a_waiter_of_its_model(server: Server) -> None:
    # Counting on from ten runs far past the moment we look.
    body = {
        "model": "smollm2",
        "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
        "raw": True,
        "options": {"temperature": 0, "num_predict": 200},
    }
    with server.client.stream("POST", "/api/generate", json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        next(lines)  # it holds its slot now
        during = scrape(server)
        assert not json.loads(next(lines))["done"]  # and still did after the scrape
    assert value(during, "pollama_model_waiters", model=MODEL) == 1
    assert value(during, "pollama_queue_depth") == 0
    assert value(during, "pollama_loaded_models") == 1


@pytest.mark.llama
def test_a_killed_runner_is_restarted_once(server: Server) -> None:
    server.post("/api/generate", {"model": "smollm2"})
    (pid,) = server.runner_pids()
    before = scrape(server)
    os.kill(pid, signal.SIGKILL)
    psutil.Process(pid).wait(timeout=60)  # reaped by the server: it knows the runner is gone
    answer = server.post(
        "/api/generate", {"model": "smollm2", "prompt": "Hi", "stream": False, "options": SHORT}
    )
    assert answer.status_code == 200 and answer.json()["response"]
    after = scrape(server)
    assert moved(before, after, "pollama_runner_restarts_total", model=MODEL) == 1
    assert moved(before, after, "pollama_model_load_seconds_count", model=MODEL) == 1
    assert value(after, "pollama_loaded_models") == 1
