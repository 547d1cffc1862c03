"""The CPU path's decisions: which weights llama.cpp repacks, what a probe proves, what is
kept, and how a crash is explained. Decision units, with the probe as an injected seam
(``tests/test_engine_probe.py`` runs the real one)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import gguf
import pytest

from pollama.devices.cpu import CpuInfo, read_cpu
from pollama.engine.build import EngineBuild
from pollama.engine.cpu_path import CpuPath, decide, verdict_from_probe
from pollama.engine.crash import crash_signal, explain_crash
from pollama.engine.info import EngineInfo
from pollama.engine.kernels import (
    AMX,
    PLAIN,
    REPACK,
    ExtraBuffers,
    extra_buffer_of,
    extra_bytes,
    packed_size,
    tied_output_bytes,
)
from pollama.engine.probe import ProbeResult, parse_probe_output
from pollama.engine.verdicts import ExtraPath, Verdict, VerdictStore
from pollama.errors import EngineUnusable
from pollama.ggufmeta.records import TensorInfo
from pollama.settings import Settings

Q = gguf.GGMLQuantizationType
X86 = frozenset({"AVX", "AVX2", "AVX512", "AVX512_VNNI"})
REPACK_ONLY = ExtraBuffers(True, (REPACK,), X86)
AMX_FIRST = ExtraBuffers(True, (AMX, REPACK), X86 | {"AMX_INT8"})
INFO = EngineInfo("0.3.36", "CPU : AVX2 = 1 |", ("AVX2",), (REPACK,))
CPU = CpuInfo("Test CPU", "x86_64", frozenset({"avx", "avx2", "fma", "f16c", "avx512f"}))
BUILD = EngineBuild("0.3.36", Path("/lib"), ("libggml-cpu.so",), "build-key")


def tensor(name: str, qtype: Q, cols: int, rows: int) -> TensorInfo:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return TensorInfo(name, (cols, rows), int(qtype), 0, rows * cols // block * size)


# -- which weights get an extra buffer, and what it costs ----------------------------------


def test_repack_takes_the_types_it_has_kernels_for_on_this_cpu() -> None:
    assert extra_buffer_of(tensor("blk.0.attn_q.weight", Q.Q4_0, 576, 576), REPACK_ONLY) == REPACK
    assert extra_buffer_of(tensor("blk.0.ffn_up.weight", Q.Q4_K, 512, 1536), REPACK_ONLY)
    # No x86 repacking of Q4_1 or Q8_0 (the demo model's types), nor of rows not in eights.
    assert extra_buffer_of(tensor("blk.0.attn_q.weight", Q.Q4_1, 576, 576), REPACK_ONLY) is None
    assert extra_buffer_of(tensor("blk.0.attn_q.weight", Q.Q8_0, 576, 576), REPACK_ONLY) is None
    assert extra_buffer_of(tensor("blk.0.attn_q.weight", Q.Q4_0, 576, 572), REPACK_ONLY) is None
    # Q2_K needs AVX-512; without AVX2, nothing.
    avx2 = ExtraBuffers(True, (REPACK,), frozenset({"AVX2"}))
    assert extra_buffer_of(tensor("blk.0.attn_k.weight", Q.Q2_K, 512, 256), avx2) is None
    assert extra_buffer_of(tensor("blk.0.attn_k.weight", Q.Q2_K, 512, 256), REPACK_ONLY)
    assert extra_buffer_of(tensor("blk.0.attn_q.weight", Q.Q4_0, 576, 576), PLAIN) is None


def test_amx_comes_first_and_pads_some_rows() -> None:
    q8 = tensor("blk.0.attn_v.weight", Q.Q8_0, 576, 192)
    assert extra_buffer_of(q8, AMX_FIRST) == AMX
    # One int32 per 32-value block beside each block's 34 bytes.
    assert packed_size(q8, AMX) == 192 * 18 * (34 + 4)
    q4 = tensor("blk.0.attn_q.weight", Q.Q4_0, 576, 576)
    assert packed_size(q4, AMX) == q4.n_bytes
    # AMX needs output rows in pairs of 16-row tiles; REPACK takes what it leaves.
    odd = tensor("blk.0.attn_q.weight", Q.Q4_0, 576, 584)
    assert extra_buffer_of(odd, AMX_FIRST) == REPACK


def test_copies_count_with_mmap_and_only_padding_without() -> None:
    weights = [
        tensor("blk.0.attn_q.weight", Q.Q4_0, 576, 576),
        tensor("blk.0.attn_v.weight", Q.Q8_0, 576, 192),
        TensorInfo("blk.0.attn_norm.weight", (576,), int(Q.F32), 0, 2304),
    ]
    q4, q8, _ = weights
    assert extra_bytes(weights, REPACK_ONLY, use_mmap=True) == q4.n_bytes
    assert extra_bytes(weights, REPACK_ONLY, use_mmap=False) == 0
    amx_q8 = packed_size(q8, AMX)
    assert extra_bytes(weights, AMX_FIRST, use_mmap=True) == q4.n_bytes + amx_q8
    assert extra_bytes(weights, AMX_FIRST, use_mmap=False) == amx_q8 - q8.n_bytes
    assert extra_bytes(weights, PLAIN, use_mmap=True) == 0


def test_a_tied_head_is_copied_when_its_type_is_repacked() -> None:
    embd = tensor("token_embd.weight", Q.Q4_0, 576, 49152)
    assert tied_output_bytes(embd, REPACK_ONLY) == embd.n_bytes
    assert tied_output_bytes(tensor("token_embd.weight", Q.Q8_0, 576, 49152), REPACK_ONLY) == 0
    # The lookup table itself is never a matmul weight.
    assert extra_bytes([embd], REPACK_ONLY, use_mmap=True) == 0


# -- what a probe proves ---------------------------------------------------------------------


def probe_lines(*paths: str) -> str:
    lines = [json.dumps({"info": INFO.to_json()})]
    lines += [json.dumps({"path": p, "buffers": ["CPU", REPACK]}) for p in paths]
    return "\n".join(lines) + "\n"


def test_probe_output_says_how_far_the_child_got() -> None:
    both = parse_probe_output(probe_lines("plain", "extra"), 0)
    assert both.info == INFO and both.extra_types_used == [REPACK]
    assert verdict_from_probe(both).extra_path is ExtraPath.WORKS  # type: ignore[union-attr]
    trapped = parse_probe_output(probe_lines("plain"), -signal.SIGILL)
    verdict = verdict_from_probe(trapped)
    assert verdict is not None and verdict.extra_path is ExtraPath.TRAPS
    assert "SIGILL" in verdict.reason and verdict.info == INFO
    dead = parse_probe_output(probe_lines(), -signal.SIGILL)
    assert verdict_from_probe(dead).extra_path is ExtraPath.ENGINE_CRASHES  # type: ignore[union-attr]
    # A failure of its own (an exception, not a signal) proves nothing about the CPU.
    broken = parse_probe_output(probe_lines("plain"), 1, "Traceback...\nImportError: no")
    assert broken.error == "exit status 1: ImportError: no"
    assert verdict_from_probe(broken) is None
    # Lines that are not the probe's are ignored.
    noisy = parse_probe_output("hello\n[1, 2]\n" + probe_lines("plain", "extra"), 0)
    assert noisy.extra is not None


# -- the decision -------------------------------------------------------------------------


def verdict(path: ExtraPath) -> Verdict:
    return Verdict(path, f"because {path.value}", INFO, "2026-12-05T00:00:00+00:00")


def test_decide_follows_the_verdict_in_auto_and_the_setting_otherwise() -> None:
    on = decide("auto", verdict(ExtraPath.WORKS), fix="rebuild")
    assert on.extra == ExtraBuffers(True, (REPACK,), frozenset({"AVX2"}))
    assert "because works" in on.why
    assert decide("auto", verdict(ExtraPath.TRAPS), fix="rebuild").extra == PLAIN
    assert decide("auto", None, fix="rebuild").extra == PLAIN
    assert decide("off", verdict(ExtraPath.WORKS), fix="rebuild").extra == PLAIN
    assert decide("on", verdict(ExtraPath.TRAPS), fix="rebuild").extra.on
    with pytest.raises(EngineUnusable, match="cannot run.*rebuild it for this CPU with: rebuild"):
        decide("off", verdict(ExtraPath.ENGINE_CRASHES), fix="rebuild")


class Probe:
    def __init__(self, result: ProbeResult) -> None:
        self.result = result
        self.runs = 0

    def __call__(self) -> ProbeResult:
        self.runs += 1
        return self.result


def make_path(tmp_path: Path, probe: Probe, mode: str = "auto") -> CpuPath:
    store = VerdictStore(tmp_path, BUILD.key, CPU.identity)
    return CpuPath(mode, store, probe=probe, build=BUILD, cpu=CPU)


def test_the_probe_runs_once_per_build_and_cpu_and_is_kept(tmp_path: Path) -> None:
    probe = Probe(parse_probe_output(probe_lines("plain", "extra"), 0))
    path = make_path(tmp_path, probe)
    assert path.decide().extra.on and path.decide().extra.on
    assert probe.runs == 1
    assert path.store is not None and path.store.path.parent == tmp_path / "engine"
    # Another server on the same machine reads the verdict instead of probing again.
    again = Probe(probe.result)
    assert make_path(tmp_path, again).decide().extra.on and again.runs == 0
    # Another build (or CPU) has its own verdict.
    other = CpuPath(
        "auto",
        VerdictStore(tmp_path, "another-build", CPU.identity),
        probe=again,
        build=BUILD,
        cpu=CPU,
    )
    other.decide()
    assert again.runs == 1


def test_off_never_probes_and_a_failed_probe_is_not_kept(tmp_path: Path) -> None:
    probe = Probe(ProbeResult(None, None, None, error="no answer in 120 s"))
    assert make_path(tmp_path, probe, "off").decide().extra == PLAIN and probe.runs == 0
    path = make_path(tmp_path, probe)
    assert path.decide().extra == PLAIN and probe.runs == 1
    assert path.store is not None and not path.store.path.exists()


def test_a_runner_killed_with_extra_buffers_turns_them_off(tmp_path: Path) -> None:
    path = make_path(tmp_path, Probe(parse_probe_output(probe_lines("plain", "extra"), 0)))
    assert path.decide().extra.on
    assert path.record_crash(signal.SIGILL, extra_on=True, during_load=True, pid=42)
    assert path.decide().extra == PLAIN
    kept = make_path(tmp_path, Probe(ProbeResult(None, None, None, error="unused"))).known
    assert kept is not None and kept.extra_path is ExtraPath.TRAPS
    assert "pid=42 was killed by SIGILL while loading the model" in kept.reason
    assert kept.info == INFO  # what the probe learnt about the build is kept


def test_what_a_crash_does_not_prove_is_not_kept(tmp_path: Path) -> None:
    path = make_path(tmp_path, Probe(parse_probe_output(probe_lines("plain", "extra"), 0)))
    path.decide()
    # A segfault while generating may be a bug anywhere: no verdict from it.
    assert not path.record_crash(signal.SIGSEGV, extra_on=True, during_load=False, pid=1)
    assert not path.record_crash(signal.SIGSEGV, extra_on=False, during_load=True, pid=1)
    assert path.decide().extra.on
    # With the setting forcing them on, the verdict is kept but nothing changes.
    forced = make_path(tmp_path / "on", Probe(parse_probe_output(probe_lines("plain"), 0)), "on")
    assert not forced.record_crash(signal.SIGILL, extra_on=True, during_load=True, pid=1)


def test_sigill_on_the_plain_path_fails_every_later_load_at_once(tmp_path: Path) -> None:
    path = make_path(tmp_path, Probe(parse_probe_output(probe_lines("plain", "extra"), 0)))
    path.decide()
    assert path.record_crash(signal.SIGILL, extra_on=True, during_load=True, pid=1)
    # While generating, after a warm-up that ran: one kernel, not every load, is at fault.
    assert not path.record_crash(signal.SIGILL, extra_on=False, during_load=False, pid=3)
    assert path.decide().extra == PLAIN
    assert not path.record_crash(signal.SIGILL, extra_on=False, during_load=True, pid=2)
    with pytest.raises(EngineUnusable, match="pid=2 was killed by SIGILL.*on the plain path"):
        path.decide()


def test_an_unreadable_verdict_is_probed_again(tmp_path: Path) -> None:
    probe = Probe(parse_probe_output(probe_lines("plain", "extra"), 0))
    path = make_path(tmp_path, probe)
    assert path.store is not None
    path.store.path.parent.mkdir(parents=True)
    path.store.path.write_text("{not json")
    assert make_path(tmp_path, probe).decide().extra.on and probe.runs == 1
    assert json.loads(path.store.path.read_text())["extra_path"] == "works"


# -- crash messages, the CPU, the settings ----------------------------------------------------


def test_a_crash_is_explained_with_the_rebuild_for_this_cpu() -> None:
    message = explain_crash(
        signal.SIGILL,
        "while loading the model",
        cmake_args=CPU.portable_cmake_args(),
        version="0.3.36",
    )
    assert message.startswith("the llama.cpp build uses CPU instructions this machine cannot run")
    assert "killed by SIGILL (illegal instruction) while loading the model" in message
    assert (
        'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON '
        '-DGGML_F16C=ON -DGGML_AVX512=ON" pip install --no-cache-dir --force-reinstall '
        "--no-deps llama-cpp-python==0.3.36"
    ) in message
    segv = explain_crash(signal.SIGSEGV, "while generating", cmake_args="-X", version="")
    assert "crashed: the runner was killed by SIGSEGV (segmentation fault) while generating" in segv
    assert crash_signal(-signal.SIGILL) == signal.SIGILL
    assert crash_signal(-signal.SIGKILL) is None and crash_signal(1) is None


def test_cpuinfo_flags_and_identity(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu pni avx avx2 avx512f\n\n"
        "processor\t: 1\nmodel name\t: Some Xeon\nflags\t\t: fpu pni avx avx2 avx512f\n"
    )
    cpu = read_cpu(cpuinfo)
    assert cpu.model == "Some Xeon" and cpu.simd() == ["sse3", "avx", "avx2", "avx512f"]
    assert "GGML_AMX" not in cpu.portable_cmake_args()
    moved = CpuInfo(cpu.model, cpu.machine, cpu.flags | {"amx_tile"}, True)
    assert moved.identity != cpu.identity
    assert read_cpu(tmp_path / "missing").model  # nothing readable is not an error


def test_settings_for_the_cpu_path(tmp_path: Path) -> None:
    assert Settings.from_env({}).cpu_extra_buffers == "auto"
    assert Settings.from_env({"POLLAMA_CPU_EXTRA_BUFFERS": "OFF"}).cpu_extra_buffers == "off"
    assert Settings.from_env({"POLLAMA_CPU_EXTRA_BUFFERS": "1"}).cpu_extra_buffers == "on"
    assert Settings.from_env({"POLLAMA_CPU_EXTRA_BUFFERS": "maybe"}).cpu_extra_buffers == "auto"
    models = tmp_path / "store" / "models"
    assert Settings.from_env({"OLLAMA_MODELS": str(models)}).state_path == models.parent
    state = Settings.from_env({"OLLAMA_MODELS": str(models), "POLLAMA_STATE_DIR": "/srv/s"})
    assert state.state_path == Path("/srv/s")
