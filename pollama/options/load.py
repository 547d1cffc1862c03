"""Load-time options, settled before a model is placed: a pure function.

The user asks (Modelfile PARAMETERs, request ``options``, environment); this
module decides what the runner is actually given, and says why in warnings
the caller logs. Rules (DESIGN.md, "Options the server settles"):

- ``num_ctx`` is clamped to the model's training context;
- ``num_batch`` ≤ ``num_ctx``, and embedding models get ``batch = num_ctx``
  (a whole input must fit in one batch);
- threads default to the physical core count;
- flash attention: auto unless the user forced it, off when the model or any
  GPU lacks support;
- a quantized KV cache (q8_0, q4_0) needs flash attention: with auto it turns
  flash attention on (llama.cpp cannot quantize V without it), with it off it
  falls back to f16 with a warning;
- mmap off for CPU-only loads (we want the memory allocated, not page cache
  that the kernel may drop) and when the model exceeds free RAM (thrashing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from pollama.devices.types import DeviceInfo, SystemInfo
from pollama.engine.kernels import PLAIN, ExtraBuffers
from pollama.ggufmeta import GGUFModel
from pollama.options.parameters import default

KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")
QUANTIZED_KV_CACHE_TYPES = ("q8_0", "q4_0")


class FlashAttention(StrEnum):
    AUTO = "auto"
    ENABLED = "enabled"
    DISABLED = "disabled"


@dataclass(frozen=True)
class LoadOptions:
    """What was asked for, before any decision: Ollama's load-time options + environment."""

    num_ctx: int = 4096
    """The request's, a Modelfile's, or OLLAMA_CONTEXT_LENGTH (the table has no default)."""
    num_batch: int = default("num_batch")
    num_gpu: int = default("num_gpu")
    main_gpu: int = default("main_gpu")
    use_mmap: bool | None = default("use_mmap")
    num_thread: int = default("num_thread")
    parallel: int = 1
    flash_attention: bool | None = None
    """OLLAMA_FLASH_ATTENTION: None = auto."""
    kv_cache_type: str = ""
    """OLLAMA_KV_CACHE_TYPE: "" = f16."""
    draft_max: int = 0
    """Draft tokens a sequence may verify per step (POLLAMA_SPECULATIVE); 0 = none."""


@dataclass(frozen=True)
class LoadConfig:
    """What the runner is given."""

    num_ctx: int
    """Context per sequence."""
    parallel: int
    batch_size: int
    num_threads: int
    flash_attention: FlashAttention
    kv_cache_type: str
    use_mmap: bool
    num_gpu: int
    main_gpu: int
    warnings: tuple[str, ...] = ()
    extra_buffers: ExtraBuffers = PLAIN
    """llama.cpp's extra CPU buffer types the load uses (``pollama.engine.cpu_path`` decides)."""
    draft_max: int = 0
    """Draft tokens a sequence may verify per step (speculative decoding): each is one
    more row of logits per sequence in the output buffers."""

    @property
    def kv_size(self) -> int:
        """KV cells in total: every parallel sequence gets the full context."""
        return self.num_ctx * self.parallel

    @property
    def flash_attention_on(self) -> bool:
        """Whether the compute graph will use flash attention (auto resolves to on
        wherever every backend supports it, which we checked before choosing auto)."""
        return self.flash_attention is not FlashAttention.DISABLED


def model_supports_flash_attention(model: GGUFModel) -> bool:
    """llama.cpp's fused attention needs equal, non-zero K and V head sizes; Ollama
    also keeps it off for embedding models."""
    return (
        not model.is_embedding_model
        and model.key_length > 0
        and model.key_length == model.value_length
    )


def resolve_load_options(
    model: GGUFModel,
    asked: LoadOptions,
    system: SystemInfo,
    gpus: Sequence[DeviceInfo] = (),
    extra_buffers: ExtraBuffers = PLAIN,
) -> LoadConfig:
    warnings: list[str] = []

    num_ctx = max(1, asked.num_ctx)
    train_ctx = model.context_length
    if train_ctx > 0 and num_ctx > train_ctx:
        warnings.append(
            f"requested context size too large for model: num_ctx={num_ctx} "
            f"n_ctx_train={train_ctx}; using {train_ctx}"
        )
        num_ctx = train_ctx

    batch = max(1, min(asked.num_batch, num_ctx))
    if model.is_embedding_model and batch < num_ctx:
        batch = num_ctx

    threads = asked.num_thread if asked.num_thread > 0 else max(1, system.thread_count)

    fa = _flash_attention(model, asked.flash_attention, gpus, warnings)
    fa, kv_type = _kv_cache_type(asked.kv_cache_type, fa, model, gpus, warnings)

    model_bytes = sum(t.n_bytes for t in model.tensors)
    if asked.use_mmap is not None:
        use_mmap = asked.use_mmap
    else:
        use_mmap = bool(gpus) and model_bytes <= system.free_memory

    return LoadConfig(
        num_ctx=num_ctx,
        parallel=max(1, asked.parallel),
        batch_size=batch,
        num_threads=threads,
        flash_attention=fa,
        kv_cache_type=kv_type,
        use_mmap=use_mmap,
        num_gpu=asked.num_gpu,
        main_gpu=max(0, asked.main_gpu),
        warnings=tuple(warnings),
        extra_buffers=extra_buffers,
        # Embedding models do not generate: nothing to draft.
        draft_max=0 if model.is_embedding_model else max(0, asked.draft_max),
    )


def _flash_attention(
    model: GGUFModel,
    forced: bool | None,
    gpus: Sequence[DeviceInfo],
    warnings: list[str],
) -> FlashAttention:
    gpu_ok = all(g.supports_flash_attention for g in gpus)
    model_ok = model_supports_flash_attention(model)
    if forced is False:
        return FlashAttention.DISABLED
    if not gpu_ok or not model_ok:
        if forced:
            why = "gpu" if not gpu_ok else "model"
            warnings.append(f"flash attention enabled but not supported by {why}")
        return FlashAttention.DISABLED
    return FlashAttention.ENABLED if forced else FlashAttention.AUTO


def _kv_cache_type(
    asked: str,
    fa: FlashAttention,
    model: GGUFModel,
    gpus: Sequence[DeviceInfo],
    warnings: list[str],
) -> tuple[FlashAttention, str]:
    kv_type = asked.strip().lower() or "f16"
    if kv_type not in KV_CACHE_TYPES:
        warnings.append(f"unsupported OLLAMA_KV_CACHE_TYPE {kv_type!r}; using f16")
        return fa, "f16"
    if kv_type in QUANTIZED_KV_CACHE_TYPES:
        if fa is FlashAttention.DISABLED:
            warnings.append(
                f"quantized KV cache {kv_type} needs flash attention, which is off; using f16"
            )
            return fa, "f16"
        if model.key_length % 32:
            warnings.append(f"KV cache type {kv_type} not supported by this model; using f16")
            return fa, "f16"
        return FlashAttention.ENABLED, kv_type
    return fa, kv_type
