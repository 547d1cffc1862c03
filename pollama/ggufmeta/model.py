"""GGUFModel: a parsed GGUF header, with typed accessors for the hyperparameters pollama uses.

Accessors validate lazily: a key that is missing or of the wrong type raises
InvalidModelFile naming the file and the key, never KeyError or TypeError.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NoReturn

from pollama.errors import InvalidModelFile
from pollama.ggufmeta.constants import LlamaFileType
from pollama.ggufmeta.records import LayerGroup, TensorInfo, TruncatedArray, layer_group_name
from pollama.units import format_parameter_count

# llama.cpp stops at 512 layers (LLAMA_MAX_LAYERS); a far larger count is a corrupt header,
# and refusing it keeps per-layer tuples from growing with a lying field.
MAX_BLOCK_COUNT = 4096
RANK_POOLING = 4
"""llama.cpp's ``LLAMA_POOLING_TYPE_RANK``: the pooled output is a relevance score."""

# (period, dense_first) of llama.cpp's hparams.set_swa_pattern() per architecture, used when
# a file sets a sliding window but no attention.sliding_window_pattern. With period N, layer
# il slides when il % N < N - 1 (the full-attention layer ends each period), or, dense-first,
# when il % N != 0. A period of 0 makes every layer slide.
_SWA_DEFAULTS: dict[str, tuple[int, bool]] = {
    "gemma2": (2, False),
    "gemma3": (6, False),
    "gemma-embedding": (6, False),
    "gemma3n": (5, False),
    "cohere2": (4, False),
    "gpt-oss": (2, False),
    "exaone4": (4, False),
    "llama4": (4, False),
    "smallthinker": (4, True),
}


def _describe(value: Any) -> str:
    if isinstance(value, TruncatedArray):
        return f"an array of {value.length} {value.item_type}"
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _file_type_name(code: int) -> str:
    """Ollama's names: LlamaFileType without its MOSTLY_/ALL_ prefix; 15 -> ``Q4_K_M``."""
    try:
        name = LlamaFileType(code).name
    except ValueError:
        return "unknown"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


@dataclass(frozen=True, eq=False)
class GGUFModel:
    """A GGUF file's header: metadata and tensor infos (no tensor data)."""

    path: Path
    version: int
    file_size: int
    data_offset: int  # where the tensor data section starts
    metadata: Mapping[str, Any]
    tensors: tuple[TensorInfo, ...]

    def __post_init__(self) -> None:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str) or not arch:
            if arch is None:
                self._fail("missing required key general.architecture")
            self._fail(f"general.architecture should be a non-empty string, not {_describe(arch)}")

    def _fail(self, problem: str) -> NoReturn:
        raise InvalidModelFile(str(self.path), problem)

    # -- raw lookups ---------------------------------------------------------------------

    @property
    def architecture(self) -> str:
        return str(self.metadata["general.architecture"])

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def arch_get(self, suffix: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{suffix}", default)

    def _uint(self, key: str, default: int | None = None) -> int:
        """A non-negative integer value; ``default`` None makes the key required."""
        value = self.metadata.get(key)
        if value is None:
            if default is None:
                self._fail(f"missing required key {key}")
            return default
        if not _is_uint(value):
            self._fail(f"{key} should be a non-negative integer, not {_describe(value)}")
        return int(value)

    def _arch_uint(self, suffix: str, default: int | None = None) -> int:
        return self._uint(f"{self.architecture}.{suffix}", default)

    @cached_property
    def _checked_per_layer(self) -> dict[str, int | tuple[int, ...] | None]:
        # Callers ask per layer in a loop; validate each key's array once.
        return {}

    def _scalar_or_layers(self, suffix: str) -> int | tuple[int, ...] | None:
        """A hyperparameter stored either once or once per block; None when absent."""
        key = f"{self.architecture}.{suffix}"
        cache = self._checked_per_layer
        if key in cache:
            return cache[key]
        value = self.metadata.get(key)
        if isinstance(value, list) and all(_is_uint(v) for v in value):
            if len(value) != self.block_count:
                self._fail(f"{key} has {len(value)} entries for {self.block_count} blocks")
            value = tuple(value)
        elif value is not None and not _is_uint(value):
            self._fail(
                f"{key} should be an integer or one integer per block, not {_describe(value)}"
            )
        cache[key] = value
        return value

    @staticmethod
    def _at(value: int | tuple[int, ...], layer: int) -> int:
        if isinstance(value, int):
            return value
        if not 0 <= layer < len(value):
            raise IndexError(f"layer {layer} out of range for {len(value)} blocks")
        return value[layer]

    @staticmethod
    def _max(value: int | tuple[int, ...] | None) -> int:
        if value is None:
            return 0
        return value if isinstance(value, int) else max(value, default=0)

    # -- sizes of the network ------------------------------------------------------------

    @cached_property
    def block_count(self) -> int:
        count = self._arch_uint("block_count")
        if count > MAX_BLOCK_COUNT:
            self._fail(f"{self.architecture}.block_count {count} exceeds {MAX_BLOCK_COUNT}")
        return count

    @property
    def context_length(self) -> int:
        return self._arch_uint("context_length", 0)

    @property
    def embedding_length(self) -> int:
        return self._arch_uint("embedding_length", 0)

    @property
    def feed_forward_length(self) -> int:
        return self._max(self._scalar_or_layers("feed_forward_length"))

    def head_count(self, layer: int) -> int:
        """Attention heads of one block; a scalar key applies to every block."""
        value = self._scalar_or_layers("attention.head_count")
        return 0 if value is None else self._at(value, layer)

    def head_count_kv(self, layer: int) -> int:
        """Key/value heads of one block; defaults to head_count (no grouped-query attention)."""
        value = self._scalar_or_layers("attention.head_count_kv")
        return self.head_count(layer) if value is None else self._at(value, layer)

    @property
    def head_count_max(self) -> int:
        return self._max(self._scalar_or_layers("attention.head_count"))

    @property
    def head_count_kv_max(self) -> int:
        value = self._scalar_or_layers("attention.head_count_kv")
        return self.head_count_max if value is None else self._max(value)

    @property
    def head_count_kv_min(self) -> int:
        """Fewest key/value heads of any attention block (blocks with none, e.g. recurrent
        ones in hybrid models, are skipped); at least 1."""
        value = self._scalar_or_layers("attention.head_count_kv")
        if value is None:
            value = self._scalar_or_layers("attention.head_count")
        if value is None:
            return 1
        counts = (value,) if isinstance(value, int) else value
        return max(1, min((c for c in counts if c > 0), default=1))

    def _default_head_length(self) -> int:
        heads = self.head_count_max
        return self.embedding_length // heads if heads else 0

    @property
    def key_length(self) -> int:
        return self._arch_uint("attention.key_length", self._default_head_length())

    @property
    def value_length(self) -> int:
        return self._arch_uint("attention.value_length", self._default_head_length())

    @property
    def vocab_size(self) -> int:
        if f"{self.architecture}.vocab_size" in self.metadata:
            return self._arch_uint("vocab_size")
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if isinstance(tokens, list | TruncatedArray):
            return len(tokens)
        if tokens is not None:
            self._fail(f"tokenizer.ggml.tokens should be an array, not {_describe(tokens)}")
        embd = self._tensor("token_embd.weight")
        return embd.shape[1] if embd is not None and len(embd.shape) >= 2 else 0

    # -- attention flavour ---------------------------------------------------------------

    @property
    def pooling_type(self) -> int | None:
        if f"{self.architecture}.pooling_type" not in self.metadata:
            return None
        return self._arch_uint("pooling_type")

    @property
    def is_embedding_model(self) -> bool:
        # Ollama's rule: an embedding model is one that says how to pool its outputs.
        return f"{self.architecture}.pooling_type" in self.metadata

    @property
    def is_reranker(self) -> bool:
        """A model whose pooling ranks: one (query, document) pair in, a score out."""
        return self.pooling_type == RANK_POOLING

    @property
    def sliding_window(self) -> int:
        return self._arch_uint("attention.sliding_window", 0)

    def swa_layers(self) -> tuple[bool, ...]:
        """Per block, whether it uses sliding-window attention (llama.cpp's layer pattern)."""
        n = self.block_count
        if self.sliding_window == 0:
            return (False,) * n
        key = f"{self.architecture}.attention.sliding_window_pattern"
        period, dense_first = _SWA_DEFAULTS.get(self.architecture, (None, False))
        pattern = self.metadata.get(key)
        if isinstance(pattern, list) and all(isinstance(p, bool | int) for p in pattern):
            if len(pattern) != n:
                self._fail(f"{key} has {len(pattern)} entries for {n} blocks")
            return tuple(bool(p) for p in pattern)
        if _is_uint(pattern):
            period = pattern
        elif pattern is not None:
            self._fail(f"{key} should be a period or one bool per block, not {_describe(pattern)}")
        if period is None:
            # llama.cpp only windows architectures it knows; elsewhere every layer is full.
            return (False,) * n
        if period == 0:
            return (True,) * n
        if dense_first:
            return tuple(il % period != 0 for il in range(n))
        return tuple(il % period < period - 1 for il in range(n))

    # -- state-space (Mamba-style) blocks ------------------------------------------------

    @property
    def ssm_conv_kernel(self) -> int:
        return self._arch_uint("ssm.conv_kernel", 0)

    @property
    def ssm_inner_size(self) -> int:
        return self._arch_uint("ssm.inner_size", 0)

    @property
    def ssm_state_size(self) -> int:
        return self._arch_uint("ssm.state_size", 0)

    @property
    def ssm_group_count(self) -> int:
        return self._arch_uint("ssm.group_count", 0)

    # -- weights -------------------------------------------------------------------------

    def _tensor(self, name: str) -> TensorInfo | None:
        return next((t for t in self.tensors if t.name == name), None)

    @property
    def file_type(self) -> str:
        """The quantisation as Ollama names it (``Q4_K_M``); guessed from the weights when
        general.file_type is absent."""
        if "general.file_type" in self.metadata:
            return _file_type_name(self._uint("general.file_type"))
        matrices = [t for t in self.tensors if len(t.shape) == 2] or list(self.tensors)
        if not matrices:
            return "unknown"
        return Counter(t.type_name for t in matrices).most_common(1)[0][0]

    @property
    def parameter_count(self) -> int:
        if "general.parameter_count" in self.metadata:
            return self._uint("general.parameter_count")
        return sum(t.n_elements for t in self.tensors)

    @property
    def parameter_size(self) -> str:
        return format_parameter_count(self.parameter_count)

    @property
    def chat_template(self) -> str | None:
        template = self.metadata.get("tokenizer.chat_template")
        if template is None or isinstance(template, str):
            return template
        self._fail(f"tokenizer.chat_template should be a string, not {_describe(template)}")

    @property
    def has_output_weight(self) -> bool:
        """False when the output projection is tied to (reuses) token_embd."""
        return self._tensor("output.weight") is not None

    def layers(self) -> dict[str, LayerGroup]:
        """Tensors grouped by block (``blk.3``) or top-level part, in file order."""
        groups: dict[str, list[TensorInfo]] = {}
        for tensor in self.tensors:
            groups.setdefault(layer_group_name(tensor.name), []).append(tensor)
        return {name: LayerGroup(name, tuple(members)) for name, members in groups.items()}
