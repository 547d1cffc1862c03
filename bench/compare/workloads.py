"""What is measured against one running server, and on the raw engine.

Each workload returns the figures it measured, keyed as in ``stats.metrics``.
Prompts are deterministic; the long ones start with a salt (the run and the
server) so no cache carries over from an earlier request — except where reusing
it is the point (the chat's second turn).
"""

from __future__ import annotations

import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.compare.client import Streamed, chat_once, post_json, stream_chat
from bench.compare.servers import Config, Instance
from bench.compare.stats import percentile

DECODE_PROMPT = "Write a long story about a lighthouse keeper and a storm."
CHAT_QUESTION = "Summarize the rules above in one sentence."
CHAT_FOLLOW_UP = "Which rule matters most, and why?"

_WORDS = (
    "the keeper lamp harbour storm ship light tower wave night signal sea rock coast "
    "wind rope bell log watch boat chart star tide cliff fog horn island beacon "
    "captain crew sail north south east west morning evening careful always never "
    "report check clean repair record open close before after during every each"
).split()


def long_text(words: int, salt: str) -> str:
    """About ``words`` words of rule-like sentences, the same for the same salt
    (which opens the text, so two salts share no prefix)."""
    rng = random.Random(salt)
    sentences = [f"Document {salt}."]
    count = 0
    rule = 1
    while count < words:
        length = rng.randint(8, 16)
        body = " ".join(rng.choice(_WORDS) for _ in range(length))
        sentences.append(f"Rule {rule}: {body.capitalize()}.")
        count += length + 2
        rule += 1
    return " ".join(sentences)


# About 1,000 tokens for SmolLM2's tokenizer (measured: 1.3 tokens per word here).
LONG_WORDS = 760


def embedding_inputs(count: int = 64) -> list[str]:
    rng = random.Random("embeddings")
    return [
        " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 16))).capitalize() + "."
        for _ in range(count)
    ]


def _ms(seconds: float) -> float:
    return seconds * 1000


def warm_up(instance: Instance) -> None:
    """A few tokens, so the first measured request finds everything paged in."""
    stream_chat(
        instance.url,
        instance.request(
            messages=[{"role": "user", "content": DECODE_PROMPT}], max_tokens=8, temperature=0
        ),
    )


def decode_request(instance: Instance, tokens: int) -> dict[str, Any]:
    return instance.request(
        messages=[{"role": "user", "content": DECODE_PROMPT}],
        max_tokens=tokens,
        temperature=0,
        seed=0,
        stream_options={"include_usage": True},
    )


class Ceiling:
    """The raw engine (``bench.raw``'s loop, greedy like the servers) kept open in this
    process, so each server's figure can be paired with one measured right beside it
    — the machine's speed drifts by tens of percent within minutes."""

    def __init__(self, config: Config) -> None:
        from bench.raw import RawEngine
        from pollama.protocol.wire import SamplingOptions

        self._greedy = SamplingOptions(temperature=0, repeat_penalty=1.0)
        self._engine = RawEngine.open(
            config.model, num_ctx=config.num_ctx, n_seq=1, threads=config.threads
        )
        self._engine.decode_rate(_RAW_PROMPT, self._greedy, 16)  # warm-up

    def decode_tps(self, tokens: int) -> float:
        time.sleep(_SETTLE)
        return self._engine.decode_rate(_RAW_PROMPT, self._greedy, tokens)

    def prompt_tps(self, salt: str) -> float:
        time.sleep(_SETTLE)
        return self._engine.prompt_rate(long_text(LONG_WORDS, salt))

    def close(self) -> None:
        self._engine.close()


# A server's compute threads may spin a moment after its reply before they sleep.
_SETTLE = 0.2


def decode(
    instance: Instance, tokens: int, ceiling: Ceiling | None = None, pairs: int = 3
) -> dict[str, float]:
    """Single-stream greedy decode, ``pairs`` times (each followed by the raw engine's,
    when there is one): tokens/s first content to last, TTFT, medians."""
    served: list[Streamed] = []
    raw: list[float] = []
    for _ in range(pairs):
        served.append(stream_chat(instance.url, decode_request(instance, tokens)))
        if ceiling is not None:
            raw.append(ceiling.decode_tps(tokens))
    rates = [s.decode_rate for s in served]
    figures = {
        "decode_tps": statistics.median(rates),
        "ttft_ms": _ms(statistics.median(s.ttft for s in served)),
        "decode_tokens": min(s.completion_tokens for s in served),
    }
    if raw:
        figures["raw_decode_tps"] = statistics.median(raw)
        figures["decode_vs_raw"] = statistics.median(s / r for s, r in zip(rates, raw, strict=True))
    return figures


def prompt_eval(instance: Instance, salt: str, ceiling: Ceiling | None = None) -> dict[str, float]:
    """A fresh ~1,000-token prompt with ``max_tokens`` 1: prompt tokens ÷ request time
    (then the raw engine on another fresh prompt of the same length, when there is one)."""
    body = instance.request(
        messages=[{"role": "user", "content": long_text(LONG_WORDS, salt)}],
        max_tokens=1,
        temperature=0,
    )
    elapsed, reply = chat_once(instance.url, body)
    prompt_tokens = int(reply["usage"]["prompt_tokens"])
    figures = {"prompt_tps": prompt_tokens / elapsed, "prompt_tokens": prompt_tokens}
    if ceiling is not None:
        figures["raw_prompt_tps"] = ceiling.prompt_tps(f"raw {salt}")
        figures["prompt_vs_raw"] = figures["prompt_tps"] / figures["raw_prompt_tps"]
    return figures


def chat(instance: Instance, salt: str, reply_tokens: int = 32) -> dict[str, float]:
    """Two turns under one long system prompt: TTFT of each (the second can reuse the
    first's prefix from the cache)."""
    messages: list[dict[str, str]] = [
        {"role": "system", "content": long_text(LONG_WORDS, f"system {salt}")},
        {"role": "user", "content": CHAT_QUESTION},
    ]

    def turn() -> Streamed:
        body = instance.request(messages=messages, max_tokens=reply_tokens, temperature=0)
        return stream_chat(instance.url, body)

    first = turn()
    messages += [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": CHAT_FOLLOW_UP},
    ]
    second = turn()
    return {
        "chat_ttft1_ms": _ms(first.ttft),
        "chat_ttft2_ms": _ms(second.ttft),
        "chat_turn2_ratio": second.ttft / first.ttft,
    }


def embeddings(instance: Instance, count: int = 64) -> dict[str, float]:
    """``count`` inputs in one ``/v1/embeddings`` request vs one request each, in turn."""
    inputs = embedding_inputs(count)

    def embed(batch: list[str]) -> None:
        reply = post_json(instance.url, "/v1/embeddings", instance.request(input=batch))
        if len(reply["data"]) != len(batch):
            raise RuntimeError(f"{len(reply['data'])} embeddings for {len(batch)} inputs")

    embed(inputs[:2])  # warm-up: the embedding context may be made on first use
    started = time.perf_counter()
    for text in inputs:
        embed([text])
    separate = time.perf_counter() - started
    started = time.perf_counter()
    embed(inputs)
    batched = time.perf_counter() - started
    return {
        "embed_batch_ips": count / batched,
        "embed_single_ips": count / separate,
        "embed_speedup": separate / batched,
    }


def clients_round(instance: Instance, clients: int, tokens: int) -> tuple[float, list[Streamed]]:
    """``clients`` threads sending one decode request each, at once: the wall time
    from the first sent to the last done, and every stream."""
    body = decode_request(instance, tokens)
    started = time.perf_counter()
    pool = ThreadPoolExecutor(clients)
    try:
        done = list(pool.map(lambda _: stream_chat(instance.url, body), range(clients)))
    finally:
        # Interrupted (SIGTERM), leave the clients: stopping the server ends their reads.
        pool.shutdown(wait=False, cancel_futures=True)
    return time.perf_counter() - started, done


def clients_figures(rounds: list[tuple[float, list[Streamed]]], clients: int) -> dict[str, float]:
    """A level's figures over its rounds: completion tokens ÷ the rounds' wall time,
    and the latency percentiles of every request (sent to last byte)."""
    streams = [s for _, done in rounds for s in done]
    latencies = [_ms(s.latency) for s in streams]
    return {
        f"agg_tps_c{clients}": sum(s.completion_tokens for s in streams)
        / sum(wall for wall, _ in rounds),
        f"p50_ms_c{clients}": percentile(latencies, 50),
        f"p99_ms_c{clients}": percentile(latencies, 99),
        f"tokens_c{clients}": statistics.mean(s.completion_tokens for s in streams),
    }


def raw_engine(config: Config, tokens: int, salt: str) -> dict[str, float]:
    """The raw engine on its own (when no server is measured)."""
    ceiling = Ceiling(config)
    try:
        return {"decode_tps": ceiling.decode_tps(tokens), "prompt_tps": ceiling.prompt_tps(salt)}
    finally:
        ceiling.close()


# The decode prompt as SmolLM2's chat template renders it for the servers.
_RAW_PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    f"<|im_end|>\n<|im_start|>user\n{DECODE_PROMPT}<|im_end|>\n<|im_start|>assistant\n"
)
