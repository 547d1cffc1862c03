"""A soak: many clients against one ``pollama serve`` for minutes, looking for leaks.

    python -m bench.soak [--clients 8] [--minutes 20] [--max-requests N]
                         [--parallel 4] [--json out.json]

One server on 127.0.0.1 with a temporary store and the demo model (``smollm2``),
``OLLAMA_NUM_PARALLEL`` slots, and no inherited ``OLLAMA_*``/``POLLAMA_*``
settings (the soak measures the defaults). Each client thread loops until the
deadline or the shared request budget is spent, sending every workload once
per round (native generate, chat and embed; OpenAI chat; Anthropic messages;
streamed and not; the first round rotated per client, later ones in a seeded
shuffled order), asking for at most 24 tokens so requests stay
short. Every ``--disconnect-every``-th request of a client is abandoned on
purpose: a stream is closed after its first chunk, a whole reply is given up
after a short read timeout. Those count as *disconnected*, never as failed; a
failure is any other non-2xx status, transport error, or malformed or
truncated reply.

Resources (RSS, open fds, threads) of the server and its runner are sampled at
the start (after priming: one request, then two bursts of concurrent ones
with every workload among them), after the warm-up (the first
10% of the run or 30 s, whichever is shorter: allocator arenas, the embedding
context and connection pools grow in that time) and at the end. Each of those
samples is taken in the same quiet state: the clients are held between
requests, the server is waited on until it holds no client connection, and its
pool of keep-alive connections to the runner is brought down to one (``settle``),
since every open connection is an fd (and the count under load would swing by
up to the number of clients). Runner restarts come from ``/metrics``
(``pollama_runner_restarts_total``) and from the runner pids seen by a monitor.

Exit status 1 when a request failed, the runner restarted, the server did not
answer after the soak, RSS (server or runner) grew more than 5% from the
warm-up to the end, or fds or threads grew by more than ``COUNT_TOLERANCE``
(2: the server's default executor starts threads on demand up to its cap,
min(32, CPUs + 4), and never ends them, so a burst after the warm-up may add
one or two; a leak grows without bound and soon passes any small tolerance).
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.compare.servers import free_port, stop_session
from bench.compare.stats import percentile

MODEL = "smollm2"
MAX_TOKENS = 24
"""The most tokens a request asks for: a soak wants many short requests."""
RSS_GROWTH_LIMIT = 5.0
"""Percent, from the warm-up sample to the end, for the server and the runner alike."""
COUNT_TOLERANCE = 2
"""How many more fds or threads the end may show than the warm-up, per process."""
REQUEST_TIMEOUT = 300.0
"""Seconds any one socket operation of a request may take before it is a failure: on a
machine whose cores other work also wants, a 24-token reply has taken over 100 s."""
START_TIMEOUT = 300.0
"""Seconds for the server to listen and for its first replies (the first imports the model)."""
QUIET_TIMEOUT = 30.0
"""Seconds for each wait of ``settle`` (the runner's idle connections close after 5)."""
MIB = 1024 * 1024
PROMPTS = (
    "Say hello.",
    "Name a colour.",
    "What is two plus two?",
    "Count to five.",
    "Write a haiku about the sea.",
    "Give me a word that rhymes with cat.",
    "What is the capital of France?",
    "Describe a cloud in one sentence.",
)
HEADERS = {"Content-Type": "application/json"}
OK, FAILED, DISCONNECTED = "completed", "failed", "disconnected"


@dataclass(frozen=True)
class Workload:
    name: str
    api: str
    """generate, chat, embed, openai or anthropic: what the body and reply look like."""
    path: str
    stream: bool


WORKLOADS = (
    Workload("generate", "generate", "/api/generate", False),
    Workload("generate/stream", "generate", "/api/generate", True),
    Workload("chat", "chat", "/api/chat", False),
    Workload("chat/stream", "chat", "/api/chat", True),
    Workload("embed", "embed", "/api/embed", False),
    Workload("openai", "openai", "/v1/chat/completions", False),
    Workload("openai/stream", "openai", "/v1/chat/completions", True),
    Workload("anthropic", "anthropic", "/v1/messages", False),
    Workload("anthropic/stream", "anthropic", "/v1/messages", True),
)
WHOLE_REPLY_KEY = {
    "generate": "response",
    "chat": "message",
    "embed": "embeddings",
    "openai": "choices",
    "anthropic": "content",
}


def body_for(workload: Workload, rng: random.Random, tokens: int | None = None) -> dict[str, Any]:
    """A small request: one of a few prompts, ``tokens`` (else 4 to ``MAX_TOKENS``), greedy."""
    prompt = rng.choice(PROMPTS)
    tokens = tokens or rng.randint(4, MAX_TOKENS)
    messages = [{"role": "user", "content": prompt}]
    options = {"num_predict": tokens, "temperature": 0}
    if workload.api == "embed":
        inputs = rng.sample(PROMPTS, rng.randint(1, 3))
        return {"model": MODEL, "input": inputs}
    if workload.api == "generate":
        return {"model": MODEL, "prompt": prompt, "stream": workload.stream, "options": options}
    if workload.api == "chat":
        return {"model": MODEL, "messages": messages, "stream": workload.stream, "options": options}
    return {
        "model": MODEL,
        "messages": messages,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": workload.stream,
    }


@dataclass(frozen=True)
class Outcome:
    """One request as its client saw it."""

    workload: str
    result: str
    """OK, FAILED or DISCONNECTED."""
    seconds: float
    """From sending the request to the end of the reply (or to leaving it, if deliberate)."""
    status: int
    """The HTTP status, 0 if none arrived."""
    at: float
    """Seconds from the start of the load when the request was sent."""
    error: str = ""


class BadReply(Exception):
    """A 2xx reply that is malformed, carries an error, or ended early."""


def request(
    host: str,
    port: int,
    workload: Workload,
    body: dict[str, Any],
    *,
    leave_after: float | None = None,
    timeout: float = REQUEST_TIMEOUT,
    t0: float = 0.0,
) -> Outcome:
    """Send one request on a connection of its own and read (or abandon) its reply.

    With ``leave_after``, the client disconnects deliberately: a stream after its
    first chunk, a whole reply when it has not come within ``leave_after`` seconds
    (or, if it has, without reading its body).
    """
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    sent = time.perf_counter()
    at = time.monotonic() - t0
    status = 0

    def outcome(result: str, error: str = "") -> Outcome:
        seconds = time.perf_counter() - sent
        return Outcome(workload.name, result, seconds, status, at, error)

    try:
        connection.request("POST", workload.path, json.dumps(body), HEADERS)
        if leave_after is not None and not workload.stream:
            assert connection.sock is not None
            connection.sock.settimeout(leave_after)
            try:
                response = connection.getresponse()
            except TimeoutError:
                return outcome(DISCONNECTED)
        else:
            response = connection.getresponse()
        status = response.status
        if not 200 <= status < 300:
            return outcome(FAILED, f"HTTP {status}: {response.read(300)!r}")
        if leave_after is not None:
            if workload.stream:
                _read_stream(workload, response, first_only=True)
            return outcome(DISCONNECTED)
        if workload.stream:
            _read_stream(workload, response, first_only=False)
        else:
            _check_whole(workload, response.read())
        return outcome(OK)
    except (OSError, http.client.HTTPException, ValueError, BadReply) as e:
        return outcome(FAILED, f"{type(e).__name__}: {e}"[:300])
    finally:
        connection.close()


def _check_whole(workload: Workload, data: bytes) -> None:
    reply = json.loads(data)
    if not isinstance(reply, dict) or "error" in reply:
        raise BadReply(data[:300].decode(errors="replace"))
    key = WHOLE_REPLY_KEY[workload.api]
    if key not in reply or (workload.api == "embed" and not reply[key]):
        raise BadReply(f"no {key!r} in {data[:300]!r}")


def _read_stream(workload: Workload, response: http.client.HTTPResponse, first_only: bool) -> None:
    """Read NDJSON or server-sent events to the end the protocol defines (``done``,
    ``[DONE]``, ``message_stop``), or only to the first chunk."""
    ended = False
    while line := response.readline():
        line = line.strip()
        if not line or line.startswith((b":", b"event:")):
            continue  # separators, comments, event names (the data line follows)
        if first_only:
            return
        if workload.api in ("generate", "chat"):
            chunk = json.loads(line)
            if "error" in chunk:
                raise BadReply(str(chunk["error"]))
            ended = ended or chunk.get("done") is True
            continue
        if not line.startswith(b"data:"):
            raise BadReply(f"unexpected line {line[:200]!r}")
        data = line[5:].strip()
        if data == b"[DONE]":
            ended = True
            continue
        chunk = json.loads(data)
        if "error" in chunk or chunk.get("type") == "error":
            raise BadReply(str(chunk.get("error")))
        ended = ended or chunk.get("type") == "message_stop"
    if first_only:
        raise BadReply("stream ended before its first chunk")
    if not ended:
        raise BadReply("stream ended before its last chunk")


# -- the server ---------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """A running ``pollama serve``."""

    host: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path


@contextmanager
def serving(parallel: int, home: Path) -> Iterator[Served]:
    """``pollama serve`` on a free loopback port with its store under ``home``, in a
    session of its own (stopping it stops its runner too)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "POLLAMA_"))}
    env |= {
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "OLLAMA_MODELS": str(home / "models"),
        "OLLAMA_NUM_PARALLEL": str(parallel),
        "OLLAMA_KEEP_ALIVE": "-1",  # the runner measured at the end is the one at the start
    }
    log = home / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pollama", "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    served = Served("127.0.0.1", port, process, log)
    try:
        _wait_listening(served, time.monotonic() + START_TIMEOUT)
        yield served
    finally:
        stop_session(process)


def _wait_listening(served: Served, deadline: float) -> None:
    while True:
        try:
            connection = http.client.HTTPConnection(served.host, served.port, timeout=10)
            try:
                connection.request("GET", "/")
                if connection.getresponse().status == 200:
                    return
            finally:
                connection.close()
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"serve did not come up:\n{_tail(served.log)}")
        # Not listening yet: wait a moment on the process itself (it may exit).
        try:
            served.process.wait(timeout=0.05)
            raise RuntimeError(f"serve exited:\n{_tail(served.log)}")
        except subprocess.TimeoutExpired:
            pass


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def scrape(served: Served) -> dict[str, float]:
    """``/metrics`` summed per series name over its labels; and, for requests by
    status, ``pollama_requests_total:<status>``."""
    connection = http.client.HTTPConnection(served.host, served.port, timeout=30)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name, _, labels = series.partition("{")
        totals[name] = totals.get(name, 0.0) + float(value)
        if name == "pollama_requests_total" and 'status="' in labels:
            status = labels.split('status="')[1].split('"')[0]
            totals[f"{name}:{status}"] = totals.get(f"{name}:{status}", 0.0) + float(value)
    return totals


# -- resources ----------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    rss: int
    fds: int
    threads: int
    sockets: int
    """Of ``fds``: TCP sockets (client connections, the runner's)."""


@dataclass(frozen=True)
class Sample:
    label: str
    at: float
    """Seconds from the start of the load (negative before it)."""
    server: Usage
    runner: Usage | None
    """Summed over the runners (one, for one model); None when none ran."""
    runner_pids: tuple[int, ...]
    loadavg: float
    """The machine's 1-minute load average: other work competing for the CPUs."""


def _usage(process: psutil.Process) -> Usage:
    with process.oneshot():
        return Usage(
            rss=process.memory_info().rss,
            fds=process.num_fds(),
            threads=process.num_threads(),
            sockets=len(process.net_connections("tcp")),
        )


def _runners(server: psutil.Process) -> list[psutil.Process]:
    found = []
    for child in server.children(recursive=True):
        try:
            command = child.cmdline()
            # A runner: `-m pollama.runner` (or the CLI's `runner`) with a model; an idle
            # spare (no --model, not yet renamed pollama-runner) serves nothing yet.
            if "pollama.runner" in command or "runner" in command:
                if "--model" in command or child.name() == "pollama-runner":
                    found.append(child)
        except psutil.Error:
            continue  # exited between the listing and the read
    return found


def sample(served: Served, label: str, t0: float) -> Sample:
    server = psutil.Process(served.process.pid)
    runners = _runners(server)
    usages = [_usage(r) for r in runners]
    runner = (
        Usage(*(sum(getattr(u, f) for u in usages) for f in ("rss", "fds", "threads", "sockets")))
        if usages
        else None
    )
    pids = tuple(r.pid for r in runners)
    at = time.monotonic() - t0
    return Sample(label, at, _usage(server), runner, pids, os.getloadavg()[0])


def _until(served: Served, done: Callable[[], bool], timeout: float) -> bool:
    """Poll ``done`` every 50 ms, waiting on the server process meanwhile (so that its
    death ends the wait); False if it died or ``timeout`` passed first."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        try:
            served.process.wait(timeout=0.05)
            return False
        except subprocess.TimeoutExpired:
            pass
    return True


def _none_open_on(process: psutil.Process, port: int) -> bool:
    """Whether the process holds no connection on its local ``port`` (but listens)."""
    return not any(
        c.laddr and c.laddr.port == port and c.status != psutil.CONN_LISTEN
        for c in process.net_connections("tcp")
    )


def quiesce(served: Served, timeout: float = QUIET_TIMEOUT) -> bool:
    """Until the server holds no client connection (each is an fd, and a server closes
    its side a moment after the client); False if that took over ``timeout``."""
    server = psutil.Process(served.process.pid)
    return _until(served, functools.partial(_none_open_on, server, served.port), timeout)


def settle(served: Served, timeout: float = QUIET_TIMEOUT) -> bool:
    """Bring the server to the same quiet state before every sample, so that fds compare.

    Besides client connections (``quiesce``), the server keeps a pool of keep-alive
    connections to the runner for embeddings and the like: as many as recent
    concurrency needed, each an fd on both sides, and closed only once idle (by the
    runner, after its keep-alive timeout of 5 s) and the pool next used. So: wait
    until the runner has closed every idle one, send one embedding (the pool drops
    the closed ones and keeps the one it used), wait for quiet again. A connection
    the server leaked mid-request never goes idle: the wait times out, False.
    """
    if not quiesce(served, timeout):
        return False
    runners = _runners(psutil.Process(served.process.pid))
    for runner in runners:
        argv = runner.cmdline()
        port = int(argv[argv.index("--port") + 1])
        if not _until(served, functools.partial(_none_open_on, runner, port), timeout):
            return False
    embed = next(w for w in WORKLOADS if w.api == "embed")
    if request(served.host, served.port, embed, body_for(embed, random.Random(0))).result != OK:
        return False
    return quiesce(served, timeout)


class Monitor:
    """A thread that samples every ``interval`` seconds: the RSS timeline, the runner
    pids (a restart shows as a new pid), and a progress line."""

    def __init__(
        self,
        served: Served,
        t0: float,
        interval: float,
        outcomes: list[Outcome],
        progress: Callable[[str], None] | None,
    ) -> None:
        self.timeline: list[Sample] = []
        self.runner_pids: list[int] = []
        self._served, self._t0, self._interval = served, t0, interval
        self._outcomes, self._progress = outcomes, progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-monitor", daemon=True)
        self._thread.start()

    def note(self, taken: Sample) -> None:
        for pid in taken.runner_pids:
            if pid not in self.runner_pids:
                self.runner_pids.append(pid)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                taken = sample(self._served, "monitor", self._t0)
            except psutil.Error:
                continue
            self.timeline.append(taken)
            self.note(taken)
            if self._progress:
                done = list(self._outcomes)
                count = {r: sum(o.result == r for o in done) for r in (OK, FAILED, DISCONNECTED)}
                runner = f"{taken.runner.rss / MIB:.0f}" if taken.runner else "-"
                self._progress(
                    f"t={taken.at:.0f}s {count[OK]} completed, {count[FAILED]} failed, "
                    f"{count[DISCONNECTED]} disconnected; RSS server "
                    f"{taken.server.rss / MIB:.0f} MiB, runner {runner} MiB"
                )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


# -- the clients --------------------------------------------------------------


class Budget:
    """The requests all clients may still send (None: no limit but the deadline)."""

    def __init__(self, limit: int | None) -> None:
        self._left = limit
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._left is None:
                return True
            if self._left <= 0:
                return False
            self._left -= 1
            return True


class Gate:
    """Holds every client between two requests, so that resources are sampled with
    none in flight."""

    def __init__(self, clients: int) -> None:
        self._clients = clients
        self._cond = threading.Condition()
        self._held = False
        self._waiting = 0
        self._gone = 0
        self.all_gone = threading.Event()

    def checkpoint(self, timeout: float) -> None:
        """A client between requests: wait here while the gate is held."""
        with self._cond:
            if not self._held:
                return
            self._waiting += 1
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._held, timeout)
            self._waiting -= 1

    def leave(self) -> None:
        with self._cond:
            self._gone += 1
            self._cond.notify_all()
            if self._gone == self._clients:
                self.all_gone.set()

    def hold(self, timeout: float) -> bool:
        """Hold the gate and wait until every client waits at it or has left."""
        with self._cond:
            self._held = True
            return self._cond.wait_for(lambda: self._waiting + self._gone >= self._clients, timeout)

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()


@dataclass(frozen=True)
class SoakConfig:
    clients: int = 8
    seconds: float = 20 * 60
    max_requests: int | None = None
    parallel: int = 4
    warmup: float | None = None
    """Seconds before the warm-up sample; None: 10% of ``seconds``, at most 30."""
    disconnect_every: int = 10
    """Each client abandons every n-th request of its own on purpose."""
    seed: int = 0
    timeout: float = REQUEST_TIMEOUT
    monitor_interval: float = 10.0

    @property
    def warmup_seconds(self) -> float:
        return self.warmup if self.warmup is not None else min(0.1 * self.seconds, 30.0)


def client(
    index: int,
    config: SoakConfig,
    served: Served,
    t0: float,
    deadline: float,
    budget: Budget,
    gate: Gate,
    outcomes: list[Outcome],
) -> None:
    """Requests until the deadline or the budget: every workload once per round, the
    first round starting at a different workload for each client (so that a few
    requests each cover them all), later rounds in a seeded shuffled order. Every
    ``disconnect_every``-th request is abandoned on purpose, offset by client so
    that clients do not all leave at once."""
    rng = random.Random(config.seed * 1000 + index)
    start = index * len(WORKLOADS) // config.clients
    order = [*WORKLOADS[start:], *WORKLOADS[:start]]
    sent = 0
    try:
        while True:
            gate.checkpoint(2 * config.timeout + 4 * QUIET_TIMEOUT)  # outlasts hold + settle
            if time.monotonic() >= deadline or not budget.take():
                return
            if not order:
                order = list(WORKLOADS)
                rng.shuffle(order)
            workload = order.pop(0)
            leave = (sent + index) % config.disconnect_every == config.disconnect_every - 1
            sent += 1
            outcomes.append(
                request(
                    served.host,
                    served.port,
                    workload,
                    body_for(workload, rng),
                    leave_after=rng.uniform(0.02, 0.5) if leave else None,
                    timeout=config.timeout,
                    t0=t0,
                )
            )
    finally:
        gate.leave()


# -- the soak -----------------------------------------------------------------


@dataclass
class SoakResult:
    config: SoakConfig
    outcomes: list[Outcome]
    start: Sample
    warm: Sample
    end: Sample
    load_seconds: float
    """Wall time of the load phase, from the first request to the last client's end."""
    held_seconds: float
    """Of it, the time the clients were held for the warm-up sample."""
    quiet: bool
    """Whether every sample was taken in the same quiet state (``settle`` succeeded)."""
    restarts: int
    """``pollama_runner_restarts_total`` at the end."""
    runner_pids: list[int]
    """Every runner pid seen, in order: more than one means a runner was replaced."""
    served_after: bool
    """Whether a request of every kind succeeded after the soak."""
    waiting_after: float
    """``pollama_queue_depth`` + ``pollama_model_waiters`` with no client left: 0."""
    server_statuses: dict[str, int]
    """The server's own count of responses by status (499: the client had gone)."""
    timeline: list[Sample] = field(default_factory=list)

    def counts(self, workload: str | None = None) -> dict[str, int]:
        chosen = [o for o in self.outcomes if workload is None or o.workload == workload]
        return {r: sum(o.result == r for o in chosen) for r in (OK, FAILED, DISCONNECTED)}

    def latencies(self, workload: str | None = None) -> list[float]:
        return [
            o.seconds
            for o in self.outcomes
            if o.result == OK and (workload is None or o.workload == workload)
        ]

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.result == FAILED]

    @property
    def throughput(self) -> float:
        active = self.load_seconds - self.held_seconds
        return self.counts()[OK] / active if active > 0 else 0.0

    def checks(self) -> list[tuple[str, bool, str]]:
        """(what, passed, the figures): the soak's verdict, one line each."""
        failed = len(self.failures)
        result = [
            ("no failed request", failed == 0, f"{failed} failed"),
            (
                "no runner restart",
                self.restarts == 0 and len(self.runner_pids) <= 1,
                f"{self.restarts} restarts, runner pids {self.runner_pids}",
            ),
            (
                "serves after the soak, nothing waiting",
                self.served_after and self.waiting_after == 0,
                f"served {'yes' if self.served_after else 'no'}, {self.waiting_after:g} waiting",
            ),
            ("samples taken in the same quiet state (settle)", self.quiet, ""),
        ]
        for who in ("server", "runner"):
            warm, end = getattr(self.warm, who), getattr(self.end, who)
            if warm is None or end is None:
                result.append((f"{who} ran throughout", False, "no runner sampled"))
                continue
            growth = growth_percent(warm.rss, end.rss)
            result.append(
                (
                    f"{who} RSS growth ≤ {RSS_GROWTH_LIMIT:g}%",
                    growth <= RSS_GROWTH_LIMIT,
                    f"{growth:+.2f}%",
                )
            )
            for what in ("fds", "threads"):
                before, after = getattr(warm, what), getattr(end, what)
                result.append(
                    (
                        f"{who} {what} flat (≤ +{COUNT_TOLERANCE})",
                        after - before <= COUNT_TOLERANCE,
                        f"{before} → {after}",
                    )
                )
        return result

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.checks())

    def to_json(self) -> dict[str, Any]:
        workloads = {
            w.name: {**self.counts(w.name), **_percentiles(self.latencies(w.name))}
            for w in WORKLOADS
        }
        return {
            "config": asdict(self.config),
            "load_seconds": self.load_seconds,
            "held_seconds": self.held_seconds,
            "throughput_per_s": self.throughput,
            "total": {**self.counts(), **_percentiles(self.latencies())},
            "workloads": workloads,
            "samples": [asdict(s) for s in (self.start, self.warm, self.end)],
            "timeline": [asdict(s) for s in self.timeline],
            "restarts": self.restarts,
            "runner_pids": self.runner_pids,
            "served_after": self.served_after,
            "waiting_after": self.waiting_after,
            "server_statuses": self.server_statuses,
            "checks": [{"check": c, "passed": ok, "figures": f} for c, ok, f in self.checks()],
            "passed": self.passed,
            "failures": [asdict(o) for o in self.failures[:50]],
            "slowest": [asdict(o) for o in sorted(self.outcomes, key=lambda o: -o.seconds)[:20]],
            "outcomes": [asdict(o) for o in self.outcomes],
        }

    def table(self) -> str:
        """The report in markdown."""
        c = self.config
        total = self.counts()
        lat = _percentiles(self.latencies())
        lines = [
            f"## Soak: {c.clients} clients, {self.load_seconds / 60:.1f} min, "
            f"{c.parallel} slots per model",
            "",
            "| | |",
            "|---|---|",
            f"| clients / slots (OLLAMA_NUM_PARALLEL) | {c.clients} / {c.parallel} |",
            f"| load phase | {self.load_seconds:.1f} s (warm-up {c.warmup_seconds:.0f} s; "
            f"clients held {self.held_seconds:.1f} s for the warm-up sample) |",
            f"| requests | {sum(total.values())}: {total[OK]} completed, {total[FAILED]} failed, "
            f"{total[DISCONNECTED]} disconnected on purpose |",
            f"| throughput | {self.throughput:.2f} completed requests/s |",
            f"| latency p50 / p99 (completed) | {_s(lat['p50_s'])} / {_s(lat['p99_s'])} |",
            f"| runner restarts | {self.restarts} (metric); runner pids seen: "
            f"{', '.join(map(str, self.runner_pids)) or 'none'} |",
            f"| server's statuses | "
            f"{', '.join(f'{k}: {v}' for k, v in sorted(self.server_statuses.items()))} |",
            "",
            "| workload | completed | failed | disconnected | p50 | p99 |",
            "|---|--:|--:|--:|--:|--:|",
        ]
        for w in WORKLOADS:
            n, p = self.counts(w.name), _percentiles(self.latencies(w.name))
            lines.append(
                f"| {w.name} | {n[OK]} | {n[FAILED]} | {n[DISCONNECTED]} "
                f"| {_s(p['p50_s'])} | {_s(p['p99_s'])} |"
            )
        lines.append(
            f"| **all** | {total[OK]} | {total[FAILED]} | {total[DISCONNECTED]} "
            f"| {_s(lat['p50_s'])} | {_s(lat['p99_s'])} |"
        )
        lines += [
            "",
            f"| resource | start (t={self.start.at:.0f} s) | warm-up (t={self.warm.at:.0f} s) "
            f"| end (t={self.end.at:.0f} s) | end vs warm-up |",
            "|---|--:|--:|--:|--:|",
        ]
        for who in ("server", "runner"):
            usages = [getattr(s, who) for s in (self.start, self.warm, self.end)]
            rss = [f"{u.rss / MIB:.1f}" if u else "-" for u in usages]
            warm, end = usages[1], usages[2]
            change = f"{growth_percent(warm.rss, end.rss):+.2f}%" if warm and end else "-"
            lines.append(f"| {who} RSS (MiB) | {' | '.join(rss)} | {change} |")
            for what in ("fds", "sockets", "threads"):
                values = [str(getattr(u, what)) if u else "-" for u in usages]
                delta = f"{getattr(end, what) - getattr(warm, what):+d}" if warm and end else "-"
                label = f"{who} {what}" + (" (of the fds)" if what == "sockets" else "")
                lines.append(f"| {label} | {' | '.join(values)} | {delta} |")
        loads = " | ".join(f"{s.loadavg:.2f}" for s in (self.start, self.warm, self.end))
        lines.append(f"| machine load average (1 min) | {loads} | |")
        lines += ["", "| check | result | figures |", "|---|---|---|"]
        for check, ok, figures in self.checks():
            lines.append(f"| {check} | {'pass' if ok else '**FAIL**'} | {figures} |")
        for o in self.failures[:10]:
            lines.append(f"\n- failed {o.workload} at t={o.at:.1f} s: {o.error}")
        return "\n".join(lines)


def growth_percent(before: int, after: int) -> float:
    return 100.0 * (after - before) / before if before else 0.0


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_s": None, "p99_s": None}
    return {"p50_s": percentile(values, 50), "p99_s": percentile(values, 99)}


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f} s"


def run_soak(
    config: SoakConfig,
    home: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> SoakResult:
    """Start a server, soak it, sample it, stop it. ``home`` keeps the store and the
    server's log (a temporary directory if None)."""
    if home is None:
        with tempfile.TemporaryDirectory(prefix="pollama-soak-") as tmp:
            return run_soak(config, Path(tmp), progress)
    with serving(config.parallel, home) as served:
        _prime(served, config)
        quiet = settle(served)
        t0 = time.monotonic()
        start = sample(served, "start", t0)
        outcomes: list[Outcome] = []
        monitor = Monitor(served, t0, config.monitor_interval, outcomes, progress)
        monitor.note(start)
        deadline = t0 + config.seconds
        budget, gate = Budget(config.max_requests), Gate(config.clients)
        threads = [
            threading.Thread(
                target=client,
                args=(i, config, served, t0, deadline, budget, gate, outcomes),
                name=f"soak-client-{i}",
                daemon=True,
            )
            for i in range(config.clients)
        ]
        for thread in threads:
            thread.start()
        try:
            # Until the warm-up is over, or every client has already finished.
            gate.all_gone.wait(max(0.0, t0 + config.warmup_seconds - time.monotonic()))
            held = time.monotonic()
            try:
                quiet = gate.hold(config.timeout + 60) and quiet
                quiet = settle(served) and quiet
                warm = sample(served, "warm-up", t0)
            finally:
                gate.release()
            held_seconds = time.monotonic() - held
            if progress:
                progress(f"warm-up sample taken at t={warm.at:.0f}s (held {held_seconds:.1f}s)")
            for thread in threads:
                thread.join(max(1.0, deadline - time.monotonic()) + config.timeout + 60)
            load_seconds = time.monotonic() - t0
        finally:
            monitor.stop()
        quiet = settle(served) and quiet
        end = sample(served, "end", t0)
        for taken in (warm, end):
            monitor.note(taken)
        metrics = scrape(served)
        waiting = metrics.get("pollama_queue_depth", 0.0) + metrics.get(
            "pollama_model_waiters", 0.0
        )
        rng = random.Random(config.seed)
        after = _burst(served, [(w, body_for(w, rng, tokens=2)) for w in WORKLOADS])
        served_after = all(o.result == OK for o in after)
        statuses = {
            k.split(":", 1)[1]: int(v)
            for k, v in scrape(served).items()
            if k.startswith("pollama_requests_total:")
        }
        return SoakResult(
            config=config,
            outcomes=list(outcomes),
            start=start,
            warm=warm,
            end=end,
            load_seconds=load_seconds,
            held_seconds=held_seconds,
            quiet=quiet,
            restarts=int(metrics.get("pollama_runner_restarts_total", 0.0)),
            runner_pids=list(monitor.runner_pids),
            served_after=served_after,
            waiting_after=waiting,
            server_statuses=statuses,
            timeline=list(monitor.timeline),
        )


def _prime(served: Served, config: SoakConfig) -> None:
    """Before the start sample: one request (it imports and loads the model), then two
    bursts of requests at once, every workload among them (the first embedding makes
    the runner's embedding context), so that thread pools have grown to the size
    concurrent requests need (the server's default executor, which resolves model
    names, starts threads on demand up to its cap and never ends them)."""
    rng = random.Random(config.seed)
    first = WORKLOADS[0]
    body = body_for(first, rng, tokens=2)
    primed = [request(served.host, served.port, first, body, timeout=START_TIMEOUT)]
    for _ in range(2):
        chosen = [WORKLOADS[i % len(WORKLOADS)] for i in range(max(config.clients, len(WORKLOADS)))]
        primed += _burst(served, [(w, body_for(w, rng, tokens=2)) for w in chosen])
    for outcome in primed:
        if outcome.result != OK:
            raise RuntimeError(f"{outcome.workload} failed before the soak: {outcome.error}")


def _burst(served: Served, requests: list[tuple[Workload, dict[str, Any]]]) -> list[Outcome]:
    """The requests sent at the same moment, each from a thread of its own."""
    barrier = threading.Barrier(len(requests), timeout=START_TIMEOUT)
    done: list[Outcome] = []

    def one(workload: Workload, body: dict[str, Any]) -> None:
        barrier.wait()
        done.append(request(served.host, served.port, workload, body, timeout=START_TIMEOUT))

    threads = [threading.Thread(target=one, args=pair, daemon=True) for pair in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(2 * START_TIMEOUT)
    if len(done) != len(threads):
        raise RuntimeError("a request before the soak did not finish")
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--max-requests", type=int, default=None, help="budget over all clients")
    parser.add_argument("--parallel", type=int, default=4, help="OLLAMA_NUM_PARALLEL")
    parser.add_argument("--warmup", type=float, default=None, help="seconds (default: 10%%, ≤30)")
    parser.add_argument("--disconnect-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    config = SoakConfig(
        clients=args.clients,
        seconds=args.minutes * 60,
        max_requests=args.max_requests,
        parallel=args.parallel,
        warmup=args.warmup,
        disconnect_every=args.disconnect_every,
        seed=args.seed,
        monitor_interval=min(60.0, max(1.0, args.minutes * 60 / 40)),
    )

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = run_soak(config, progress=progress)
    print(result.table())
    if args.json:
        args.json.write_text(json.dumps(result.to_json(), indent=2))
    raise SystemExit(0 if result.passed else 1)


if __name__ == "__main__":
    main()
