"""LoRA adapter GGUFs for the demo model, written with the ``gguf`` package's writer.

llama.cpp's layout (``src/llama-adapter.cpp``): for a weight ``W`` of ggml shape
``[n_in, n_out]`` the adapter holds ``W.lora_a`` of ggml shape ``[n_in, rank]`` (numpy
``(rank, n_in)``) and ``W.lora_b`` of ggml shape ``[rank, n_out]`` (numpy
``(n_out, rank)``), and a layer computes ``W x + scale · (alpha / rank) · B (A x)``.
A and B are drawn from a fixed seed, so two specs that differ only in ``b_factor`` hold
the same A and a B multiplied exactly (a power of two keeps every float exact).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from pollama.demo import demo_model_path
from pollama.ggufmeta import read_model


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 16
    alpha: float = 16.0
    targets: tuple[str, ...] = ("attn_q", "attn_v")
    layers: tuple[int, ...] = tuple(range(30))
    zero_b: bool = False
    b_sigma: float = 0.05
    """Standard deviation of B's entries (A's rows are unit-variance over n_in)."""
    b_factor: float = 1.0
    seed: int = 1234
    architecture: str = "llama"
    wrong_shape: bool = False
    """A's input width one short of the model's: llama.cpp refuses the file."""


def write_lora(path: Path, spec: LoraSpec = LoraSpec(), base: Path | None = None) -> Path:
    """The adapter ``spec`` describes, for the demo model (or ``base``), at ``path``."""
    shapes = {t.name: t.shape for t in read_model(base or demo_model_path()).tensors}
    rng = np.random.default_rng(spec.seed)
    writer = gguf.GGUFWriter(path, spec.architecture)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", spec.alpha)
    for layer in spec.layers:
        for target in spec.targets:
            name = f"blk.{layer}.{target}.weight"
            n_in, n_out = shapes[name]
            a = rng.standard_normal((spec.rank, n_in)) / np.sqrt(n_in)
            b = rng.standard_normal((n_out, spec.rank)) * spec.b_sigma
            if spec.wrong_shape:
                a = a[:, :-1]
            b = np.zeros_like(b) if spec.zero_b else b * spec.b_factor
            writer.add_tensor(f"{name}.lora_a", a.astype(np.float32))
            writer.add_tensor(f"{name}.lora_b", b.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tensor_bytes(path: Path) -> int:
    """The bytes of the adapter's tensors (what llama.cpp allocates for them)."""
    return sum(t.n_bytes for t in read_model(path).tensors)
