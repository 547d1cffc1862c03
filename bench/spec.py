"""Speculative decoding's gain: decode rate with prompt-lookup drafts vs without.

    python -m bench spec [--runs 3] [--copy-tokens 200] [--free-tokens 128]

Two ``pollama serve`` processes with the demo model, both kept loaded, one with
``POLLAMA_SPECULATIVE=auto`` (the default) and one with ``off``, answer the same two
workloads greedily: *copy*, an answer that repeats a ~300-token paragraph with one
typo fixed (what prompt lookup is for), and *free*, a story with nothing to copy
(what the back-off must keep cheap). A run asks both servers once per workload, in
alternating order; the figure is the median over runs of the per-run ratio of decode
rates (``eval_count / eval_duration``, on ÷ off). The texts of the two servers are
compared too: they must be equal (greedy-exact). llama-server's n-gram speculation
is measured only where a ``llama-server`` binary is found (``bench.compare.servers``).
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

from bench.compare.servers import find_llama_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from serving import Server  # noqa: E402 - the tests' harness starts a real server

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


def ask(server: Server, prompt: str, tokens: int) -> dict[str, Any]:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": prompt}],
        "stream": False,
        "options": {"temperature": 0, "num_predict": tokens, "num_ctx": 2048},
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
        servers = {}
        for mode in ("auto", "off"):
            (Path(tmp) / mode).mkdir()
            servers[mode] = Server(Path(tmp) / mode, POLLAMA_SPECULATIVE=mode)
        try:
            for prompt, _ in workloads.values():  # load and warm both
                for server in servers.values():
                    ask(server, prompt, 8)
            for run in range(runs):
                order = ("auto", "off") if run % 2 == 0 else ("off", "auto")
                for name, (prompt, tokens) in workloads.items():
                    replies = {mode: ask(servers[mode], prompt, tokens) for mode in order}
                    loads.append(os.getloadavg()[0])
                    on, off = replies["auto"], replies["off"]
                    exact &= on["message"]["content"] == off["message"]["content"]
                    rates[name]["auto"].append(rate(on))
                    rates[name]["off"].append(rate(off))
                    ratios[name].append(rate(on) / rate(off))
                    drafted = on.get("draft_count", 0)
                    accepted[name].append(f"{on.get('draft_accepted_count', 0)}/{drafted}")
        finally:
            for server in servers.values():
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
        "llama_server": str(find_llama_server() or "not found: not compared"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--copy-tokens", type=int, default=200)
    parser.add_argument("--free-tokens", type=int, default=128)
    args = parser.parse_args()
    print(json.dumps(measure(args.runs, args.copy_tokens, args.free_tokens), indent=2))


if __name__ == "__main__":
    main()
