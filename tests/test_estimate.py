"""The estimate from the GGUF against what llama.cpp itself allocates for the demo model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
from gguf_files import write_gguf

from pollama.demo import demo_model_path
from pollama.devices.types import SystemInfo
from pollama.engine.cpu_path import CpuPath
from pollama.engine.kernels import PLAIN, ExtraBuffers
from pollama.ggufmeta import read_model
from pollama.memory.estimate import estimate_memory, kv_cache_per_layer
from pollama.options.load import FlashAttention, LoadOptions, resolve_load_options
from pollama.settings import Settings
from pollama.units import GiB

PROBE = Path(__file__).with_name("llama_probe.py")
SYSTEM = SystemInfo(total_memory=24 * GiB, free_memory=20 * GiB, free_swap=0, thread_count=2)


def llama_reports(
    num_ctx: int,
    parallel: int,
    batch: int,
    flash: FlashAttention,
    kv: str,
    *,
    model: Path | None = None,
    extra: bool = False,
    mmap: bool = True,
):
    flag = {FlashAttention.AUTO: -1, FlashAttention.DISABLED: 0, FlashAttention.ENABLED: 1}[flash]
    path = model or demo_model_path()
    args = [str(path), str(num_ctx * parallel), str(parallel), str(batch), str(flag), kv]
    out = subprocess.run(
        [sys.executable, str(PROBE), *args, str(int(extra)), str(int(mmap))],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.mark.llama
@pytest.mark.parametrize(
    ("num_ctx", "parallel", "batch", "flash", "kv"),
    [
        (4096, 1, 512, None, ""),
        (8192, 4, 512, None, ""),  # DESIGN.md's reference configuration
        (1000, 1, 512, None, ""),  # not a multiple of llama.cpp's cell padding
        (2048, 2, 256, False, ""),
        (4096, 2, 512, True, "q8_0"),
        (3000, 3, 128, True, "q4_0"),
    ],
)
def test_weights_kv_and_graph_match_llama_cpp(num_ctx, parallel, batch, flash, kv):
    model = read_model(demo_model_path())
    asked = LoadOptions(
        num_ctx=num_ctx, num_batch=batch, parallel=parallel, flash_attention=flash, kv_cache_type=kv
    )
    config = resolve_load_options(model, asked, SYSTEM)
    assert config.kv_cache_type == (kv or "f16")
    estimate = estimate_memory(model, config)
    measured = llama_reports(num_ctx, parallel, batch, config.flash_attention, config.kv_cache_type)

    weights = estimate.input_weights + estimate.cpu.layer_weights
    cache = estimate.cpu.layer_cache
    assert weights == pytest.approx(measured["model"], rel=0.01)
    assert cache == pytest.approx(measured["kv"], rel=0.01)
    # The graph is an estimate by design (the runner measures it); hold it close anyway.
    graph = measured["compute"] + measured["output"]
    if config.kv_cache_type == "f16":
        assert estimate.cpu.graph == pytest.approx(graph, rel=0.05)
    else:
        # Quantized caches need a smaller mask than we assume: stay on the safe side.
        assert graph <= estimate.cpu.graph <= 1.25 * graph


def this_engine() -> ExtraBuffers:
    """The extra buffer types this machine's llama.cpp build has (from the engine probe)."""
    verdict = CpuPath.for_settings(Settings.from_env()).verdict()
    assert verdict is not None and verdict.info is not None, "the engine probe gave no answer"
    return ExtraBuffers(True, verdict.info.extra_buffers, frozenset(verdict.info.cpu_features))


@pytest.mark.llama
@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("extra_on", [True, False])
def test_repacked_weight_copies_are_counted_when_the_path_is_on(q4_0_model, extra_on, mmap):
    # Q4_0 everywhere: the CPU_REPACK (and AMX) kernels take it, so with the extra buffer
    # types on llama.cpp keeps a second copy of the weights when the file is mapped, and
    # of the tied LM head either way. Loading runs no kernel, so this holds on any CPU.
    model = read_model(q4_0_model)
    extra = this_engine() if extra_on else PLAIN
    asked = LoadOptions(num_ctx=2048, use_mmap=mmap)
    config = resolve_load_options(model, asked, SYSTEM, extra_buffers=extra)
    estimate = estimate_memory(model, config)
    measured = llama_reports(
        2048, 1, 512, config.flash_attention, "f16", model=q4_0_model, extra=extra_on, mmap=mmap
    )
    weights = estimate.input_weights + estimate.cpu.layer_weights
    assert weights == pytest.approx(measured["model"], rel=0.01)
    file_bytes = sum(t.n_bytes for t in model.tensors)
    if extra_on and extra.types:
        assert weights > file_bytes  # the copies are there, and counted
    else:
        assert weights == file_bytes


def _config(model, **asked):
    return resolve_load_options(model, LoadOptions(**asked), SYSTEM)


def test_sliding_window_layers_hold_the_window_not_the_context(tmp_path):
    def kv(w: gguf.GGUFWriter) -> None:
        w.add_block_count(12)
        w.add_context_length(32768)
        w.add_embedding_length(640)
        w.add_head_count(4)
        w.add_head_count_kv(1)
        w.add_key_length(256)
        w.add_value_length(256)
        w.add_sliding_window(512)

    model = read_model(write_gguf(tmp_path / "gemma3.gguf", "gemma3", kv))
    config = _config(model, num_ctx=16384, num_batch=512, parallel=2)
    sizes = kv_cache_per_layer(model, config, swa_full=False)
    row = 256 * 1 * 2  # one head of 256 f16 values, for K and again for V
    global_layer = 2 * row * 16384 * 2
    # Per sequence: window + one batch (1024 cells, already a multiple of 256).
    local_layer = 2 * row * (512 + 512) * 2
    assert sizes == ([local_layer] * 5 + [global_layer]) * 2
    full = kv_cache_per_layer(model, config, swa_full=True)
    assert full == [global_layer] * 12


def test_recurrent_layers_hold_a_state_per_sequence(tmp_path):
    def kv(w: gguf.GGUFWriter) -> None:
        w.add_block_count(4)
        w.add_context_length(1 << 20)
        w.add_embedding_length(768)
        w.add_head_count(0)
        w.add_ssm_conv_kernel(4)
        w.add_ssm_inner_size(1536)
        w.add_ssm_state_size(16)
        w.add_ssm_time_step_rank(48)

    model = read_model(write_gguf(tmp_path / "mamba.gguf", "mamba", kv))
    small = kv_cache_per_layer(model, _config(model, num_ctx=2048, parallel=3), swa_full=False)
    large = kv_cache_per_layer(model, _config(model, num_ctx=65536, parallel=3), swa_full=False)
    per_sequence = ((4 - 1) * (1536 + 2 * 16) + 16 * 1536) * 4
    assert small == large == [per_sequence * 3] * 4


def test_grouped_query_heads_per_layer(tmp_path):
    def kv(w: gguf.GGUFWriter) -> None:
        w.add_block_count(3)
        w.add_context_length(4096)
        w.add_embedding_length(512)
        w.add_head_count(8)
        w.add_head_count_kv([2, 0, 8])

    model = read_model(write_gguf(tmp_path / "hybrid.gguf", "llama", kv))
    sizes = kv_cache_per_layer(model, _config(model, num_ctx=1000), swa_full=False)
    head_dim = 512 // 8
    cells = 1024  # 1000 padded to 256
    assert sizes == [2 * head_dim * h * 2 * cells for h in (2, 0, 8)]
