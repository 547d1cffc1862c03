"""LlamaServer driving real ``pollama runner`` subprocesses with the real demo model."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import gguf
import httpx
import numpy as np
import psutil
import pytest
from gguf_files import write_gguf

from pollama.chat.grammar import grammar_from_format
from pollama.demo import demo_model_path
from pollama.devices import system_info
from pollama.errors import LoadError, RunnerDied, RunnerError, RunnerHTTPError
from pollama.ggufmeta import read_model
from pollama.llm.server import LlamaServer
from pollama.memory.estimate import estimate_memory
from pollama.memory.layout import Layout, LayoutPolicy
from pollama.options.load import LoadOptions, resolve_load_options
from pollama.protocol.wire import (
    CompletionChunk,
    CompletionDone,
    CompletionRequest,
    LoadOperation,
    LoadRequest,
    LoadResponse,
    SamplingOptions,
)
from pollama.settings import Settings

pytestmark = pytest.mark.llama
T = TypeVar("T")

CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
GREEDY = SamplingOptions(temperature=0, num_predict=48)


class Loop:
    """One event loop in a background thread, so servers can outlive a single test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    running = Loop()
    yield running
    running.close()


async def start_server(
    path: Path | None = None, *, num_ctx: int = 1024, parallel: int = 1, **settings: Any
) -> LlamaServer:
    model = read_model(path or demo_model_path())
    system = system_info()
    asked = LoadOptions(num_ctx=num_ctx, parallel=parallel, num_thread=2)
    config = resolve_load_options(model, asked, system)
    server = await LlamaServer.start(model, config, Settings(**settings), [])
    try:
        await server.load(system, [], LayoutPolicy())
        await server.wait_until_running()
    except BaseException:
        await server.close()
        raise
    return server


@pytest.fixture(scope="module")
def shared(loop: Loop) -> Iterator[LlamaServer]:
    """Four slots, for the tests that do not need a runner of their own."""
    server = loop.run(start_server(parallel=4))
    yield server
    loop.run(server.close())


async def complete(
    server: LlamaServer, prompt: str, options: SamplingOptions = GREEDY, **fields: Any
) -> tuple[list[CompletionChunk], CompletionDone]:
    chunks: list[CompletionChunk] = []
    format = fields.pop("format", None)
    if format is not None:
        fields["grammar"] = grammar_from_format(format)
    request = CompletionRequest(prompt=prompt, options=options, **fields)
    async for item in server.completion(request):
        if isinstance(item, CompletionDone):
            return chunks, item
        chunks.append(item)
    raise AssertionError("stream ended without a done line")


def text(chunks: list[CompletionChunk]) -> str:
    return "".join(c.content for c in chunks)


async def stats(server: LlamaServer) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://127.0.0.1:{server.port}/stats")).json()


# -- output --------------------------------------------------------------------------


def raw_greedy(prompt: str, n: int, grammar: str = "") -> str:
    """The same model decoded greedily by llama-cpp-python directly, in this process;
    with a ``grammar``, llama.cpp's own way: the grammar filters every candidate first."""
    import llama_cpp as L

    from bench.raw import RawEngine
    from pollama.runner import llama

    # The runners these tests start load on the plain CPU path (no extra buffer types):
    # the same kernels, so the same greedy text.
    raw = RawEngine.open(demo_model_path(), num_ctx=1024, n_seq=1, threads=2, extra_buffers=False)
    try:
        tokens = raw.vocab.tokenize(prompt)
        if grammar:
            chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
            constraint = L.llama_sampler_init_grammar(raw.vocab.handle, grammar.encode(), b"root")
            L.llama_sampler_chain_add(chain, constraint)
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        else:
            chain = llama.sampler_chain(raw.vocab, GREEDY, tokens, 1024)
        out: list[int] = []

        raw.batch.clear()
        for pos, token in enumerate(tokens):
            raw.batch.add(token, pos, 0, pos == len(tokens) - 1)
        raw.batch.decode(raw.ctx)
        index, pos = len(tokens) - 1, len(tokens)
        for _ in range(n):
            token = L.llama_sampler_sample(chain, raw.ctx, index)
            if raw.vocab.is_eog(token):
                break
            out.append(token)
            raw.batch.clear()
            raw.batch.add(token, pos, 0, True)
            raw.batch.decode(raw.ctx)
            index, pos = 0, pos + 1
        L.llama_sampler_free(chain)
        return raw.vocab.detokenize(out)
    finally:
        raw.close()


def test_greedy_output_is_repeatable_and_matches_raw_llama_cpp(loop, shared):
    prompt = CHAT.format("Why is the sky blue?")
    first, done = loop.run(complete(shared, prompt))
    second, _ = loop.run(complete(shared, prompt))
    assert text(first) == text(second)
    assert done.eval_count == GREEDY.num_predict and done.done_reason == "length"
    assert done.prompt_eval_duration > 0 and done.eval_duration > 0
    assert text(first) == raw_greedy(prompt, GREEDY.num_predict)


def test_stop_sequence_across_tokens_ends_before_it(loop, shared):
    prompt = CHAT.format("Why is the sky blue?")
    full = text(loop.run(complete(shared, prompt))[0])
    words = full.split()
    # Two words and the start of a third: several tokens, cut mid-token.
    stop = f"{words[4]} {words[5]} {words[6][:2]}"
    chunks, done = loop.run(
        complete(shared, prompt, SamplingOptions(temperature=0, num_predict=48, stop=(stop,)))
    )
    assert done.done_reason == "stop"
    assert text(chunks) == full[: full.index(stop)]
    assert not any(stop[:3] in c.content for c in chunks[-2:])


def test_logprobs_come_from_the_real_logits(loop, shared):
    options = SamplingOptions(temperature=0, num_predict=8)
    chunks, _ = loop.run(
        complete(shared, CHAT.format("Say hi"), options, logprobs=True, top_logprobs=3)
    )
    logprobs = [lp for c in chunks for lp in c.logprobs]
    assert len(logprobs) == 8
    for lp in logprobs:
        assert lp.logprob <= 0
        assert len(lp.top_logprobs) == 3
        # Greedy picks the most likely token.
        assert lp.top_logprobs[0].token == lp.token
        assert lp.top_logprobs[0].logprob == pytest.approx(lp.logprob)
        assert sum(np.exp(t.logprob) for t in lp.top_logprobs) <= 1 + 1e-6
    assert "".join(lp.token for lp in logprobs) == text(chunks)


def test_json_grammar_output_parses(loop, shared):
    options = SamplingOptions(temperature=0.7, seed=7, num_predict=120)
    prompt = CHAT.format("Describe a cat as JSON with name and age.")
    chunks, done = loop.run(complete(shared, prompt, options, format="json"))
    assert done.done_reason == "stop"
    assert isinstance(json.loads(text(chunks)), dict)


def test_json_schema_is_honoured(loop, shared):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "colour": {"enum": ["red", "green", "blue"]},
            "legs": {"type": "integer"},
        },
        "required": ["name", "colour", "legs"],
    }
    prompt = CHAT.format("Describe an animal as JSON.")
    for seed in (1, 2):
        options = SamplingOptions(temperature=0.8, seed=seed, num_predict=120)
        chunks, _ = loop.run(complete(shared, prompt, options, format=schema))
        value = json.loads(text(chunks))
        assert set(value) == {"name", "colour", "legs"}
        assert value["colour"] in ("red", "green", "blue")
        assert isinstance(value["legs"], int) and isinstance(value["name"], str)


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "colour": {"enum": ["red", "green", "blue"]},
    },
    "required": ["name", "colour"],
}


def test_grammar_checking_the_drawn_token_equals_filtering_every_candidate(loop, shared):
    """The runner lets the grammar check only the token drawn, filtering the whole
    vocabulary only when it refuses: under greedy sampling that must give exactly what
    llama.cpp's grammar-first chain gives."""
    prompt = CHAT.format("Describe an animal as JSON.")
    grammar = grammar_from_format(SCHEMA)
    chunks, done = loop.run(
        complete(shared, prompt, SamplingOptions(temperature=0, num_predict=60), format=SCHEMA)
    )
    assert done.done_reason == "stop"
    assert text(chunks) == raw_greedy(prompt, 60, grammar)
    assert json.loads(text(chunks))["colour"] in ("red", "green", "blue")


def test_thinking_budget_closes_the_block_then_the_grammar_holds(loop, shared):
    """Inside a thinking block the model writes freely; when its budget runs out the
    runner writes the closing tag itself, and from there the grammar constrains."""
    prompt = CHAT.format("Describe an animal as JSON.") + "<think>\n"
    chunks, done = loop.run(
        complete(
            shared,
            prompt,
            SamplingOptions(temperature=0, num_predict=80),
            grammar=grammar_from_format(SCHEMA),
            think_end="</think>",
            think_budget=6,
        )
    )
    thinking, closed, answer = text(chunks).partition("</think>")
    assert closed and thinking.strip() and "{" not in thinking
    value = json.loads(answer)
    assert set(value) == {"name", "colour"} and value["colour"] in ("red", "green", "blue")
    assert done.done_reason == "stop"


# -- batching and caching ------------------------------------------------------------


def test_four_concurrent_requests_share_decode_batches(loop, shared):
    before = loop.run(stats(shared))
    prompts = [CHAT.format(q) for q in ("Name a fruit", "Name a city", "Count to five", "Hi")]
    options = SamplingOptions(temperature=0, num_predict=24)

    async def all_four() -> list[tuple[list[CompletionChunk], CompletionDone]]:
        return list(await asyncio.gather(*(complete(shared, p, options) for p in prompts)))

    results = loop.run(all_four())
    after = loop.run(stats(shared))
    for _, done in results:
        assert (done.done_reason, done.eval_count) == ("length", 24) or done.done_reason == "stop"
    assert after["max_sequences_per_step"] > 1
    shared_steps = sum(
        n - before["sequences_per_step"].get(k, 0)
        for k, n in after["sequences_per_step"].items()
        if int(k) > 1
    )
    assert shared_steps > 0
    # Batched decoding gives each request the same text as decoding it alone.
    alone = loop.run(complete(shared, prompts[1], options))
    assert text(results[1][0]) == text(alone[0])


def test_shared_prefix_is_not_evaluated_again(loop, shared):
    system = "You are a careful assistant. " * 20
    first = f"<|im_start|>system\n{system}<|im_end|>\n" + CHAT.format("What is 2+2?")
    options = SamplingOptions(temperature=0, num_predict=4)
    _, done1 = loop.run(complete(shared, first, options))
    second = first + "4<|im_end|>\n" + CHAT.format("And 3+3?")
    _, done2 = loop.run(complete(shared, second, options))
    tokens_second = len(loop.run(shared.tokenize(second)))
    assert done1.prompt_eval_count > 100
    assert done2.prompt_eval_count < tokens_second - 100


def _system_prompt(salt: str) -> str:
    """A long system prompt no earlier request cached (the salt opens it)."""
    rules = " ".join(f"Rule {i}: answer briefly and check your facts." for i in range(12))
    return f"<|im_start|>system\n{salt}. {rules}<|im_end|>\n"


@pytest.fixture(scope="module")
def solo(loop: Loop) -> Iterator[LlamaServer]:
    """One slot: every prompt is evaluated in its own sequence, nothing copied."""
    server = loop.run(start_server(parallel=1))
    yield server
    loop.run(server.close())


def test_concurrent_requests_evaluate_their_shared_system_prompt_once(loop, shared, solo):
    system = _system_prompt("Session of the lighthouse")
    prefix = len(loop.run(shared.tokenize(system)))
    prompts = [system + CHAT.format(q) for q in ("Name a fruit", "Name a city", "Hi")]
    options = SamplingOptions(temperature=0, num_predict=12)

    async def together() -> list[tuple[list[CompletionChunk], CompletionDone]]:
        return list(await asyncio.gather(*(complete(shared, p, options) for p in prompts)))

    results = loop.run(together())
    evaluated = sorted(done.prompt_eval_count for _, done in results)
    assert prefix > 100
    # One request evaluates the system prompt; the others copy it from its cache.
    assert evaluated[-1] > prefix
    assert all(n < 20 for n in evaluated[:-1]), evaluated
    copied = [done for _, done in results if done.prompt_eval_count < 20]
    assert all(done.prompt_cached >= prefix for done in copied)
    # A copied prefix gives the text the whole prompt gives, evaluated alone.
    for prompt, (chunks, _) in zip(prompts, results, strict=True):
        assert text(chunks) == text(loop.run(complete(solo, prompt, options))[0])


def test_a_generating_sequence_lends_its_prefix_to_a_new_request(loop, shared, solo):
    system = _system_prompt("Session of the harbour")
    prefix = len(loop.run(shared.tokenize(system)))
    story, colour = system + CHAT.format("Tell a story"), system + CHAT.format("Name a colour")
    short = SamplingOptions(temperature=0, num_predict=8)

    async def while_generating() -> tuple[CompletionDone, list[CompletionChunk], CompletionDone]:
        request = CompletionRequest(
            prompt=story, options=SamplingOptions(temperature=0, num_predict=64)
        )
        stream = shared.completion(request).__aiter__()
        first = await stream.__anext__()  # the first sequence is generating now
        assert isinstance(first, CompletionChunk)
        chunks, second = await complete(shared, colour, short)
        async for item in stream:
            if isinstance(item, CompletionDone):
                return item, chunks, second
        raise AssertionError("stream ended without a done line")

    first, chunks, second = loop.run(while_generating())
    assert first.prompt_eval_count > prefix
    assert second.prompt_cached >= prefix
    assert second.prompt_eval_count < 20
    assert text(chunks) == text(loop.run(complete(solo, colour, short))[0])


def test_embeddings_batched_equal_one_at_a_time(loop, shared):
    inputs = ["The sky is blue.", "Grass is green.", "The sky is blue."]
    batched = loop.run(shared.embedding(inputs))
    assert len(batched.embeddings) == 3 and len(batched.embeddings[0]) == 576
    assert batched.prompt_eval_count == sum(len(loop.run(shared.tokenize(t))) for t in inputs)
    alone = [loop.run(shared.embedding([t])).embeddings[0] for t in inputs]
    for got, want in zip(batched.embeddings, alone, strict=True):
        assert np.allclose(got, want, atol=1e-4)
    assert np.allclose(batched.embeddings[0], batched.embeddings[2], atol=1e-5)
    assert not np.allclose(batched.embeddings[0], batched.embeddings[1], atol=1e-3)


def test_tokenize_while_every_slot_generates(loop):
    server = loop.run(start_server(num_ctx=512))  # one slot

    async def scenario() -> list[int]:
        counting = SamplingOptions(temperature=0, num_predict=5000)
        stream = server.completion(CompletionRequest(prompt="1, 2, 3,", options=counting))
        await anext(stream)  # the only slot is now busy, for a long while
        try:
            return await server.tokenize("hello")
        finally:
            await stream.aclose()

    try:
        assert loop.run(scenario(), timeout=30)
    finally:
        loop.run(server.close())


def test_tokenize_round_trip(loop, shared):
    words = "Hello, wörld! ☃"
    tokens = loop.run(shared.tokenize(words))
    assert loop.run(shared.detokenize(tokens)) == words


# -- context limits ------------------------------------------------------------------


def test_context_shift_and_its_refusal(loop):
    server = loop.run(start_server(num_ctx=128))
    try:
        prompt = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # greedy counting runs on and on
        options = SamplingOptions(temperature=0, num_predict=300)
        chunks, shifted = loop.run(complete(server, prompt, options))
        assert shifted.done_reason == "length" and shifted.eval_count == 300
        # After dropping half the context, the recent numbers are still there: it counts on.
        numbers = [int(n) for n in text(chunks).replace(",", " ").split()[:-1]]
        assert numbers[-5:] == list(range(numbers[-5], numbers[-5] + 5))
        assert numbers[-1] > 40
        prompt_tokens = len(loop.run(server.tokenize(prompt)))
        _, refused = loop.run(complete(server, prompt, options, shift=False))
        assert refused.done_reason == "length"
        # The context fills exactly; the token sampled from its last position is still sent.
        assert prompt_tokens + refused.eval_count == 128 + 1
    finally:
        loop.run(server.close())


def test_long_prompts_are_truncated_or_refused(loop):
    server = loop.run(start_server(num_ctx=128))
    try:
        prompt = CHAT.format("word " * 300)
        n = len(loop.run(server.tokenize(prompt)))
        _, done = loop.run(complete(server, prompt, SamplingOptions(num_predict=4)))
        assert done.prompt_eval_count <= 128 < n
        with pytest.raises(RunnerHTTPError) as refused:
            loop.run(complete(server, prompt, truncate=False))
        assert refused.value.status == 400
        assert str(n) in str(refused.value) and "128" in str(refused.value)
    finally:
        loop.run(server.close())


# -- cancellation and failure --------------------------------------------------------


def test_cancelled_request_frees_its_slot(loop):
    server = loop.run(start_server(num_ctx=512))  # one slot
    try:

        async def abandon() -> None:
            stream: AsyncIterator[Any] = server.completion(
                CompletionRequest(prompt=CHAT.format("Count to a thousand."))
            )
            await anext(stream)
            await anext(stream)
            await stream.aclose()  # type: ignore[attr-defined]

        loop.run(abandon())
        # With the slot still busy this would wait for the abandoned 5120-token generation.
        _, done = loop.run(complete(server, CHAT.format("Hi")), timeout=30)
        assert done.eval_count > 0
        steps = loop.run(stats(server))["decode_steps"]
        assert steps < 200
    finally:
        loop.run(server.close())


def test_sigkill_mid_stream_raises_with_the_reason(loop):
    server = loop.run(start_server(num_ctx=512))
    try:

        async def killed() -> None:
            stream = server.completion(CompletionRequest(prompt=CHAT.format("Count to 100.")))
            await anext(stream)
            os.kill(server.pid, signal.SIGKILL)
            async for _ in stream:
                pass

        with pytest.raises(RunnerDied) as died:
            loop.run(killed())
        assert "SIGKILL" in str(died.value) or "signal 9" in str(died.value)
        assert server.has_exited()
    finally:
        loop.run(server.close())


def test_model_llama_cpp_cannot_load_fails_fast_with_its_message(loop, tmp_path):
    def kv(w: gguf.GGUFWriter) -> None:
        w.add_block_count(1)
        w.add_context_length(64)

    path = write_gguf(tmp_path / "mystery.gguf", "mystery", kv)
    with pytest.raises((LoadError, RunnerError)) as failed:
        loop.run(start_server(path, num_ctx=64), timeout=60)
    assert "mystery" in str(failed.value) or "not supported" in str(failed.value)


def test_corrupt_file_fails_fast_with_the_runners_message(loop, tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(demo_model_path().read_bytes())
    model = read_model(path)

    # Damaged after the server read its header: the runner finds out.
    with open(path, "r+b") as f:
        f.truncate(4096)

    async def scenario() -> None:
        config = resolve_load_options(model, LoadOptions(num_ctx=256), system_info())
        server = await LlamaServer.start(model, config, Settings(), [])
        try:
            await server.load(system_info(), [], LayoutPolicy())
            await server.wait_until_running()
        finally:
            await server.close()

    with pytest.raises(RunnerError) as failed:
        loop.run(scenario(), timeout=60)
    assert "invalid model file" in str(failed.value) or "truncated" in str(failed.value)


# -- memory --------------------------------------------------------------------------


def test_fit_agrees_with_the_estimate_and_commit_with_rss(loop):
    model = read_model(demo_model_path())
    config = resolve_load_options(model, LoadOptions(num_ctx=2048, num_thread=2), system_info())
    estimate = estimate_memory(model, config)

    async def scenario() -> tuple[LoadResponse, int, int, int]:
        server = await LlamaServer.start(model, config, Settings(), [])
        try:
            process = psutil.Process(server.pid)
            request = LoadRequest(
                operation=LoadOperation.FIT,
                layout=Layout(),
                num_ctx=config.num_ctx,
                batch_size=config.batch_size,
                num_threads=2,
                use_mmap=config.use_mmap,
            )
            await server.wait_launched()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
                fit = LoadResponse.from_json(
                    (await client.post("/load", json=request.to_json(), timeout=60)).json()
                )
            before = process.memory_info().rss
            await server.load(system_info(), [], LayoutPolicy())
            await server.wait_until_running()
            # A prompt of a full batch exercises the whole compute graph.
            long_prompt = CHAT.format("word " * 600)
            await complete(server, long_prompt, SamplingOptions(temperature=0, num_predict=8))
            after = process.memory_info().rss
            total, _ = server.memory_size()
            return fit, before, after, total
        finally:
            await server.close()

    fit, before, after, total = loop.run(scenario())
    assert fit.success and fit.memory is not None
    measured = fit.memory
    weights = measured.input_weights + measured.cpu.layer_weights
    assert weights == pytest.approx(estimate.input_weights + estimate.cpu.layer_weights, rel=0.05)
    assert measured.cpu.layer_cache == pytest.approx(estimate.cpu.layer_cache, rel=0.05)
    # The dry run measured the graph; the estimate is close to it.
    assert measured.cpu.graph == pytest.approx(estimate.cpu.graph, rel=0.05)
    assert after - before == pytest.approx(total, rel=0.10)
