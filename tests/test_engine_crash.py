"""The engine on this CPU, for real: the probe child, runners killed by SIGILL (through the
test-only hook ``POLLAMA_TEST_CRASH``, which sends the signal where the first decode would
run), the recovery, the explanation, and ``pollama info``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from serving import Server

from pollama.demo import demo_model_path
from pollama.devices.cpu import read_cpu
from pollama.engine.build import find_build
from pollama.engine.cpu_path import CpuPath, verdict_from_probe
from pollama.engine.kernels import ExtraBuffers, extra_buffer_of, is_matmul_weight
from pollama.engine.probe import run_probe
from pollama.engine.verdicts import ExtraPath, Verdict, VerdictStore, now
from pollama.ggufmeta import read_model
from pollama.settings import Settings

GREEDY = {"temperature": 0, "num_predict": 8}
CANNOT_RUN = "the llama.cpp build uses CPU instructions this machine cannot run"


def store_in(state: Path) -> VerdictStore:
    return VerdictStore(state, find_build().key, read_cpu().identity)


def crashing(tmp_path: Path, hook: str) -> dict[str, str]:
    """A server's environment: the runner dies by ``hook``, and its own state directory
    says the probe found both paths working, so the first load takes the extra buffer
    types whatever this CPU would really do with them (the hook kills the runner
    before any kernel runs)."""
    state = tmp_path / "state"
    session = CpuPath.for_settings(Settings.from_env()).verdict()
    info = session.info if session else None
    store_in(state).save(Verdict(ExtraPath.WORKS, "the probe passed (test)", info, now()))
    return {"POLLAMA_STATE_DIR": str(state), "POLLAMA_TEST_CRASH": hook}


def generate(server: Server, keep_alive: int | None = None) -> dict:
    body = {"model": "smollm2", "prompt": "Hi", "stream": False, "options": GREEDY}
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    response = server.post("/api/generate", body)
    return {"status": response.status_code, **response.json()}


def log_of(tmp: Path) -> str:
    return (tmp / "serve.log").read_text()


# -- the probe child ------------------------------------------------------------------------


@pytest.mark.llama
def test_the_probe_runs_this_builds_kernels_and_describes_it() -> None:
    result = run_probe()
    assert result.error == "" and result.info is not None
    assert result.info.version == metadata.version("llama-cpp-python")
    assert "CPU" in result.info.backends and result.info.system_info.startswith("CPU")
    # The plain path runs on any CPU this build can run on at all.
    assert result.plain is not None and "CPU" in result.plain
    if result.extra is not None:
        # The extra buffer types it used are ones the build has.
        assert set(result.extra_types_used) <= set(result.info.extra_buffers)


@pytest.mark.llama
@pytest.mark.parametrize(
    ("hook", "expected"),
    [("probe:SIGILL", ExtraPath.TRAPS), ("probe:SIGILL:always", ExtraPath.ENGINE_CRASHES)],
)
def test_a_probe_killed_by_sigill_says_which_path_did_it(hook, expected) -> None:
    result = run_probe(env={**os.environ, "POLLAMA_TEST_CRASH": hook})
    assert result.signal == signal.SIGILL and result.info is not None
    verdict = verdict_from_probe(result)
    assert verdict is not None and verdict.extra_path is expected


# -- a runner killed by SIGILL ------------------------------------------------------------


@pytest.mark.llama
def test_a_runner_killed_with_extra_buffers_is_recovered_and_remembered(tmp_path: Path) -> None:
    env = crashing(tmp_path, "runner:SIGILL")
    state = Path(env["POLLAMA_STATE_DIR"])
    server = Server(tmp_path, **env)
    try:
        first = generate(server, keep_alive=0)
        assert first["status"] == 200 and first["response"]
        log = log_of(tmp_path)
        # One crash, a warning that names it, and the verdict kept for the next load.
        assert log.count("terminated: signal: SIGILL") == 1
        assert "WARNING pollama.engine.cpu_path: runner pid=" in log
        assert "was killed by SIGILL while loading the model with the extra CPU" in log
        kept = store_in(state).load()
        assert kept is not None and kept.extra_path is ExtraPath.TRAPS
        # The model was unloaded (keep_alive 0): this load goes straight to the plain path.
        second = generate(server)
        assert second["status"] == 200 and second["response"] == first["response"]
        assert log_of(tmp_path).count("terminated: signal: SIGILL") == 1
    finally:
        server.stop()
    # A new server on this machine starts from the kept verdict.
    (tmp_path / "again").mkdir()
    server = Server(tmp_path / "again", **env)
    try:
        assert generate(server)["status"] == 200
        log = log_of(tmp_path / "again")
        assert "terminated: signal" not in log
        assert "path='off' why='auto: runner pid=" in log  # the start-up line says why
    finally:
        server.stop()


def runners_started(log: str) -> int:
    """Runners that loads used: started for the load, or the spare the load took."""
    return log.count("starting runner") + log.count(" takes model=")


@pytest.mark.llama
def test_a_crash_on_every_path_is_explained_and_not_repeated(tmp_path: Path) -> None:
    server = Server(tmp_path, **crashing(tmp_path, "runner:SIGILL:always"))
    try:
        failed = generate(server)
        assert failed["status"] == 500
        error = failed["error"]
        assert error.startswith(CANNOT_RUN), error
        assert "killed by SIGILL (illegal instruction) while loading the model;" in error
        assert 'rebuild it for this CPU with: CMAKE_ARGS="-DGGML_NATIVE=OFF' in error
        assert "pip install --no-cache-dir --force-reinstall" in error
        assert "signal: SIGILL" not in error
        started = runners_started(log_of(tmp_path))
        assert started == 2  # with the extra buffer types, then without
        # The next request is told the same at once, without another runner crashing.
        again = generate(server)
        assert again["status"] == 500 and again["error"].startswith(CANNOT_RUN)
        assert "was killed by SIGILL while loading the model on the plain path" in again["error"]
        assert runners_started(log_of(tmp_path)) == started
        # The OpenAI route answers in its own shape, with the same words.
        openai = server.post(
            "/v1/chat/completions",
            {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        )
        assert openai.status_code == 500
        assert openai.json()["error"]["message"].startswith(CANNOT_RUN)
    finally:
        server.stop()


@pytest.mark.llama
def test_a_runner_killed_mid_generation_by_sigill_is_explained(tmp_path: Path) -> None:
    # A runner that dies of SIGILL after its load (a kernel only a later batch runs).
    server = Server(tmp_path, POLLAMA_STATE_DIR=str(tmp_path / "state"))
    try:
        assert generate(server)["status"] == 200
        (pid,) = server.runner_pids()
        with server.client.stream(
            "POST",
            "/api/generate",
            json={"model": "smollm2", "prompt": "Count to 100", "options": {"num_predict": 500}},
        ) as response:
            lines = response.iter_lines()
            assert "response" in json.loads(next(lines))
            os.kill(pid, signal.SIGILL)
            last = json.loads(list(lines)[-1])
        assert last["error"].startswith(CANNOT_RUN) and "while generating" in last["error"]
        assert generate(server)["status"] == 200  # reloaded
    finally:
        server.stop()


# -- the same text either way ---------------------------------------------------------------


@pytest.mark.llama
def test_greedy_text_is_the_same_with_and_without_extra_buffers(tmp_path: Path) -> None:
    """The demo model's types (Q4_1, Q8_0) have no CPU_REPACK kernel on x86, so its greedy
    text must not depend on the path. (Types that are repacked run other kernels and may
    differ in the last digits: ``test_repacked_kernels_agree_with_the_plain_ones``.)"""
    verdict = CpuPath.for_settings(Settings.from_env()).verdict()
    if verdict is None or verdict.extra_path is not ExtraPath.WORKS or verdict.info is None:
        pytest.skip("the extra buffer types do not run on this CPU")
    info = verdict.info
    extra = ExtraBuffers(True, info.extra_buffers, frozenset(info.cpu_features))
    weights = [t for t in read_model(demo_model_path()).tensors if is_matmul_weight(t)]
    if any(extra_buffer_of(t, extra) for t in weights):
        pytest.skip("here the extra buffer types take the demo model's weights (AMX)")
    texts = []
    for setting in ("on", "off"):
        (tmp_path / setting).mkdir()
        server = Server(tmp_path / setting, POLLAMA_CPU_EXTRA_BUFFERS=setting)
        try:
            body = {
                "model": "smollm2",
                "prompt": "Why is the sky blue?",
                "stream": False,
                "options": {"temperature": 0, "num_predict": 32},
            }
            response = server.post("/api/generate", body)
            assert response.status_code == 200
            texts.append(response.json()["response"])
        finally:
            server.stop()
    assert texts[0] == texts[1] and texts[0]


# -- pollama info -----------------------------------------------------------------------------


def test_info_names_the_engine_the_cpu_and_the_path(tmp_path: Path) -> None:
    env = {**os.environ, "POLLAMA_STATE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "pollama", "info", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(done.stdout)
    assert report["engine"]["version"] == metadata.version("llama-cpp-python")
    assert report["engine"]["compiled_cpu_features"]  # from the build itself
    assert report["cpu"]["allows"] == read_cpu().simd()
    path = report["cpu_path"]
    assert path["setting"] == "auto" and isinstance(path["extra_buffers"], bool)
    assert Path(path["verdict_file"]).is_file()
    assert report["rebuild_for_this_cpu"].startswith('CMAKE_ARGS="-DGGML_NATIVE=OFF')
    text = subprocess.run(
        [sys.executable, "-m", "pollama", "info"],
        env={**env, "POLLAMA_CPU_EXTRA_BUFFERS": "off"},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert "extra CPU buffers     off (POLLAMA_CPU_EXTRA_BUFFERS=off)" in text
    version = subprocess.run(
        [sys.executable, "-m", "pollama", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert version.startswith("pollama version ") and "llama-cpp-python" in version


@pytest.mark.llama
def test_repacked_kernels_agree_with_the_plain_ones(q4_0_model: Path, tmp_path: Path) -> None:
    """Q4_0 is repacked (or AMX-packed): other kernels, other summation order, so not
    bit-identical; the next-token distribution must still be the same one."""
    verdict = CpuPath.for_settings(Settings.from_env()).verdict()
    if verdict is None or verdict.extra_path is not ExtraPath.WORKS:
        pytest.skip("the extra buffer types do not run on this CPU")
    logits, used = [], []
    for extra in (1, 0):
        out = tmp_path / f"logits-{extra}.npy"
        script = Path(__file__).with_name("kernel_probe.py")
        done = subprocess.run(
            [sys.executable, str(script), str(q4_0_model), str(extra), str(out)],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        used.append(json.loads(done.stdout)["buffers"])
        logits.append(np.load(out))
    on, off = logits
    assert used[1] == ["CPU"]
    if verdict.info and verdict.info.extra_buffers:
        assert set(used[0]) & set(verdict.info.extra_buffers)  # the weights really moved
    assert on.argmax() == off.argmax()
    assert float(on @ off / np.linalg.norm(on) / np.linalg.norm(off)) > 0.999
