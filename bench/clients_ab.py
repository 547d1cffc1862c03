"""Many streaming clients, this checkout's pollama against another (before vs after a
change) and optionally llama-cpp-python's server: aggregate tok/s and CPU per token.

    python -m bench clients_ab --base /tmp/wt-base [--levels 4 8] [--rounds 6]

At each level every server is started with that many slots and kept loaded; rounds
of ``clients`` concurrent streamed chat completions alternate between them (the
order flips every round), so the machine's drift falls on all alike. Reported: the
median of the per-round ratios of aggregate tok/s against this checkout, and each
process's CPU time per generated token (the server's own process and its children,
i.e. pollama's runner, apart), read from /proc around each round.

The two sides are not symmetric: on the 2-core VM (2026-12-05) the same code measured
as ``after`` came out ~5% slower than as ``--base`` (1 client: 0.943, then 0.936 with
the roles swapped). Run it both ways (``--after X --base Y``, then ``--after Y --base
X``) and read the two ratios together before calling a change of a few percent.
"""

from __future__ import annotations

import argparse
import os
import statistics
from contextlib import ExitStack
from pathlib import Path

import psutil

from bench.compare import workloads
from bench.compare.servers import Config, Instance, LlamaCppPython, Pollama, Server, running
from pollama.demo import demo_model_path

ROOT = Path(__file__).resolve().parents[1]


def _cpu(instance: Instance) -> dict[str, float]:
    """CPU seconds so far: the server process itself, its descendants together (pollama's
    runner), and of those the main threads alone (the runner's HTTP event loop; the
    engine thread and llama.cpp's workers are the others)."""
    root = psutil.Process(instance.process.pid)
    times = root.cpu_times()
    children = loops = 0.0
    for child in root.children(recursive=True):
        try:
            t = child.cpu_times()
            main = next(th for th in child.threads() if th.id == child.pid)
        except (psutil.Error, StopIteration):
            continue
        children += t.user + t.system
        loops += main.user_time + main.system_time
    return {"server": times.user + times.system, "runner": children, "runner_loop": loops}


def _round(instance: Instance, clients: int, tokens: int) -> dict[str, float]:
    before = _cpu(instance)
    wall, streams = workloads.clients_round(instance, clients, tokens)
    after = _cpu(instance)
    generated = sum(s.completion_tokens for s in streams)
    figures = {"tps": generated / wall}
    for role in before:
        figures[f"{role}_ms_per_token"] = 1000 * (after[role] - before[role]) / generated
    return figures


def _level(
    servers: dict[str, Server], config: Config, clients: int, args: argparse.Namespace
) -> None:
    got: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    with ExitStack() as stack:
        instances = {}
        for name, server in servers.items():
            instances[name] = stack.enter_context(running(server, config, parallel=clients))
            workloads.warm_up(instances[name])
        order = list(servers)
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                got[name].append(_round(instances[name], clients, args.tokens))
    ours = got["after"]
    print(f"\n{clients} clients, {args.rounds} rounds, {args.tokens} tokens each")
    for name, rounds in got.items():
        server_ms, runner_ms, loop_ms = (
            statistics.median(r[f"{role}_ms_per_token"] for r in rounds)
            for role in ("server", "runner", "runner_loop")
        )
        ratios = [o["tps"] / t["tps"] for o, t in zip(ours, rounds, strict=True)]
        print(
            f"  {name:18s} tok/s median {statistics.median(r['tps'] for r in rounds):7.1f}"
            f"  after/{name} median {statistics.median(ratios):.3f}"
            f" (rounds {min(ratios):.3f}..{max(ratios):.3f})"
            f"  CPU ms/token server {server_ms:.3f} runner {runner_ms:.3f}"
            f" (its HTTP loop {loop_ms:.3f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench clients_ab", description=__doc__)
    parser.add_argument("--base", type=Path, required=True, help="the other pollama checkout")
    parser.add_argument(
        "--after", type=Path, default=ROOT, help="the checkout measured against it (this one)"
    )
    parser.add_argument("--levels", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--llama-cpp-python", action="store_true", help="its server as well")
    args = parser.parse_args()
    config = Config(demo_model_path(), args.threads, args.ctx)
    servers: dict[str, Server] = {
        "after": Pollama(pythonpath=str(args.after.resolve())),
        "before": Pollama(pythonpath=str(args.base.resolve())),
    }
    if args.llama_cpp_python:
        servers["llama-cpp-python"] = LlamaCppPython()
    print(f"load average at start: {os.getloadavg()}")
    for clients in args.levels:
        _level(servers, config, clients, args)
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
