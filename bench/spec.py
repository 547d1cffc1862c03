"""Speculative decoding's gain: decode rate with prompt-lookup drafts vs without.

    python -m bench spec [--runs 6] [--copy-tokens 200] [--free-tokens 128]

One ``pollama serve`` with the demo model, kept loaded, answers the same two workloads
greedily, each request with drafts (the default) and without (``draft_num_predict``
0): *copy*, an answer that repeats a ~300-token paragraph with one typo fixed (what
prompt lookup is for), and *free*, a story with nothing to copy (what the back-off
must keep cheap). A run asks each way once per workload, in alternating order; the
figure is the median over runs of the per-run ratio of decode rates
(``eval_count / eval_duration``, on ÷ off). The texts are compared too: they must be
equal (greedy-exact).

One server, not a drafting one and a ``POLLAMA_SPECULATIVE=off`` one: two identical
servers measured this way differ by 3–6% (the one started first is slower, 0.94–0.96×
in three A/A runs of 16), which is more than the free-text target's margin. What
``off`` changes at load (logits rows reserved for drafts) measured no slower than an
``off`` server (0.974× against an A/A 0.966×).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from serving import Server  # noqa: E402 - the tests' harness starts a real server

from bench.compare.client import chat_once  # noqa: E402
from bench.compare.servers import (  # noqa: E402
    Config,
    LlamaServerCpp,
    find_llama_server,
    running,
)
from pollama.demo import demo_model_path  # noqa: E402

LLAMA_SPEC = ("--spec-type", "ngram-simple")
"""llama-server's prompt-lookup speculation (its other n-gram kinds need longer text)."""

SENTENCES = (
    "The old lighthouse stands on a rock at the end of the harbour wall.",
    "Every evening the keeper climbs the hundred and twelve steps to light the lamp.",
    "Ships coming home from the north look for its beam long before they see the coast.",
    "In winter the storms are so strong that the waves reach the top of the tower.",
    "The keeper writes the weather, the ships and the birds in a thick leather book.",
    "His daughter brings him bread, cheese and apples from the village every morning.",
    "On clear nights he can see the lights of three other towers along the shore.",
    "Nobody in the village remembers a time when the lamp was not lit at dusk.",
)
PARAGRAPH = " ".join(SENTENCES * 2).replace("daughter", "dauhgter", 1)
COPY = f"Fix the typo in this paragraph and print it whole:\n\n{PARAGRAPH}"
FREE = "Write a short story about a robot who learns to paint."


def ask(server: Server, prompt: str, tokens: int, drafts: bool = True) -> dict[str, Any]:
    options = {"temperature": 0, "num_predict": tokens, "num_ctx": 2048}
    if not drafts:
        options["draft_num_predict"] = 0
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": prompt}],
        "stream": False,
        "options": options,
    }
    response = server.post("/api/chat", body)
    response.raise_for_status()
    return dict(response.json())


def rate(reply: dict[str, Any]) -> float:
    return float(reply["eval_count"]) / reply["eval_duration"] * 1e9


def measure(runs: int, copy_tokens: int, free_tokens: int) -> dict[str, Any]:
    workloads = {"copy": (COPY, copy_tokens), "free": (FREE, free_tokens)}
    ratios: dict[str, list[float]] = {name: [] for name in workloads}
    rates: dict[str, dict[str, list[float]]] = {name: {"auto": [], "off": []} for name in workloads}
    accepted: dict[str, list[str]] = {name: [] for name in workloads}
    exact = True
    loads: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp))
        try:
            for prompt, _ in workloads.values():  # load, and cache both prompts
                ask(server, prompt, 8)
            for run in range(runs):
                order = ("auto", "off") if run % 2 == 0 else ("off", "auto")
                for name, (prompt, tokens) in workloads.items():
                    replies = {mode: ask(server, prompt, tokens, mode == "auto") for mode in order}
                    loads.append(os.getloadavg()[0])
                    on, off = replies["auto"], replies["off"]
                    exact &= on["message"]["content"] == off["message"]["content"]
                    rates[name]["auto"].append(rate(on))
                    rates[name]["off"].append(rate(off))
                    ratios[name].append(rate(on) / rate(off))
                    drafted = on.get("draft_count", 0)
                    accepted[name].append(f"{on.get('draft_accepted_count', 0)}/{drafted}")
        finally:
            server.stop()
    return {
        "runs": runs,
        "ratio_median": {name: statistics.median(r) for name, r in ratios.items()},
        "ratios": ratios,
        "rates": rates,
        "accepted_of_drafted": accepted,
        "eval_counts": {"copy": copy_tokens, "free": free_tokens},
        "texts_equal": exact,
        "load_average_1m": {"min": min(loads), "max": max(loads)},
    }


def measure_llama_server(
    binary: Path, runs: int, copy_tokens: int, free_tokens: int
) -> dict[str, Any]:
    """llama-server's own gain from n-gram speculation: a server with ``LLAMA_SPEC`` and
    one without, started afresh each run in alternating order (two servers; there is no
    per-request switch), asked the same workloads."""
    workloads = {"copy": (COPY, copy_tokens), "free": (FREE, free_tokens)}
    config = Config(model=demo_model_path(), threads=2, num_ctx=2048)
    kinds = {
        "spec": LlamaServerCpp(binary=binary, extra_args=LLAMA_SPEC),
        "off": LlamaServerCpp(binary=binary),
    }
    ratios: dict[str, list[float]] = {name: [] for name in workloads}
    exact = True
    for run in range(runs):
        order = ("spec", "off") if run % 2 == 0 else ("off", "spec")
        with running(kinds[order[0]], config) as first, running(kinds[order[1]], config) as second:
            instances = dict(zip(order, (first, second), strict=True))
            for name, (prompt, tokens) in workloads.items():
                replies = {}
                for kind in order:
                    instance = instances[kind]
                    body = instance.request(
                        messages=[{"role": "user", "content": prompt}],
                        max_tokens=tokens,
                        temperature=0,
                    )
                    chat_once(instance.url, body)  # caches the prompt, as pollama's warm-up does
                    replies[kind] = chat_once(instance.url, body)[1]
                exact &= _text(replies["spec"]) == _text(replies["off"])
                rates = {k: float(r["timings"]["predicted_per_second"]) for k, r in replies.items()}
                ratios[name].append(rates["spec"] / rates["off"])
    return {
        "binary": str(binary),
        "flags": " ".join(LLAMA_SPEC),
        "ratio_median": {name: statistics.median(r) for name, r in ratios.items()},
        "ratios": ratios,
        "texts_equal": exact,
    }


def _text(reply: dict[str, Any]) -> str:
    return str(reply["choices"][0]["message"]["content"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--copy-tokens", type=int, default=200)
    parser.add_argument("--free-tokens", type=int, default=128)
    args = parser.parse_args()
    result = measure(args.runs, args.copy_tokens, args.free_tokens)
    binary = find_llama_server()
    result["llama_server"] = (
        measure_llama_server(binary, args.runs, args.copy_tokens, args.free_tokens)
        if binary is not None
        else "not found: not compared"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
