"""Small real GGUF files for tests, written by the gguf package's own writer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np


def write_gguf(
    path: Path,
    arch: str,
    kv: Callable[[gguf.GGUFWriter], None] = lambda w: None,
    tensors: dict[str, np.ndarray] | None = None,
) -> Path:
    """A small real GGUF written by the gguf package's own writer."""
    writer = gguf.GGUFWriter(path, arch)
    kv(writer)
    for name, data in (tensors or {"token_embd.weight": np.zeros((4, 8), np.float32)}).items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
