"""The ``pollama`` client commands against a real ``pollama serve`` (and one it starts itself).

The CLI runs as a subprocess, ``python -m pollama ...``, with OLLAMA_HOST and
OLLAMA_MODELS pointing at the test server; the REPL is also driven in-process
with a list of lines, and once through a pseudo-terminal as a person would.
"""

from __future__ import annotations

import io
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from oci_registry import Registry
from serving import Server, free_port

from pollama.cli.client import Client
from pollama.cli.repl import Repl, Session
from pollama.demo import demo_model_path

pytestmark = pytest.mark.llama

SHORT = {"num_predict": 16, "temperature": 0}


class Cli:
    """Runs ``python -m pollama`` against one server's address and store."""

    def __init__(self, host: str, models: Path) -> None:
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "POLLAMA_GPUS"},
            "OLLAMA_HOST": host,
            "OLLAMA_MODELS": str(models),
        }

    def __call__(
        self, *args: str, stdin: str = "", timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pollama", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )

    def popen(self, *args: str, **kwargs: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "pollama", *args],
            env=self.env,
            **kwargs,  # type: ignore[call-overload]
        )


@pytest.fixture(scope="module")
def serve_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def server(serve_dir: Path) -> Iterator[Server]:
    running = Server(serve_dir)  # its store is serve_dir / "models"
    yield running
    running.stop()


@pytest.fixture(scope="module")
def cli(server: Server, serve_dir: Path) -> Cli:
    return Cli(f"127.0.0.1:{server.port}", serve_dir / "models")


@pytest.fixture(scope="module")
def short(server: Server) -> str:
    """A model whose answers are short and greedy (so one-shot runs are quick and bounded):
    the demo model with PARAMETERs, made through the API."""
    body = {"model": "short", "from": "smollm2", "parameters": SHORT, "stream": False}
    created = server.post("/api/create", body)
    assert created.status_code == 200, created.text
    return "short"


# -- run -------------------------------------------------------------------------------------


def test_run_one_shot_prints_an_answer(cli: Cli, short: str):
    result = cli("run", short, "What is 2 + 2? Answer with one number.")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and result.stdout.endswith("\n")


def test_run_reads_piped_stdin_before_the_prompt_words(cli: Cli, short: str):
    words = " ".join(f"word{i}" for i in range(60))
    result = cli("run", short, "Repeat the last word.", "--verbose", stdin=words)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    count = re.search(r"prompt eval count:\s+(\d+) token", result.stderr)
    assert count, result.stderr
    assert int(count.group(1)) > 60, "the piped text was not part of the prompt"
    assert re.search(r"eval rate:\s+[0-9.]+ tokens/s", result.stderr)


def test_run_unknown_model_says_not_found(cli: Cli):
    result = cli("run", "no-such-model", "hi")
    assert result.returncode == 1
    assert "Error: model 'no-such-model' not found" in result.stderr
    assert "pollama pull no-such-model" in result.stderr
    assert result.stdout == ""


# -- the chat session ------------------------------------------------------------------------


class Lines:
    """``read_line`` for the REPL: hands out lines, then EOF; can arm an interrupt."""

    def __init__(self, lines: list[str], out: InterruptingText) -> None:
        self.lines = list(lines)
        self.out = out

    def __call__(self, prompt: str) -> str:
        if not self.lines:
            raise EOFError
        line = self.lines.pop(0)
        if line == "<interrupt the next answer>":
            self.out.armed = True
            line = self.lines.pop(0)
        return line


class InterruptingText(io.StringIO):
    """Output that raises KeyboardInterrupt on its first write once armed: a Ctrl-C in
    the middle of an answer."""

    armed = False

    def write(self, text: str) -> int:
        if self.armed and text:
            self.armed = False
            raise KeyboardInterrupt
        return super().write(text)


Drive = Callable[[list[str]], tuple[Repl, str, str]]


@contextmanager
def repl_on(server: Server) -> Iterator[Drive]:
    """Runs REPL sessions (one Session, carried across calls) against ``server``."""
    client = Client(server.url)
    repl_session = Session(model="smollm2")
    out, err = InterruptingText(), io.StringIO()

    def drive(lines: list[str]) -> tuple[Repl, str, str]:
        repl = Repl(client, repl_session, read_line=Lines(lines, out), out=out, err=err, width=None)
        if not repl.info:
            repl.start()
        repl.run()
        return repl, out.getvalue(), err.getvalue()

    try:
        yield drive
    finally:
        client.close()


@pytest.fixture
def session(server: Server) -> Iterator[Drive]:
    with repl_on(server) as drive:
        yield drive


@pytest.fixture
def own_session(tmp_path: Path) -> Iterator[Drive]:
    """A session on a server of its own: an interrupted answer may keep that runner busy."""
    server = Server(tmp_path)
    try:
        with repl_on(server) as drive:
            yield drive
    finally:
        server.stop()


def test_repl_set_show_multiline_clear_bye(session: Drive):
    repl, out, err = session(
        [
            "/set parameter num_predict 8",
            "/set parameter temperature 0",
            "/set parameter stop <end> </end>",
            "/set system You are a terse assistant.",
            "/set verbose",
            "Hello",
            '"""Name two',
            'colours."""',
            "/show parameters",
            "/show system",
            "/show info",
        ]
    )
    assert "Set parameter 'num_predict' to '8'" in out
    assert "Set parameter 'stop' to '<end>, </end>'" in out
    assert "Set system message." in out
    assert repl.session.options == {
        "num_predict": 8,
        "temperature": 0.0,
        "stop": ["<end>", "</end>"],
    }
    user = [m["content"] for m in repl.session.history if m["role"] == "user"]
    assert user == ["Hello", "Name two\ncolours."]
    answers = [m["content"] for m in repl.session.history if m["role"] == "assistant"]
    assert len(answers) == 2 and all(answer.strip() for answer in answers)
    assert re.findall(r"eval count:\s+(\d+) token", err) and all(
        int(n) <= 8 for n in re.findall(r"^eval count:\s+(\d+) token", err, re.M)
    )
    assert re.search(r"User defined parameters:\nnum_predict\s+8\n", out)
    assert "You are a terse assistant." in out  # /show system: input is not echoed
    assert "architecture" in out and "llama" in out

    repl, out, _ = session(["/clear", "/bye", "never read"])
    assert "Cleared session context" in out
    assert repl.session.history == []
    assert repl.read_line.lines == ["never read"]  # type: ignore[attr-defined]


def test_repl_unknown_commands_and_help(session: Drive):
    _, out, _ = session(["/nope", "/?", "/set", "/show", "/set parameter nope 1"])
    assert "Unknown command '/nope'. Type /? for help" in out
    assert "/set            Set session variables" in out
    assert "/set parameter ...     Set a parameter" in out
    assert "/show info         Show details for this model" in out
    assert "Couldn't set parameter: unknown parameter 'nope'" in out


def test_repl_on_a_terminal(cli: Cli):
    """``pollama run MODEL`` on a terminal: the chat session, through a pseudo-terminal."""
    controller, terminal = pty.openpty()
    env = {**cli.env, "TERM": "dumb"}
    process = subprocess.Popen(
        [sys.executable, "-m", "pollama", "run", "smollm2"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env,
        close_fds=True,
    )
    os.close(terminal)
    typed = "/set parameter num_predict 4\nHi\n/show system\n/bye\n"
    output = b""
    try:
        os.write(controller, typed.encode())
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(timeout=30) == 0, output.decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
    text = output.decode(errors="replace")
    assert ">>> " in text
    assert "Set parameter 'num_predict' to '4'" in text
    assert "No system message was specified for this model." in text


# -- models ----------------------------------------------------------------------------------


def test_list_shows_the_model_after_a_run(cli: Cli):
    cli("run", "smollm2")  # no prompt, no terminal: loads the model (imports the demo)
    result = cli("list")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    (row,) = [r for r in rows if r.startswith("smollm2:latest")]
    name, digest, *rest = row.split()
    assert re.fullmatch(r"[0-9a-f]{12}", digest)
    assert " ".join(rest[:2]).endswith("MB") and row.endswith("ago")


def test_ps_and_stop(cli: Cli, server: Server):
    cli("run", "smollm2", "--keepalive", "10m")
    result = cli("ps")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    (row,) = [r for r in rows if r.startswith("smollm2:latest")]
    assert "100% CPU" in row and "minutes from now" in row

    for name in [r.split()[0] for r in rows]:  # other tests' models may be loaded too
        stopped = cli("stop", name)
        assert stopped.returncode == 0, stopped.stderr
    assert cli("ps").stdout.splitlines()[1:] == []
    assert server.runner_pids() == []
    again = cli("stop", "smollm2")
    assert again.returncode == 1 and "couldn't find model 'smollm2' to stop" in again.stderr


def test_show_summarises_the_model(cli: Cli, server: Server):
    result = cli("show", "smollm2")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^    architecture\s+llama$", result.stdout, re.M)
    assert re.search(r"^  Capabilities\n    completion", result.stdout, re.M)
    missing = cli("show", "no-such-model")
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_create_show_copy_remove(cli: Cli, server: Server, tmp_path: Path):
    gguf = demo_model_path()
    (tmp_path / "models").mkdir()
    link = tmp_path / "models" / "demo.gguf"
    link.symlink_to(gguf)
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(
        "FROM ./models/demo.gguf\n"
        "PARAMETER temperature 0.2\n"
        "PARAMETER num_predict 16\n"
        'SYSTEM """You are a pirate.\nSpeak like one."""\n'
    )
    created = cli("create", "mymodel", "-f", str(modelfile))
    assert created.returncode == 0, created.stderr
    assert "success" in created.stderr

    system = cli("show", "mymodel", "--system")
    assert system.returncode == 0 and system.stdout == "You are a pirate.\nSpeak like one.\n"
    parameters = cli("show", "mymodel", "--parameters")
    assert re.search(r"^num_predict\s+16$", parameters.stdout, re.M)
    both = cli("show", "mymodel", "--system", "--license")
    assert both.returncode == 2

    # A second create finds the blob already uploaded.
    again = cli("create", "mymodel2", "-f", str(modelfile))
    assert again.returncode == 0, again.stderr
    assert "uploading" not in again.stderr

    copied = cli("cp", "mymodel", "yourmodel")
    assert copied.returncode == 0 and "copied 'mymodel' to 'yourmodel'" in copied.stdout
    removed = cli("rm", "mymodel", "mymodel2")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.splitlines() == ["deleted 'mymodel'", "deleted 'mymodel2'"]
    names = [line.split()[0] for line in cli("list").stdout.splitlines()[1:]]
    assert "yourmodel:latest" in names and "mymodel:latest" not in names
    gone = cli("rm", "mymodel")
    assert gone.returncode == 1 and "not found" in gone.stderr


def test_create_with_a_missing_file_fails_before_the_server(cli: Cli, tmp_path: Path):
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM ./nowhere.gguf\n")
    result = cli("create", "x", "-f", str(modelfile))
    assert result.returncode == 1 and "no such file" in result.stderr
    bad = tmp_path / "Bad"
    bad.write_text("PARAMETER temperature hot\n")
    result = cli("create", "x", "-f", str(bad))
    assert result.returncode == 1 and result.stderr.startswith("Error: ")


def test_push_then_pull_through_a_registry(cli: Cli, server: Server, tmp_path: Path):
    (tmp_path / "registry").mkdir()
    (tmp_path / "second").mkdir()
    registry = Registry(tmp_path / "registry")
    second = Server(tmp_path / "second")
    try:
        name = f"{registry.host}/library/demo:v1"
        cli("run", "smollm2")  # the demo model is in the store once it has been used
        assert cli("cp", "smollm2", name).returncode == 0
        pushed = cli("push", name, "--insecure")
        assert pushed.returncode == 0, pushed.stderr
        assert "pushing manifest" in pushed.stderr and "success" in pushed.stderr

        other = Cli(f"127.0.0.1:{second.port}", tmp_path / "second" / "models")
        pulled = other("pull", name, "--insecure")
        assert pulled.returncode == 0, pulled.stderr
        assert "pulling manifest" in pulled.stderr and "success" in pulled.stderr
        assert [line.split()[0] for line in other("list").stdout.splitlines()[1:]] == [name]

        missing = other("pull", f"{registry.host}/library/nothing:v1", "--insecure")
        assert missing.returncode == 1 and missing.stderr.startswith("Error: ")
    finally:
        second.stop()
        registry.stop()


# -- interrupts ------------------------------------------------------------------------------


def test_run_interrupted_exits_130(tmp_path: Path):
    # Its own server: the interrupted answer may keep that runner busy a while.
    server = Server(tmp_path)
    cli = Cli(f"127.0.0.1:{server.port}", tmp_path / "models")
    process = cli.popen(
        "run",
        "smollm2",
        "Write a long story about a dragon who learns to sail.",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # As from a terminal: a test run started in the background (`cmd &`) inherits
        # SIGINT ignored, and Python then never raises KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout is not None
    try:
        assert process.stdout.read(1), "no output before the interrupt"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        assert process.stderr is not None
        process.stderr.close()
        server.stop()


def test_repl_ctrl_c_stops_an_answer_and_returns_to_the_prompt(own_session: Drive):
    repl, out, err = own_session(
        [
            "/set parameter num_predict 8",
            "<interrupt the next answer>",
            "Tell me a story.",
            "/show parameters",
        ]
    )
    assert repl.session.history == []  # the interrupted turn is forgotten
    assert "User defined parameters:" in out  # the session went on reading
    assert err == ""


# -- starting a server -----------------------------------------------------------------------


def test_a_command_starts_the_server_in_the_background(tmp_path: Path):
    port = free_port()
    cli = Cli(f"127.0.0.1:{port}", tmp_path / "models")
    first = cli("list")
    assert first.returncode == 0, first.stderr
    found = re.search(
        r"started pollama serve in the background \(pid (\d+)\); log: (.+)$", first.stderr, re.M
    )
    assert found, first.stderr
    pid, log = int(found.group(1)), Path(found.group(2))
    server = psutil.Process(pid)
    try:
        assert log == tmp_path / "logs" / "server.log" and log.is_file()
        assert first.stdout.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
        # The server stays: the next command finds it, and a model loads in it.
        second = cli("run", "smollm2")
        assert second.returncode == 0, second.stderr
        assert "started" not in second.stderr
        runners = [c for c in server.children(recursive=True) if "runner" in " ".join(c.cmdline())]
        assert runners
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    assert not any(r.is_running() and r.status() != psutil.STATUS_ZOMBIE for r in runners)


def test_run_with_no_server_starts_one_early_and_only_one(tmp_path: Path):
    # `run` starts the server before the command line imports (cli.launch), and the
    # command then adopts that process rather than starting a second.
    port = free_port()
    cli = Cli(f"127.0.0.1:{port}", tmp_path / "models")
    ran = cli("run", "smollm2")
    assert ran.returncode == 0, ran.stderr
    found = re.findall(r"started pollama serve in the background \(pid (\d+)\)", ran.stderr)
    assert len(found) == 1, ran.stderr
    servers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "serve" in (p.info["cmdline"] or [])
        and f"127.0.0.1:{port}" == _environ(p).get("OLLAMA_HOST")
    ]
    try:
        assert [p.pid for p in servers] == [int(found[0])]
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)


def _environ(process: psutil.Process) -> dict[str, str]:
    try:
        return dict(process.environ())
    except psutil.Error:
        return {}


def test_ps_and_stop_do_not_start_a_server(tmp_path: Path):
    cli = Cli(f"127.0.0.1:{free_port()}", tmp_path / "models")
    ps = cli("ps")
    assert ps.returncode == 0 and "no pollama server is running" in ps.stderr
    stop = cli("stop", "smollm2")
    assert stop.returncode == 1 and "no pollama server is running" in stop.stderr
    assert not (tmp_path / "logs").exists()
