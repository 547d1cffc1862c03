"""Cold start, model swap, ``pollama run`` with no server, and RSS: one checkout against another.

    python -m bench coldstart --runs 5 --before /work/main

Each run measures, in turn (the order rotates from run to run):

- ``before`` and ``after``: ``pollama serve`` from that checkout (``PYTHONPATH``), a fresh
  model store, then: process start → the first completed one-token reply on
  ``/v1/chat/completions`` (cold); a 32-token reply; a second model (``smollm2`` under
  another name) created, the server left idle for ``--idle`` seconds as between a
  user's requests, then request → its first one-token reply (swap); peak RSS of the
  server process and of each runner, sampled every 20 ms; then ``pollama run smollm2
  Hi`` with no server on the port: process start → its first byte on stdout.
- ``raw``: a fresh Python process that imports llama-cpp-python, loads the model,
  makes a context, evaluates the same chat prompt and picks one token (greedy): the
  engine's own cold start, the floor a Python server can reach.
- ``llama-server`` (where ``bench.compare.servers`` finds one): process start → its
  first one-token reply, and its peak RSS: the peer issue 15's targets are ratios to.

Every server gets 2 threads, a 2048-token context and a shared ``POLLAMA_STATE_DIR``
whose engine probe has run (it runs once per machine and build, not per start).
Reported: each figure's median, and the medians of the per-run ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from bench.compare.servers import (
    SPARE_NAME,
    Config,
    LlamaServerCpp,
    find_llama_server,
    running,
)
from pollama.demo import demo_model_path

HERE = Path(__file__).resolve().parent.parent
THREADS, NUM_CTX = 2, 2048
PROMPT = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
RAW = f"""
import sys, llama_cpp as L
L.llama_backend_init()
model = L.llama_model_load_from_file(sys.argv[1].encode(), L.llama_model_default_params())
cp = L.llama_context_default_params()
cp.n_ctx, cp.n_threads, cp.n_threads_batch = {NUM_CTX}, {THREADS}, {THREADS}
ctx = L.llama_init_from_model(model, cp)
vocab = L.llama_model_get_vocab(model)
text = {PROMPT!r}.encode()
toks = (L.llama_token * 256)()
n = L.llama_tokenize(vocab, text, len(text), toks, 256, True, True)
assert L.llama_decode(ctx, L.llama_batch_get_one(toks, n)) == 0
logits = L.llama_get_logits_ith(ctx, -1)
print(max(range(L.llama_vocab_n_tokens(vocab)), key=lambda i: logits[i]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def post(url: str, body: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        text = response.read().decode()
    # /api/create streams NDJSON; the last line says how it ended.
    result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    return result


def chat(base: str, model: str, max_tokens: int) -> None:
    post(
        f"{base}/v1/chat/completions",
        {
            "model": model,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "options": {"num_thread": THREADS},
        },
    )


class Peaks:
    """Peak RSS per process of a tree, sampled every 20 ms; an idle spare runner (named
    ``pollama-spare`` until it takes a model) counted apart."""

    def __init__(self, pid: int) -> None:
        self.root = pid
        self.rss: dict[int, int] = {}
        self.spare: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                root = psutil.Process(self.root)
                for proc in [root, *root.children(recursive=True)]:
                    with proc.oneshot():
                        rss, name = proc.memory_info().rss, proc.name()
                    peaks = self.spare if name == SPARE_NAME else self.rss
                    peaks[proc.pid] = max(peaks.get(proc.pid, 0), rss)
            except psutil.Error:
                continue

    def stop(self) -> dict[str, int]:
        """MiB: the server; the largest runner; the idle spare (0 when none)."""
        self._stop.set()
        self._thread.join()
        runners = [r for p, r in self.rss.items() if p != self.root]
        mib = 1024 * 1024
        return {
            "server_rss": self.rss.get(self.root, 0) // mib,
            "runner_rss": max(runners, default=0) // mib,
            "spare_rss": max(self.spare.values(), default=0) // mib,
        }


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) the process tree has used so far, reaped children
    (the engine probe) included: under a busy machine's contention, the work a cold
    start costs, where its wall time mostly measures the neighbours."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def environment(checkout: Path, home: Path, port: int, state: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(checkout),
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "OLLAMA_MODELS": str(home / "models"),
        "OLLAMA_CONTEXT_LENGTH": str(NUM_CTX),
        "OLLAMA_KEEP_ALIVE": "-1",
        "POLLAMA_STATE_DIR": str(state),
    }


@contextmanager
def serving(
    checkout: Path, state: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes], float, float]]:
    """A server from ``checkout`` in a fresh store, after its first reply: that time, and
    the CPU seconds its process tree used until then."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="coldstart-") as tmp:
        env = environment(checkout, Path(tmp), port, state)
        base = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "pollama", "serve"],
            env=env,
            cwd=checkout,  # `-m` puts the working directory first on sys.path
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            while True:
                try:
                    chat(base, "smollm2", 1)
                    break
                except (urllib.error.URLError, ConnectionError):
                    if proc.poll() is not None:
                        raise RuntimeError("the server exited before its first reply") from None
                    time.sleep(0.02)
            elapsed = time.perf_counter() - started
            yield base, proc, elapsed, tree_cpu(proc.pid)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


def measure_server(checkout: Path, state: Path, idle: float) -> dict[str, float]:
    with serving(checkout, state) as (base, proc, cold, cold_cpu):
        peaks = Peaks(proc.pid)
        chat(base, "smollm2", 32)
        post(f"{base}/api/create", {"model": "second", "from": "smollm2", "stream": False})
        time.sleep(idle)  # a user's pause: the server is idle (the spare, if any, refills)
        cpu, started = tree_cpu(proc.pid), time.perf_counter()
        chat(base, "second", 1)
        swap, swap_cpu = time.perf_counter() - started, tree_cpu(proc.pid) - cpu
        rss = peaks.stop()
    return {"cold_s": cold, "cold_cpu": cold_cpu, "swap_s": swap, "swap_cpu": swap_cpu, **rss}


def measure_run(checkout: Path, state: Path) -> float:
    """``pollama run smollm2 Hi`` with nothing on the port: start → first byte of answer."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="coldstart-run-") as tmp:
        env = environment(checkout, Path(tmp), port, state)
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "pollama", "run", "smollm2", "Hi"],
            env=env,
            cwd=checkout,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        first = proc.stdout.read(1)
        elapsed = time.perf_counter() - started
        proc.kill()
        _, err = proc.communicate()
        for word in err.decode().replace("(", " ").replace(")", " ").replace(";", " ").split():
            if word.isdigit():  # "started pollama serve in the background (pid N); log: …"
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(word), signal.SIGTERM)
                break
        if not first:
            raise RuntimeError(f"pollama run printed nothing: {err.decode()[-2000:]}")
        return elapsed


def measure_raw(model: Path) -> dict[str, float]:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", RAW, str(model)], stdout=subprocess.DEVNULL)
    peaks = Peaks(proc.pid)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError("the raw load failed")
    elapsed = time.perf_counter() - started
    cpu = usage.ru_utime + usage.ru_stime
    return {"cold_s": elapsed, "cold_cpu": cpu, "rss": peaks.stop()["server_rss"]}


def measure_llama_server(binary: Path, model: Path) -> dict[str, float]:
    """llama-server's cold start (its first one-token reply, polled every 50 ms as the
    compare harness does) and its peak RSS over a 32-token reply."""
    with running(LlamaServerCpp(binary=binary), Config(model, THREADS, NUM_CTX)) as server:
        post(
            f"{server.url}/v1/chat/completions",
            server.request(messages=[{"role": "user", "content": "Hi"}], max_tokens=32),
        )
        return {"cold_s": server.load_s, "rss": server.tree.stop() / 2**20}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench coldstart")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--before", type=Path, default=Path("/work/main"))
    parser.add_argument("--idle", type=float, default=3.0)
    args = parser.parse_args(argv)
    model = demo_model_path()
    sides = {"before": args.before, "after": HERE}
    results: dict[str, list[dict[str, float]]] = {"before": [], "after": [], "raw": []}
    binary = find_llama_server()
    if binary is not None:
        results["llama-server"] = []
    with tempfile.TemporaryDirectory(prefix="coldstart-state-") as state_dir:
        state = Path(state_dir)
        measure_server(HERE, state, 0)  # the engine probe runs once, into the shared state
        for run in range(args.runs):
            order = list(results)
            order = order[run % len(order) :] + order[: run % len(order)]
            for side in order:
                if side == "raw":
                    sample = measure_raw(model)
                elif side == "llama-server":
                    assert binary is not None
                    sample = measure_llama_server(binary, model)
                else:
                    sample = measure_server(sides[side], state, args.idle)
                    sample["run_s"] = measure_run(sides[side], state)
                results[side].append(sample)
                print(f"run {run + 1} {side}: {sample}", flush=True)
    report(results)


def report(results: dict[str, list[dict[str, float]]]) -> None:
    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in results[side])

    def ratio(a: str, b: str, key: str, bkey: str | None = None) -> float:
        pairs = zip(results[a], results[b], strict=True)
        return statistics.median(x[key] / y[bkey or key] for x, y in pairs)

    print(f"load average: {os.getloadavg()}")
    keys = ("cold_s", "cold_cpu", "swap_s", "swap_cpu", "run_s")
    for key in (*keys, "server_rss", "runner_rss", "spare_rss"):
        print(
            f"{key:11} before {med('before', key):8.2f}  after {med('after', key):8.2f}  "
            f"after/before {ratio('after', 'before', key) if med('before', key) else 0:.2f}"
        )
    print(
        f"raw cold_s {med('raw', 'cold_s'):.2f}  cold_cpu {med('raw', 'cold_cpu'):.2f}  "
        f"rss {med('raw', 'rss'):.0f} MiB"
    )
    for key in keys:
        base = "cold_cpu" if key.endswith("cpu") else "cold_s"
        for side in ("before", "after"):
            print(f"{key} / raw {base}: {side} {ratio(side, 'raw', key, base):.2f}")
    if "llama-server" not in results:
        return
    print(
        f"llama-server cold_s {med('llama-server', 'cold_s'):.2f}  "
        f"rss {med('llama-server', 'rss'):.0f} MiB"
    )
    for side in ("before", "after"):
        for key in ("cold_s", "swap_s", "run_s"):
            figure = ratio(side, "llama-server", key, "cold_s")
            print(f"{key} / llama-server cold_s: {side} {figure:.2f}")
        trees = [
            (r["server_rss"] + r["runner_rss"] + r["spare_rss"]) / peer["rss"]
            for r, peer in zip(results[side], results["llama-server"], strict=True)
        ]
        print(f"RSS tree / llama-server: {side} {statistics.median(trees):.2f}")


if __name__ == "__main__":
    main()
