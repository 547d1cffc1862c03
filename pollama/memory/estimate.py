"""Memory a model will need, computed from its GGUF before any runner starts.

- Weights are the exact tensor byte sizes of each ``blk.N`` (and of the output
  layer), read from the file's tensor table.
- KV cache is exact from the hyper-parameters: per layer
  ``row_size(type, head_dim × kv_heads) × cells`` for K and for V, where cells
  are ``num_ctx × parallel`` — or, for sliding-window layers when the runner
  does not keep full-size SWA caches, the window per sequence plus one batch,
  padded as llama.cpp pads it. Recurrent (SSM) layers hold a fixed state per
  sequence instead.
- The compute graph is an estimate here; the runner replaces it with what
  llama.cpp measures on a dry-run load.
- On a CPU-only load with llama.cpp's extra buffer types on, the repacked
  copies of the CPU's weights (``pollama.engine.kernels``) are added to the
  layers that hold them.
- A vision projector's weights and compute buffer (``pollama.memory.projector``)
  are in system memory, where the runner keeps it.
- LoRA adapters add their tensors to the layers they adapt (``adapters``).
- A draft model (speculative decoding) is a second model on the CPU with a context
  of its own: its weights, KV cache and graph are estimated as the target's are
  (``draft_memory``), in system memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from pollama.devices.types import DeviceInfo
from pollama.engine.kernels import extra_bytes, tied_output_bytes
from pollama.ggufmeta import GGUFModel
from pollama.ggufmeta.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from pollama.memory.adapters import with_adapters
from pollama.memory.projector import projector_memory
from pollama.memory.types import BackendMemory, DeviceMemory, DraftMemory
from pollama.options.load import LoadConfig

_CACHE_GGML_TYPES = {
    "f16": GGMLQuantizationType.F16,
    "q8_0": GGMLQuantizationType.Q8_0,
    "q4_0": GGMLQuantizationType.Q4_0,
}
# llama.cpp pads KV cell counts (the context, and sliding-window caches) to this.
_CELL_PADDING = 256
_F32 = 4


def row_size(cache_type: str, n_elements: int) -> int:
    """Bytes of one row of ``n_elements`` in a cache of ``cache_type`` (f16, q8_0, q4_0)."""
    block, type_size = GGML_QUANT_SIZES[_CACHE_GGML_TYPES[cache_type]]
    return -(-n_elements // block) * type_size


def kv_cells(config: LoadConfig) -> int:
    """KV cells llama.cpp allocates: the total context, padded to its cell padding."""
    return _pad(config.kv_size, _CELL_PADDING)


def kv_cache_per_layer(model: GGUFModel, config: LoadConfig, *, swa_full: bool) -> list[int]:
    """Bytes of KV cache (or recurrent state) for each repeating layer."""
    swa = model.swa_layers()
    cells = kv_cells(config)
    swa_cells = cells
    if model.sliding_window and not swa_full:
        # One cache stream per sequence, each holding the window plus one batch.
        per_seq = _pad(model.sliding_window + config.batch_size, _CELL_PADDING)
        swa_cells = min(cells, per_seq * config.parallel)
    sizes = []
    for layer in range(model.block_count):
        kv_heads = model.head_count_kv(layer)
        if kv_heads == 0 and model.ssm_state_size:
            sizes.append(_recurrent_state(model) * config.parallel)
            continue
        k = row_size(config.kv_cache_type, model.key_length * kv_heads)
        v = row_size(config.kv_cache_type, model.value_length * kv_heads)
        sizes.append((k + v) * (swa_cells if swa[layer] else cells))
    return sizes


def _recurrent_state(model: GGUFModel) -> int:
    """One sequence's state in a Mamba-style layer: conv window + SSM state, in f32."""
    d_conv = model.ssm_conv_kernel
    d_inner = model.ssm_inner_size
    d_state = model.ssm_state_size
    groups = max(1, model.ssm_group_count)
    conv = max(0, d_conv - 1) * (d_inner + 2 * groups * d_state)
    return (conv + d_state * d_inner) * _F32


def graph_size(model: GGUFModel, config: LoadConfig) -> int:
    """Compute-buffer estimate for one full batch (llama.cpp reserves for the worst case).

    The allocator reuses memory between operations, so the peak is the larger
    of a layer's working set — the attention mask (an input, live through
    every layer) plus the larger of the FFN and attention intermediates — and
    the output step. Without flash attention a layer materialises the KQ
    scores over one sequence's context. The runner asks llama.cpp for logits
    at most once per sequence per step (``n_outputs_max = parallel``), so the
    output step holds ``parallel`` rows of logits, not a batch's worth (which
    would dominate for large vocabularies: 512 MiB for gemma3's 262k tokens).
    Exact against llama.cpp's logged compute buffer for SmolLM2 across batch
    sizes, contexts, sequence counts, with and without flash attention.
    """
    batch = config.batch_size
    # llama.cpp keeps one cache stream per sequence: attention spans one of them.
    n_kv = kv_cells(config) // config.parallel
    embd = model.embedding_length
    ff = model.feed_forward_length
    flash = config.flash_attention_on
    mask = batch * n_kv * (2 if flash else _F32)
    ffn = _F32 * batch * (4 * embd + 3 * ff)
    attention = _F32 * batch * (3 * embd + ff)
    if not flash:
        attention += _F32 * batch * n_kv * model.head_count_max
    output = _F32 * output_rows(model, config) * (model.vocab_size + 2 * embd)
    return max(mask + max(ffn, attention), output)


def output_rows(model: GGUFModel, config: LoadConfig) -> int:
    """Positions per batch that produce output: one per sequence when generating, plus
    its draft's (speculative decoding); every token for an embedding model (pooling
    reads them all)."""
    if model.is_embedding_model:
        return config.batch_size
    return min(config.batch_size, config.parallel * (1 + config.draft_max))


def output_buffer(model: GGUFModel, config: LoadConfig) -> int:
    """The host buffer llama.cpp keeps for logits (or embeddings) of one step."""
    width = model.embedding_length if model.is_embedding_model else model.vocab_size
    return _F32 * width * output_rows(model, config)


def estimate_memory(
    model: GGUFModel,
    config: LoadConfig,
    gpus: Sequence[DeviceInfo] = (),
    *,
    swa_full: bool = False,
    projector: GGUFModel | None = None,
    adapters: Sequence[GGUFModel] = (),
    draft: GGUFModel | None = None,
) -> BackendMemory:
    """The model's memory with every layer on the CPU and an empty entry per GPU (and
    ``projector``'s, if it has one); ``adapters`` (LoRA GGUFs) add their tensors to the
    layers they adapt; ``draft``, a draft model, counts when the load speculates (the
    runner loads it only then)."""
    groups = model.layers()
    n_blocks = model.block_count
    n_layers = n_blocks + 1
    weights = [0] * n_layers
    for layer in range(n_blocks):
        group = groups.get(f"blk.{layer}")
        weights[layer] = group.size if group else 0
    output_names = ("output_norm", "output")
    weights[n_blocks] = sum(groups[name].size for name in output_names if name in groups)
    block_names = {f"blk.{i}" for i in range(n_blocks)}
    input_weights = sum(
        g.size for name, g in groups.items() if name not in block_names and name not in output_names
    )
    tied = (
        0
        if model.has_output_weight
        else (groups["token_embd"].size if "token_embd" in groups else 0)
    )
    if config.extra_buffers.on and not gpus:
        extra, mmap = config.extra_buffers, config.use_mmap
        for layer in range(n_blocks):
            group = groups.get(f"blk.{layer}")
            weights[layer] += extra_bytes(group.tensors, extra, use_mmap=mmap) if group else 0
        for name in output_names:
            if name in groups:
                weights[n_blocks] += extra_bytes(groups[name].tensors, extra, use_mmap=mmap)
        if tied:
            embd = [t for t in groups["token_embd"].tensors if t.name.endswith("weight")]
            weights[n_blocks] += tied_output_bytes(embd[0] if embd else None, extra)
    cache = [*kv_cache_per_layer(model, config, swa_full=swa_full), 0]
    graph = graph_size(model, config)
    cpu_graph = graph + output_buffer(model, config)
    memory = BackendMemory(
        input_weights=input_weights,
        cpu=DeviceMemory("CPU", None, tuple(weights), tuple(cache), graph=cpu_graph),
        gpus=tuple(DeviceMemory.empty(g.name, g.id, n_layers) for g in gpus),
        tied_output=tied,
        graph_estimate=graph,
        projector=(
            projector_memory(projector, flash_attention=config.flash_attention_on)
            if projector is not None
            else None
        ),
        draft=draft_memory(draft, config) if draft is not None and config.draft_max else None,
    )
    return with_adapters(memory, adapters)


def draft_memory(draft: GGUFModel, config: LoadConfig) -> DraftMemory:
    """A draft model on the CPU with a context like the target's (the same sequences and
    context per sequence) that asks for one row of logits per sequence: it drafts one
    token per decode, greedily. Estimated exactly as a model of its own would be."""
    own = estimate_memory(draft, replace(config, draft_max=0))
    return DraftMemory(
        weights=own.input_weights + own.cpu.layer_weights,
        cache=own.cpu.layer_cache,
        graph=own.cpu.graph,
    )


def _pad(n: int, to: int) -> int:
    return -(-n // to) * to
