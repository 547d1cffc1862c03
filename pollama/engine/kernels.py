"""llama.cpp's extra CPU buffer types, and the memory they cost.

With ``use_extra_bufts`` (llama.cpp's default) the CPU backend may keep a
weight the CPU multiplies in a buffer of its own, in the layout its fastest
kernels read: ``AMX`` (Intel AMX tiles; its packed rows can be larger than
the file's) or ``CPU_REPACK`` (rows interleaved for AVX2/AVX-512/NEON dot
products, the same size). The first type in the build's list that takes a
weight gets it. What that costs beyond the file's bytes, measured against
llama.cpp's own buffer sizes (``tests/test_estimate.py``):

- with mmap, the mapped file still spans the moved tensors, so each one is held
  twice: its packed size is extra;
- without mmap, the plain buffer no longer holds it: only AMX's padding is extra;
- a tied LM head (no ``output.weight``: the output multiplies by
  ``token_embd``) is a second tensor when it lands in an extra buffer, so its
  packed size is extra either way.

Only CPU-only loads use them: with a GPU in the load llama.cpp puts CPU
weights in the GPU library's pinned host buffer first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pollama.ggufmeta.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from pollama.ggufmeta.records import TensorInfo

_Q = GGMLQuantizationType

AMX = "AMX"
REPACK = "CPU_REPACK"

# Tensors that are never the weight of a matrix multiplication (looked up, convolved, added).
_NOT_MATMUL = ("token_embd.", "pos_embd.", "token_types.", "per_layer_token_embd.", ".ssm_conv1d.")

# AMX: type → (row alignment in elements, extra bytes per block in its packed rows).
_AMX_TYPES: dict[int, tuple[int, int]] = {
    _Q.Q4_0: (32, 0),
    _Q.Q4_1: (32, 0),
    _Q.Q8_0: (32, 4),  # a compensation int32 per block
    _Q.Q4_K: (256, 4),
    _Q.Q5_K: (256, 4),
    _Q.Q6_K: (256, 0),
    _Q.IQ4_XS: (256, 2),
    _Q.F16: (16, 0),
}
_AMX_ROWS = 32  # output rows must be a multiple of two tiles

# CPU_REPACK: type → the (compiled features, output-row multiple) that pick a repacking.
_REPACK_RULES: dict[int, tuple[tuple[frozenset[str], int], ...]] = {
    _Q.Q4_0: (
        (frozenset({"AVX2"}), 8),
        (frozenset({"NEON", "MATMUL_INT8"}), 4),
        (frozenset({"NEON", "DOTPROD"}), 4),
    ),
    _Q.Q4_K: (
        (frozenset({"AVX2"}), 8),
        (frozenset({"NEON", "MATMUL_INT8"}), 8),
        (frozenset({"NEON", "DOTPROD"}), 8),
    ),
    _Q.Q2_K: ((frozenset({"AVX512"}), 8),),
    _Q.Q5_K: ((frozenset({"NEON", "MATMUL_INT8"}), 8), (frozenset({"NEON", "DOTPROD"}), 8)),
    _Q.Q6_K: ((frozenset({"NEON", "MATMUL_INT8"}), 8), (frozenset({"NEON", "DOTPROD"}), 8)),
    _Q.Q8_0: ((frozenset({"NEON", "MATMUL_INT8"}), 4), (frozenset({"NEON", "DOTPROD"}), 4)),
    _Q.IQ4_NL: ((frozenset({"AVX2"}), 8), (frozenset({"NEON", "DOTPROD"}), 4)),
    _Q.MXFP4: ((frozenset({"AVX2"}), 8), (frozenset({"NEON", "DOTPROD"}), 4)),
}


@dataclass(frozen=True)
class ExtraBuffers:
    """Whether a load uses llama.cpp's extra CPU buffer types (``use_extra_bufts``), which
    ones the build has, and the compiled features that pick a repacking (both for the
    memory estimate; empty when unknown)."""

    on: bool = False
    types: tuple[str, ...] = ()
    cpu_features: frozenset[str] = frozenset()

    def describe(self) -> str:
        if not self.on:
            return "off"
        return "on (" + (", ".join(self.types) or "types unknown") + ")"

    def to_json(self) -> dict[str, Any]:
        return {"on": self.on, "types": list(self.types), "cpu_features": sorted(self.cpu_features)}

    @classmethod
    def from_json(cls, body: Mapping[str, Any] | None) -> ExtraBuffers:
        if not body:
            return cls()
        return cls(
            on=bool(body.get("on", False)),
            types=tuple(str(t) for t in body.get("types", ())),
            cpu_features=frozenset(str(f) for f in body.get("cpu_features", ())),
        )


PLAIN = ExtraBuffers()


def is_matmul_weight(tensor: TensorInfo) -> bool:
    return len(tensor.shape) in (2, 3) and not any(part in tensor.name for part in _NOT_MATMUL)


def extra_buffer_of(tensor: TensorInfo, extra: ExtraBuffers) -> str | None:
    """The extra buffer type llama.cpp puts a matmul weight in, or None (plain CPU)."""
    if not extra.on:
        return None
    for buffer in extra.types:
        if buffer == AMX and _amx_takes(tensor):
            return AMX
        if buffer == REPACK and _repack_takes(tensor, extra.cpu_features):
            return REPACK
    return None


def packed_size(tensor: TensorInfo, buffer: str) -> int:
    """Bytes the tensor takes in ``buffer``."""
    if buffer != AMX or tensor.ggml_type == _Q.F16:
        return tensor.n_bytes
    block, type_size = GGML_QUANT_SIZES[_Q(tensor.ggml_type)]
    _, extra_per_block = _AMX_TYPES[tensor.ggml_type]
    rows = tensor.n_elements // tensor.shape[0]
    return rows * (tensor.shape[0] // block) * (type_size + extra_per_block)


def extra_bytes(tensors: Sequence[TensorInfo], extra: ExtraBuffers, *, use_mmap: bool) -> int:
    """Bytes beyond the file's that these CPU-resident weights cost with ``extra``."""
    total = 0
    for tensor in tensors:
        if not is_matmul_weight(tensor):
            continue
        buffer = extra_buffer_of(tensor, extra)
        if buffer is not None:
            packed = packed_size(tensor, buffer)
            total += packed if use_mmap else packed - tensor.n_bytes
    return total


def tied_output_bytes(token_embd: TensorInfo | None, extra: ExtraBuffers) -> int:
    """The copy of ``token_embd`` a tied LM head gets when it lands in an extra buffer."""
    if token_embd is None:
        return 0
    buffer = extra_buffer_of(token_embd, extra)
    return packed_size(token_embd, buffer) if buffer is not None else 0


def _amx_takes(tensor: TensorInfo) -> bool:
    rule = _AMX_TYPES.get(tensor.ggml_type)
    if rule is None or len(tensor.shape) != 2:
        return False  # AMX serves plain matrix products only, not expert (3-D) weights
    alignment, _ = rule
    return tensor.shape[0] % alignment == 0 and tensor.shape[1] % _AMX_ROWS == 0


def _repack_takes(tensor: TensorInfo, features: frozenset[str]) -> bool:
    for needs, rows in _REPACK_RULES.get(tensor.ggml_type, ()):
        if needs <= features:
            return tensor.shape[1] % rows == 0
    return False
