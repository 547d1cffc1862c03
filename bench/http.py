"""Decode speed through the whole server (HTTP → scheduler → runner → NDJSON) vs the raw loop.

    python -m bench.http [--tokens 256] [--runs 5] [--threads 2] [--streams 1 4]

A ``pollama serve`` subprocess with a temporary store serves the demo model;
the client streams ``/api/generate`` (``raw``, the same prompt and sampler
settings as ``bench.runner``) and measures from its first token line to its
last. The raw loop is ``bench.raw``'s, in this process. Runs alternate between
the two sides; the report gives medians and their ratio.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.raw import RawEngine
from bench.runner import NUM_CTX, PROMPT, Result, report
from pollama.demo import demo_model_path
from pollama.protocol.wire import SamplingOptions


@contextmanager
def serve(threads: int, parallel: int) -> Iterator[str]:
    """A ``pollama serve`` on a free port with an empty store; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "OLLAMA_HOST": f"127.0.0.1:{port}",
            "OLLAMA_MODELS": str(Path(tmp) / "models"),
            "OLLAMA_KEEP_ALIVE": "-1",
            "OLLAMA_NUM_PARALLEL": str(parallel),
        }
        log = open(Path(tmp) / "serve.log", "w")  # noqa: SIM115 - closed below
        process = subprocess.Popen(
            [sys.executable, "-m", "pollama", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(url, timeout=1).raise_for_status()
                    break
                except httpx.TransportError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError((Path(tmp) / "serve.log").read_text()) from None
                    try:
                        process.wait(timeout=0.1)
                    except subprocess.TimeoutExpired:
                        pass
            yield url
        finally:
            process.terminate()
            process.wait(timeout=60)
            log.close()


def _options(tokens: int, seed: int, threads: int) -> dict[str, object]:
    return {
        "num_predict": tokens,
        "seed": seed,
        "temperature": 0.8,
        "top_k": 40,
        "top_p": 0.9,
        "num_ctx": NUM_CTX,
        "num_thread": threads,
    }


def _stream(url: str, tokens: int, seed: int, threads: int) -> tuple[float, float, int]:
    """(first token time, last token time, eval_count) for one streamed generate.

    The client is http.client, not httpx: on two cores, every microsecond the
    measuring client spends per token is taken from llama.cpp's threads, and
    http.client spends about half of what httpx does.
    """
    body = {
        "model": "smollm2",
        "prompt": PROMPT,
        "raw": True,
        "options": _options(tokens, seed, threads),
    }
    address = httpx.URL(url)
    connection = http.client.HTTPConnection(address.host, address.port, timeout=600)
    first = last = 0.0
    try:
        connection.request(
            "POST", "/api/generate", json.dumps(body), {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.read()[:500]!r}")
        while line := response.readline():
            now = time.perf_counter()
            record = json.loads(line)
            if "error" in record:
                raise RuntimeError(record["error"])
            if record["done"]:
                return first, last, int(record["eval_count"])
            first = first or now
            last = now
    finally:
        connection.close()
    raise RuntimeError("the stream ended without a final record")


def http_rate(url: str, streams: int, tokens: int, seed: int, threads: int) -> float:
    """Aggregate tokens/s over ``streams`` concurrent requests, first token to last."""
    with ThreadPoolExecutor(streams) as pool:
        runs = list(pool.map(lambda s: _stream(url, tokens, seed + s, threads), range(streams)))
    span = max(r[1] for r in runs) - min(r[0] for r in runs)
    # The first token of each stream comes from prompt evaluation, as in the raw loop.
    return (sum(r[2] for r in runs) - streams) / span


def measure(streams: int, tokens: int, runs: int, threads: int) -> Result:
    result = Result(streams, [], [])
    raw = RawEngine.open(demo_model_path(), num_ctx=NUM_CTX, n_seq=streams, threads=threads)
    try:
        with serve(threads, streams) as url:
            http_rate(url, streams, 16, 0, threads)  # load and warm up
            raw.decode_rate(PROMPT, SamplingOptions(seed=0), 16)
            for run in range(runs):
                result.server.append(http_rate(url, streams, tokens, 100 * run, threads))
                result.raw.append(raw.decode_rate(PROMPT, SamplingOptions(seed=100 * run), tokens))
    finally:
        raw.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    results = [measure(s, args.tokens, args.runs, args.threads) for s in args.streams]
    print(report(results, args.tokens, args.runs, args.threads, peer="/api/generate"))


if __name__ == "__main__":
    main()
