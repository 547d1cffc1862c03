"""The small frozen records the GGUF reader produces, and the ggml type tables they use."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pollama.ggufmeta.constants import GGML_QUANT_SIZES, GGMLQuantizationType

# ggml type id -> (elements per block, bytes per block). Types missing here (removed or
# unknown to this gguf release) are rejected by the reader, as llama.cpp rejects them.
GGML_BLOCK_SIZES: dict[int, tuple[int, int]] = {
    int(t): sizes for t, sizes in GGML_QUANT_SIZES.items()
}

# GGML_MAX_DIMS in ggml.h: a tensor info with more dimensions is malformed.
GGML_MAX_DIMS = 4


def ggml_type_name(ggml_type: int) -> str:
    """``"Q4_1"`` for 3; ``"unknown(99)"`` for a type this gguf release does not know."""
    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"unknown({ggml_type})"


@dataclass(frozen=True)
class TruncatedArray:
    """Stands in for a metadata array longer than the reader's ``max_array_len``.

    The array was walked (so the file is known to hold it) but not decoded.
    """

    item_type: str  # GGUF value type name, lower case: "string", "int32", "array", ...
    length: int

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's header entry; its data is never read."""

    name: str
    shape: tuple[int, ...]  # ggml order: ne0 (the contiguous row length) first
    ggml_type: int
    offset: int  # absolute byte offset of the data in the file
    n_bytes: int

    @property
    def type_name(self) -> str:
        return ggml_type_name(self.ggml_type)

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class LayerGroup:
    """The tensors that belong to one block (``blk.3``) or one top-level part (``token_embd``)."""

    name: str
    tensors: tuple[TensorInfo, ...]

    @property
    def size(self) -> int:
        return sum(t.n_bytes for t in self.tensors)


def layer_group_name(tensor_name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``blk.3``; ``token_embd.weight`` -> ``token_embd``."""
    parts = tensor_name.split(".", 2)
    if parts[0] == "blk" and len(parts) > 2 and parts[1].isdigit():
        return f"blk.{parts[1]}"
    return parts[0]
