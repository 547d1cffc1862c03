"""The estimate from the GGUF against what llama.cpp itself allocates for the demo model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pollama.demo import demo_model_path
from pollama.discover.types import SystemInfo
from pollama.ggufmeta import read_model
from pollama.llm.estimate import estimate_memory
from pollama.llm.options import FlashAttention, LoadOptions, resolve_load_options
from pollama.units import GiB

PROBE = Path(__file__).with_name("llama_probe.py")
SYSTEM = SystemInfo(total_memory=24 * GiB, free_memory=20 * GiB, free_swap=0, thread_count=2)


def llama_reports(num_ctx: int, parallel: int, batch: int, flash: FlashAttention, kv: str):
    flag = {FlashAttention.AUTO: -1, FlashAttention.DISABLED: 0, FlashAttention.ENABLED: 1}[flash]
    args = [str(demo_model_path()), str(num_ctx * parallel), str(parallel), str(batch)]
    out = subprocess.run(
        [sys.executable, str(PROBE), *args, str(flag), kv],
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
    assert estimate.cpu.graph == pytest.approx(measured["compute"], rel=0.05)
