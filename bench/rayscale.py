"""pollama on Ray Serve, measured on this machine (issue 16; docs/scale-out.md).

    python -m bench rayscale [--runs 3] [--clients 8] [--tokens 128]

On a local Ray cluster (``num_cpus`` = this machine's cores), one run measures, in an
order that rotates from run to run:

- ``ray x2``: 2 replicas x 1 llama.cpp thread behind Ray's proxy (4 slots each);
- ``ray x1``: 1 replica x 1 thread behind the proxy (8 slots);
- ``serve``: ``pollama serve`` alone, 1 thread (POLLAMA_NUM_THREAD=1), 8 slots;

each with ``--clients`` streaming clients at once, ``--tokens`` tokens each, three
rounds: aggregate decode = completion tokens / the rounds' wall time. Reported: the
medians, and the medians of the per-run ratios ray x2 / ray x1 (target >= 1.6) and
ray x1 / serve (what the proxy costs).

Then the prefix cache on a multi-turn chat: 2 replicas of 4 slots, 6 conversations of
3 turns (as many as the slots hold: a slot keeps its last sequence's cache), each with
a ~250-token system prompt of its own, turns interleaved across conversations, 4 at a
time, through the affinity router and through Ray Serve's default router (power of
two choices): hit rate = cached prompt tokens / prompt tokens (the OpenAI usage's
``cached_tokens``), turns 2 and 3 only (a first turn has nothing cached anywhere).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.compare.client import stream_chat
from bench.compare.servers import free_port

PROMPT = "Write a long story about a lighthouse keeper and a storm."
RULE = "answer in plain words, never in lists, and keep every answer short."


def wait_up(url: str, deadline_s: float = 300) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/version", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def aggregate(url: str, clients: int, tokens: int, rounds: int = 3) -> float:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream_options": {"include_usage": True},
    }
    stream_chat(url, {**body, "max_tokens": 8})  # load, and warm
    total, started = 0, time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(rounds):
            done = list(pool.map(lambda _: stream_chat(url, body), range(clients)))
            total += sum(d.completion_tokens for d in done)
    return total / (time.perf_counter() - started)


@contextmanager
def ray_app(replicas: int, parallel: int, models: Path, affinity: bool = True) -> Iterator[str]:
    from ray import serve

    from pollama.ray.app import Deployment, ReplicaResources, build

    env = {"OLLAMA_MODELS": str(models), "OLLAMA_KEEP_ALIVE": "-1"}
    deployment = Deployment(
        replicas=replicas,
        resources=ReplicaResources(num_cpus=1),
        parallel=parallel,
        env=env,
        affinity=affinity,
    )
    serve.run(build(deployment), name="pollama", route_prefix="/")
    try:
        yield PROXY
    finally:
        serve.delete("pollama")


@contextmanager
def serve_alone(parallel: int, models: Path) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "OLLAMA_MODELS": str(models),
        "OLLAMA_NUM_PARALLEL": str(parallel),
        "POLLAMA_NUM_THREAD": "1",
        "OLLAMA_KEEP_ALIVE": "-1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "pollama", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_up(url)
        yield url
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=60)


def hit_rate(url: str, conversations: int = 6, turns: int = 3) -> float:
    """Cached prompt tokens / prompt tokens over turns 2.. of every conversation."""
    histories = [
        [{"role": "system", "content": f"Conversation {i}. " + " ".join([RULE] * 12)}]
        for i in range(conversations)
    ]
    cached = prompted = 0

    def turn(i: int, n: int) -> tuple[int, int]:
        history = histories[i]
        history.append({"role": "user", "content": f"Question {n} of conversation {i}?"})
        body = {"model": "smollm2", "messages": history, "max_tokens": 8, "temperature": 0}
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300).json()
        history.append({"role": "assistant", "content": reply["choices"][0]["message"]["content"]})
        usage = reply["usage"]
        return usage["prompt_tokens_details"]["cached_tokens"], usage["prompt_tokens"]

    with ThreadPoolExecutor(4) as pool:
        for n in range(turns):
            results = list(pool.map(turn, range(conversations), [n] * conversations))
            if n > 0:
                cached += sum(c for c, _ in results)
                prompted += sum(p for _, p in results)
    return cached / prompted


PROXY = ""


def main() -> None:
    global PROXY
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    import ray
    from ray import serve

    cores = os.cpu_count() or 2
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    PROXY = f"http://127.0.0.1:{port}"
    models = Path(tempfile.mkdtemp(prefix="rayscale-")) / "models"
    sides: dict[str, Callable[[], Any]] = {
        "ray x2": lambda: ray_app(2, args.clients // 2, models),
        "ray x1": lambda: ray_app(1, args.clients, models),
        "serve": lambda: serve_alone(args.clients, models),
    }
    rates: dict[str, list[float]] = {name: [] for name in sides}
    try:
        for run in range(args.runs):
            order = list(sides)[run % 3 :] + list(sides)[: run % 3]
            for name in order:
                with sides[name]() as url:
                    rates[name].append(aggregate(url, args.clients, args.tokens))
                print(f"run {run + 1} {name}: {rates[name][-1]:.1f} tok/s", flush=True)
        hits = {}
        for affinity in (True, False):
            with ray_app(2, 4, models, affinity=affinity) as url:
                hits["affinity" if affinity else "ray default"] = hit_rate(url)
        print(f"hit rates: {hits}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    pairs = list(zip(rates["ray x2"], rates["ray x1"], rates["serve"], strict=True))
    print(
        json.dumps(
            {
                "cores": cores,
                "clients": args.clients,
                "tokens": args.tokens,
                "rates": rates,
                "median": {k: statistics.median(v) for k, v in rates.items()},
                "x2_over_x1": statistics.median(a / b for a, b, _ in pairs),
                "x1_over_serve": statistics.median(b / c for _, b, c in pairs),
                "hit_rate": hits,
                "load_average": os.getloadavg(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
