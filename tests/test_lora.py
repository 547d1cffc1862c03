"""LoRA adapters, end to end: ``ADAPTER`` / ``/api/create``'s ``adapters`` loaded into the
runner and applied at decode, per-request ``lora`` scales on the native and OpenAI
routes, scale sets grouped per decode step, the prefix cache keyed by scales, adapter
memory in ``pollama fit`` and ``/api/ps``, and a broken adapter refused with llama.cpp's
reason. Real ``pollama serve`` and runners with the demo model; the adapters are written
by ``assets.lora`` (same seed, so ``b2`` is exactly ``b1`` with B doubled)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from assets.lora import LoraSpec, tensor_bytes, write_lora
from openai import OpenAI
from serving import Server

from pollama.demo import demo_model_path
from pollama.devices import system_info
from pollama.ggufmeta import read_model
from pollama.llm.server import LlamaServer
from pollama.memory.layout import LayoutPolicy
from pollama.options.load import LoadOptions, resolve_load_options
from pollama.protocol.wire import (
    CompletionChunk,
    CompletionDone,
    CompletionRequest,
    LoraScale,
    RunnerStats,
    SamplingOptions,
)
from pollama.settings import Settings

pytestmark = pytest.mark.llama

PROMPT = "<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n<|im_start|>assistant\n"
GREEDY = {"temperature": 0, "num_predict": 12}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The adapters: zero B; random B; the same with B doubled; a small one (rank 4,
    q only, six layers); one whose A is a column short; one for another architecture."""
    root = tmp_path_factory.mktemp("lora")
    specs = {
        "zero": LoraSpec(zero_b=True),
        "b1": LoraSpec(),
        "b2": LoraSpec(b_factor=2.0),
        "small": LoraSpec(rank=4, targets=("attn_q",), layers=tuple(range(6)), seed=7),
        "wrong": LoraSpec(wrong_shape=True),
        "qwen": LoraSpec(architecture="qwen2", layers=(0,)),
    }
    return {name: write_lora(root / f"{name}.gguf", spec) for name, spec in specs.items()}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("serve"), OLLAMA_MAX_LOADED_MODELS="3")
    for name in ("zero", "b1", "b2", "small", "wrong", "qwen"):
        create(running, f"lora-{name}", files[name])
    yield running
    running.stop()


def upload(server: Server, path: Path) -> str:
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert server.client.post(f"/api/blobs/{digest}", content=data).status_code == 201
    return digest


def create(server: Server, name: str, *adapters: Path) -> None:
    """``name`` from the demo model with ``adapters`` (uploaded blobs), in ADAPTER order."""
    body = {
        "model": name,
        "from": "smollm2",
        "adapters": {p.name: upload(server, p) for p in adapters},
        "stream": False,
    }
    created = server.post("/api/create", body)
    assert created.status_code == 200, created.text


def generate(server: Server, model: str, lora: Any = None, **fields: Any) -> dict[str, Any]:
    """A greedy raw completion of PROMPT with the logprobs of every token."""
    body = {
        "model": model,
        "prompt": PROMPT,
        "raw": True,
        "stream": False,
        "options": GREEDY,
        "logprobs": True,
        "top_logprobs": 20,
        **fields,
    }
    if lora is not None:
        body["lora"] = lora
    reply = server.post("/api/generate", body)
    assert reply.status_code == 200, reply.text
    return reply.json()


def answer(reply: dict[str, Any]) -> tuple[str, list[tuple[str, float]]]:
    """What a reply's text and logprobs say, for exact comparison."""
    return reply["response"], [(lp["token"], lp["logprob"]) for lp in reply["logprobs"]]


def shift(base: dict[str, Any], other: dict[str, Any]) -> float:
    """How much probability ``other``'s first token moved from ``base``'s: the total
    variation distance over the tokens either lists in its top 20 (a token one leaves
    out counts as 0 there)."""
    before = {t["token"]: math.exp(t["logprob"]) for t in base["logprobs"][0]["top_logprobs"]}
    after = {t["token"]: math.exp(t["logprob"]) for t in other["logprobs"][0]["top_logprobs"]}
    tokens = before.keys() | after.keys()
    return sum(abs(after.get(t, 0.0) - before.get(t, 0.0)) for t in tokens) / 2


# -- decoding ----------------------------------------------------------------------------


def test_a_zero_b_adapter_answers_exactly_as_the_base_model(server: Server):
    assert answer(generate(server, "lora-zero")) == answer(generate(server, "smollm2"))


def test_the_adapter_changes_the_logits_as_the_lora_formula_predicts(server: Server):
    """``W x + scale · (alpha/rank) · B (A x)``: scale 0 is the base model exactly; the
    default is scale 1; doubling B halves the scale that gives the same answer (bit for
    bit: doubling is exact in floating point), which the scale only does if it multiplies
    B (A x); and the first-token distribution moves further from the base's as the scale
    grows, well above the noise of having the adapter in llama.cpp's graph at all.

    That noise is real and not small on this Q4_1 model: any scale, even 2^-20, moves
    the distribution a little (llama.cpp quantizes activations to 8 bits before each
    quantized matmul, and a tiny change flips some roundings), so small scales cannot be
    told apart from each other; scales 1 and 2 can."""
    base = generate(server, "smollm2")
    default = generate(server, "lora-b1")
    assert answer(generate(server, "lora-b1", [{"id": 0, "scale": 0.0}])) == answer(base)
    assert answer(generate(server, "lora-b1", [{"id": 0, "scale": 1.0}])) == answer(default)
    assert answer(generate(server, "lora-b2", [{"id": 0, "scale": 0.5}])) == answer(default)
    half = generate(server, "lora-b1", [{"id": 0, "scale": 0.5}])
    assert answer(generate(server, "lora-b2", [{"id": 0, "scale": 0.25}])) == answer(half)
    assert answer(half) != answer(base)
    noise = shift(base, generate(server, "lora-b1", [{"id": 0, "scale": 2.0**-20}]))
    double = generate(server, "lora-b1", [{"id": 0, "scale": 2.0}])
    assert answer(generate(server, "lora-b2", [{"id": 0, "scale": 1.0}])) == answer(double)
    moved = [shift(base, reply) for reply in (default, double)]
    assert noise < moved[0] < moved[1] and moved[0] > 2 * noise, (noise, moved)


def test_per_request_scales_through_chat_and_the_openai_client(server: Server):
    messages = [{"role": "user", "content": "Name three colours."}]
    off = [{"id": 0, "scale": 0.0}]

    def chat(model: str, lora: Any = None) -> str:
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "stream": False,
            "options": GREEDY,
        }
        if lora is not None:
            body["lora"] = lora
        reply = server.post("/api/chat", body)
        assert reply.status_code == 200, reply.text
        return str(reply.json()["message"]["content"])

    assert chat("lora-b1", off) == chat("smollm2")
    assert chat("lora-b2", [{"id": 0, "scale": 0.5}]) == chat("lora-b1")

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")

    def openai_chat(model: str, lora: Any = None) -> str | None:
        extra = {"lora": lora} if lora is not None else None
        reply = client.chat.completions.create(
            model=model, messages=messages, max_tokens=12, temperature=0, extra_body=extra
        )
        return reply.choices[0].message.content

    def openai_text(model: str, lora: Any = None) -> str:
        extra = {"lora": lora} if lora is not None else None
        reply = client.completions.create(
            model=model, prompt=PROMPT, max_tokens=12, temperature=0, extra_body=extra
        )
        return reply.choices[0].text

    assert openai_chat("lora-b1", off) == openai_chat("smollm2") == chat("smollm2")
    assert openai_chat("lora-b2", [{"id": 0, "scale": 0.5}]) == openai_chat("lora-b1")
    assert openai_text("lora-b1", off) == openai_text("smollm2")
    assert openai_text("lora-b2", [{"id": 0, "scale": 0.5}]) == openai_text("lora-b1")
    # Not raw: /v1/completions templates its prompt, as /api/generate does by default.
    assert openai_text("lora-b1") == generate(server, "lora-b1", raw=False)["response"]


def test_an_id_the_model_lacks_is_a_400_on_every_route(server: Server):
    bad = [{"id": 1, "scale": 1.0}]
    reply = server.post("/api/generate", {"model": "lora-b1", "prompt": "Hi", "lora": bad})
    assert reply.status_code == 400
    assert reply.json()["error"] == (
        'lora id 1: "lora-b1:latest" has no LoRA adapter with that id; it has 1 (ids 0-0)'
    )
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "lora": bad}
    reply = server.post("/v1/chat/completions", body)
    assert reply.status_code == 400
    assert "it was created without any" in reply.json()["error"]["message"]


# -- loading, the store, memory -------------------------------------------------------------


def test_an_adapter_that_does_not_fit_the_model_is_a_400_with_llama_cpps_reason(server: Server):
    """The file is a valid GGUF adapter, so creating the model works; llama.cpp refuses it
    when the runner loads it. That is the adapter's fault, not pollama's: a 400 naming
    the file and llama.cpp's reason, and no runner left behind."""
    for model, reason in (
        ("lora-wrong", "tensor 'blk.0.attn_q.weight' has incorrect shape"),
        ("lora-qwen", "model arch and LoRA arch mismatch"),
    ):
        reply = server.post("/api/generate", {"model": model, "prompt": "Hi"})
        assert reply.status_code == 400, reply.text
        message = reply.json()["error"]
        assert "the LoRA adapter " in message and "does not fit this model" in message
        assert reason in message and "/blobs/sha256-" in message, message
        loaded = [m["name"] for m in server.client.get("/api/ps").json()["models"]]
        assert f"{model}:latest" not in loaded


def test_modelfile_adapter_path_equals_the_uploaded_blob(
    server: Server, files: dict[str, Path], tmp_path: Path
):
    """``pollama create -f Modelfile`` with ``ADAPTER ./b1.gguf``: the CLI uploads the file
    and the model answers as the one made through ``/api/create``'s ``adapters``."""
    (tmp_path / "b1.gguf").symlink_to(files["b1"])
    (tmp_path / "Modelfile").write_text("FROM smollm2\nADAPTER ./b1.gguf\n")
    env = {
        **{k: v for k, v in os.environ.items() if k != "POLLAMA_GPUS"},
        "OLLAMA_HOST": f"127.0.0.1:{server.port}",
        "OLLAMA_MODELS": str(server.models),
    }
    created = subprocess.run(
        [sys.executable, "-m", "pollama", "create", "pirate", "-f", str(tmp_path / "Modelfile")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert created.returncode == 0, created.stderr
    shown = server.post("/api/show", {"model": "pirate"}).json()
    assert "ADAPTER " in shown["modelfile"]
    assert answer(generate(server, "pirate")) == answer(generate(server, "lora-b1"))
    assert answer(generate(server, "pirate")) != answer(generate(server, "smollm2"))


def runner_port(server: Server, pid: int) -> int:
    cmd = psutil.Process(pid).cmdline()
    return int(cmd[cmd.index("--port") + 1])


def fit_json(server: Server, *args: str) -> dict[str, Any]:
    env = {
        **{k: v for k, v in os.environ.items() if k != "POLLAMA_GPUS"},
        "OLLAMA_MODELS": str(server.models),
    }
    ran = subprocess.run(
        [sys.executable, "-m", "pollama", "fit", *args, "--json", "--parallel", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    return dict(json.loads(ran.stdout))


def test_models_with_different_adapters_are_runners_of_their_own_with_their_own_size(
    server: Server, files: dict[str, Path]
):
    """The base model, ``lora-b1`` and ``lora-small`` loaded together: three runners,
    each ``/api/ps`` size llama.cpp's measured buffers; what an adapter adds is its
    LoRA buffer, within 5% of ``pollama fit``'s figure (the adapter's tensor bytes)."""
    models = ("smollm2", "lora-b1", "lora-small")
    for model in models:  # earlier tests may have them loaded with a larger context
        assert server.post("/api/generate", {"model": model, "keep_alive": 0}).status_code == 200
    for model in models:
        reply = server.post("/api/generate", {"model": model, "options": {"num_ctx": 2048}})
        assert reply.status_code == 200, reply.text
    rows = {m["name"]: m for m in server.client.get("/api/ps").json()["models"]}
    assert {"smollm2:latest", "lora-b1:latest", "lora-small:latest"} <= rows.keys()
    assert len(server.runner_pids()) >= 3
    base = rows["smollm2:latest"]["size"]
    for model, name in (("lora-b1:latest", "b1"), ("lora-small:latest", "small")):
        added = rows[model]["size"] - base
        planned = fit_json(server, model.removesuffix(":latest"), "--num-ctx", "2048")
        assert planned["adapter_bytes"] == tensor_bytes(files[name])
        assert abs(added - planned["adapter_bytes"]) <= 0.05 * planned["adapter_bytes"], (
            model,
            added,
            planned["adapter_bytes"],
        )
    report = fit_json(server, "lora-b1", "--num-ctx", "2048")
    assert report["adapters"] and report["adapters"][0].endswith(
        "sha256-" + hashlib.sha256(files["b1"].read_bytes()).hexdigest()
    )
    plain = fit_json(server, "smollm2", "--num-ctx", "2048")
    assert report["total"] - plain["total"] == report["adapter_bytes"]
    with_flag = fit_json(server, str(demo_model_path()), "--adapter", str(files["b1"]))
    assert with_flag["adapter_bytes"] == report["adapter_bytes"]


# -- the runner: grouping by scales, the prefix cache ------------------------------------------

OFF = (LoraScale(0, 0.0),)


@dataclass(frozen=True)
class Reply:
    text: str
    logprobs: tuple[float, ...]
    """Each generated token's, exactly: equal only for equal KV and scales."""
    done: CompletionDone


class Runner:
    """One ``LlamaServer`` with the b1 adapter and two slots, on its own event loop."""

    def __init__(self, adapter: Path) -> None:
        self.loop = asyncio.new_event_loop()
        model = read_model(demo_model_path())
        system = system_info()
        asked = LoadOptions(num_ctx=1024, parallel=2, num_thread=2)
        config = resolve_load_options(model, asked, system)

        async def start() -> LlamaServer:
            server = await LlamaServer.start(model, config, Settings(), [], lora=[str(adapter)])
            await server.load(system, [], LayoutPolicy())
            await server.wait_until_running()
            return server

        self.server = self.loop.run_until_complete(start())

    def complete(self, prompt: str, lora: tuple[LoraScale, ...] = (), n: int = 12) -> Reply:
        return self.loop.run_until_complete(self._complete(prompt, lora, n))

    async def _complete(self, prompt: str, lora: tuple[LoraScale, ...], n: int) -> Reply:
        options = SamplingOptions(temperature=0, num_predict=n)
        request = CompletionRequest(prompt=prompt, options=options, lora=lora, logprobs=True)
        text, logprobs = [], []
        async for item in self.server.completion(request):
            if isinstance(item, CompletionDone):
                return Reply("".join(text), tuple(logprobs), item)
            text.append(item.content)
            logprobs.extend(lp.logprob for lp in item.logprobs)
        raise AssertionError("no done line")

    def stats(self) -> RunnerStats:
        reply = httpx.get(f"http://127.0.0.1:{self.server.port}/stats", timeout=30)
        return RunnerStats.from_json(reply.json())

    def close(self) -> None:
        self.loop.run_until_complete(self.server.close())
        self.loop.close()


@pytest.fixture(scope="module")
def runner(files: dict[str, Path]) -> Iterator[Runner]:
    running = Runner(files["b1"])
    yield running
    running.close()


def test_requests_with_different_scales_never_share_a_step_and_get_their_solo_answers(
    runner: Runner,
):
    """Each request alone, twice (the second reuses the first's cache, as each will when
    they run together), then both at once: the same tokens and logprobs, bit for bit.

    Compared cached with cached on purpose: on this Q4_1 model a prompt evaluated whole
    and one whose last token is evaluated after a cached prefix differ by up to ~0.2 in
    a logprob even without adapters (llama.cpp's numerics, not the cache's content), and
    greedy text can follow."""
    long_prompt = PROMPT.replace("the sea", "a lighthouse keeper")
    alone_long = [runner.complete(long_prompt, OFF, n=48) for _ in range(2)][-1]
    alone_short = [runner.complete(PROMPT, n=8) for _ in range(2)][-1]
    assert alone_long.done.prompt_cached > 0 and alone_short.done.prompt_cached > 0
    before = runner.stats()

    async def together() -> tuple[Reply, Reply]:
        options = SamplingOptions(temperature=0, num_predict=48)
        request = CompletionRequest(prompt=long_prompt, options=options, lora=OFF, logprobs=True)
        iterator = runner.server.completion(request).__aiter__()
        first = await iterator.__anext__()  # the long one is generating now
        assert isinstance(first, CompletionChunk)
        short = await runner._complete(PROMPT, (), 8)
        text, logprobs = [first.content], [lp.logprob for lp in first.logprobs]
        async for item in iterator:
            if isinstance(item, CompletionChunk):
                text.append(item.content)
                logprobs.extend(lp.logprob for lp in item.logprobs)
            else:
                return Reply("".join(text), tuple(logprobs), item), short
        raise AssertionError("no done line")

    long, short = runner.loop.run_until_complete(together())
    after = runner.stats()
    assert (long.text, long.logprobs) == (alone_long.text, alone_long.logprobs)
    assert (short.text, short.logprobs) == (alone_short.text, alone_short.logprobs)
    # They took turns: the context's scales changed back and forth (one request after
    # the other would change them at most twice), and no step held both.
    assert after.lora_switches - before.lora_switches >= 3
    new_steps = {
        k: v - before.sequences_per_step.get(k, 0) for k, v in after.sequences_per_step.items()
    }
    assert all(n == 0 for k, n in new_steps.items() if k > 1), new_steps


def test_the_prefix_cache_is_kept_per_scale_set(runner: Runner):
    """KV computed under other scales is never reused, not even as a copied prefix: a
    prompt cached at scale 1 is evaluated afresh at scale 0 (in the other slot); each
    scale set then reuses its own cache: a request after the switch back answers with
    exactly the logprobs the same cache gave before it."""
    rules = " ".join(f"Rule {i}: answer briefly and check your facts." for i in range(8))
    # It starts unlike every earlier prompt (no "<|im_start|>"), so nothing is cached yet.
    prompt = f"Autumn. {rules}\n" + PROMPT
    on_first = runner.complete(prompt)
    on_cached = runner.complete(prompt)
    off_first = runner.complete(prompt, OFF)
    off_cached = runner.complete(prompt, OFF)
    on_again = runner.complete(prompt)
    off_again = runner.complete(prompt, OFF)
    assert on_first.done.prompt_cached == 0 and off_first.done.prompt_cached == 0
    assert on_first.done.prompt_eval_count == off_first.done.prompt_eval_count > 64
    for reply in (on_cached, off_cached, on_again, off_again):
        assert reply.done.prompt_cached > 64
    assert on_again.logprobs == on_cached.logprobs and on_again.text == on_cached.text
    assert off_again.logprobs == off_cached.logprobs and off_again.text == off_cached.text
    assert on_cached.logprobs != off_cached.logprobs
