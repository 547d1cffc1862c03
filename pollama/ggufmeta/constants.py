"""The gguf package's constants (value, tensor and file types; block sizes) on their own.

``import gguf`` runs the package's ``__init__``, which imports its reader, writer,
numpy and yaml: 90 ms and 15 MiB of every server's and runner's start, for a few enums
and a table. Its ``constants`` module needs only the standard library, so it is loaded
by itself, under its own name: a later ``import gguf`` (the tests' writers) reuses it,
and the enums stay the same objects.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING


def _load() -> ModuleType:
    name = "gguf.constants"
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded
    package = importlib.util.find_spec("gguf")  # finds the package without running it
    if package is None or not package.submodule_search_locations:
        raise ImportError("the gguf package is not installed")
    path = Path(next(iter(package.submodule_search_locations))) / "constants.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, LlamaFileType
else:
    _gguf = _load()
    GGMLQuantizationType = _gguf.GGMLQuantizationType
    GGML_QUANT_SIZES = _gguf.GGML_QUANT_SIZES
    GGUFValueType = _gguf.GGUFValueType
    LlamaFileType = _gguf.LlamaFileType

__all__ = ["GGML_QUANT_SIZES", "GGMLQuantizationType", "GGUFValueType", "LlamaFileType"]
