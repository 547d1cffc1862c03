"""The quantizer child's protocol: ``python -m pollama.runner.quantize SRC DST TYPE``.

The child writes one JSON line on stdout per tensor llama.cpp has finished
(``{"tensor": "blk.0.attn_q.weight", "index": 3, "count": 272}``), its errors on
stderr, and exits 0 only when DST is a complete GGUF of TYPE. The types are
llama.cpp's ``LLAMA_FTYPE_MOSTLY_<TYPE>`` names, as Ollama spells them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

QUANTIZE_TYPES: tuple[str, ...] = ("Q4_0", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
"""What ``quantize`` accepts (upper-cased), each a llama_ftype of the same name."""

ALIASES = {"Q4_K": "Q4_K_M"}
"""Other spellings Ollama accepts for the same type."""

SOURCE_TYPES: tuple[str, ...] = ("F16", "BF16", "F32")
"""The file types a model may be quantized from: unquantized weights only."""


@dataclass(frozen=True)
class TensorDone:
    """llama.cpp has written tensor ``index`` (1-based) of ``count``."""

    tensor: str
    index: int
    count: int

    def to_line(self) -> str:
        return json.dumps({"tensor": self.tensor, "index": self.index, "count": self.count})

    @classmethod
    def from_line(cls, line: str | bytes) -> TensorDone | None:
        """The record a stdout line holds; None for anything else (a stray print)."""
        try:
            data: Any = json.loads(line)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        tensor, index, count = data.get("tensor"), data.get("index"), data.get("count")
        if not (isinstance(tensor, str) and isinstance(index, int) and isinstance(count, int)):
            return None
        return cls(tensor, index, count)
