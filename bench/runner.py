"""Decode speed through ``LlamaServer`` (runner subprocess, HTTP, NDJSON) vs the raw loop.

    python -m bench.runner [--tokens 256] [--runs 5] [--threads 2]

Both sides use the same model, thread count, context and native sampler chain
(temperature 0.8, top-k 40, top-p 0.9, fixed seeds). Runs alternate between
the two, so background load hits both alike; the report gives medians and
their ratio. Rates exclude prompt evaluation: LlamaServer's is measured by the
client from its first streamed token to its last.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
from dataclasses import dataclass

import psutil

from bench.raw import RawEngine
from pollama.demo import demo_model_path
from pollama.devices import system_info
from pollama.engine.cpu_path import CpuPath
from pollama.ggufmeta import read_model
from pollama.llm.server import LlamaServer
from pollama.memory.layout import LayoutPolicy
from pollama.options.load import LoadOptions, resolve_load_options
from pollama.protocol.wire import CompletionDone, CompletionRequest, SamplingOptions
from pollama.settings import Settings

PROMPT = (
    "<|im_start|>user\nWrite a long story about a lighthouse keeper and a storm.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
NUM_CTX = 2048


@dataclass
class Result:
    streams: int
    raw: list[float]
    server: list[float]

    @property
    def ratio(self) -> float:
        """The median of per-run ratios: each run pairs the two sides back to back, so
        a shift in background load between runs cancels out of its ratio."""
        return statistics.median(s / r for s, r in zip(self.server, self.raw, strict=True))


async def server_rate(server: LlamaServer, streams: int, tokens: int, seed: int) -> float:
    """Aggregate tokens/s over ``streams`` concurrent completions, first token to last."""
    firsts: list[float] = []
    lasts: list[float] = []
    counts: list[int] = []

    async def one(stream: int) -> None:
        options = SamplingOptions(num_predict=tokens, seed=seed + stream)
        first = last = 0.0
        async for item in server.completion(CompletionRequest(prompt=PROMPT, options=options)):
            now = time.perf_counter()
            if isinstance(item, CompletionDone):
                counts.append(item.eval_count)
                break
            first = first or now
            last = now
        firsts.append(first)
        lasts.append(last)

    await asyncio.gather(*(one(s) for s in range(streams)))
    # The first token of each stream comes from prompt evaluation, as in the raw loop.
    return (sum(counts) - streams) / (max(lasts) - min(firsts))


async def measure(streams: int, tokens: int, runs: int, threads: int) -> Result:
    path = demo_model_path()
    model = read_model(path)
    system = system_info()
    asked = LoadOptions(num_ctx=NUM_CTX, parallel=streams, num_thread=threads)
    extra = CpuPath.for_settings(Settings.from_env()).decide().extra
    config = resolve_load_options(model, asked, system, extra_buffers=extra)
    server = await LlamaServer.start(model, config, Settings.from_env(), [])
    raw = RawEngine.open(path, num_ctx=NUM_CTX, n_seq=streams, threads=threads)
    result = Result(streams, [], [])
    try:
        await server.load(system, [], LayoutPolicy())
        await server_rate(server, streams, 16, 0)  # warm-up
        raw.decode_rate(PROMPT, SamplingOptions(seed=0), 16)
        for run in range(runs):
            result.server.append(await server_rate(server, streams, tokens, 100 * run))
            options = SamplingOptions(seed=100 * run)
            result.raw.append(raw.decode_rate(PROMPT, options, tokens))
    finally:
        await server.close()
        raw.close()
    return result


def report(
    results: list[Result], tokens: int, runs: int, threads: int, peer: str = "LlamaServer"
) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [
        f"Machine: {cpu}, {psutil.cpu_count(logical=False)} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, {threads} threads; "
        f"SmolLM2-135M Q4_1, num_ctx {NUM_CTX}, {tokens} tokens, median of {runs} runs.",
        "",
        f"| streams | raw llama-cpp-python (tok/s) | {peer} (tok/s) | ratio |",
        "|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.streams} | {statistics.median(r.raw):.1f} | "
            f"{statistics.median(r.server):.1f} | {r.ratio:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    results = [
        asyncio.run(measure(streams, args.tokens, args.runs, args.threads))
        for streams in args.streams
    ]
    print(report(results, args.tokens, args.runs, args.threads))


if __name__ == "__main__":
    main()
