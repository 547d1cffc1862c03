"""Embeddings, on the engine thread: as many inputs per decode as fit.

Embedding models embed in their own context; others get a second context, made
on first use, so embeddings never disturb the generation slots.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pollama.protocol.wire import EmbeddingResponse
from pollama.runner import llama
from pollama.runner.bindings import L
from pollama.runner.state import AllocationFailed, EngineError, Loaded

# Inputs packed into one embedding decode at most (llama.cpp caps sequences per context).
EMBED_MAX_SEQS = 64


class Embedder:
    """Embeds with one loaded model; frees its own context (if it made one) on ``free``."""

    def __init__(self, loaded: Loaded, log: llama.LlamaLog, *, embedding_model: bool) -> None:
        self._loaded = loaded
        self._log = log
        self._embedding_model = embedding_model
        self._own_ctx: Any = None

    def embed(self, texts: list[str], truncate: bool) -> EmbeddingResponse:
        ctx = self._context()
        n_ctx = int(L.llama_n_ctx(ctx))
        inputs = [self._tokens(text, n_ctx, truncate) for text in texts]
        vectors = decode_in_groups(ctx, inputs, n_ctx, self._decode)
        return EmbeddingResponse(tuple(vectors), sum(len(t) for t in inputs))

    def free(self) -> None:
        if self._own_ctx:
            L.llama_free(self._own_ctx)
        self._own_ctx = None

    def _tokens(self, text: str, n_ctx: int, truncate: bool) -> list[int]:
        tokens = self._loaded.vocab.tokenize(text, add_special=True)
        if len(tokens) > n_ctx:
            if not truncate:
                raise EngineError("the input length exceeds the context length", status=400)
            tokens = tokens[:n_ctx]
        return tokens or [0]

    def _decode(
        self, ctx: Any, batch: llama.Batch, group: list[list[int]]
    ) -> list[tuple[float, ...]]:
        """One decode of ``group``, one sequence each; their pooled vectors."""
        decode_sequences(ctx, batch, group, self._log, "embedding decode failed")
        n_embd = int(L.llama_model_n_embd(self._loaded.model))
        vectors = []
        for seq in range(len(group)):
            ptr = L.llama_get_embeddings_seq(ctx, seq)
            if not ptr:
                raise EngineError("the model produced no pooled embedding")
            vectors.append(tuple(float(x) for x in ptr[:n_embd]))
        return vectors

    def _context(self) -> Any:
        if self._embedding_model:
            return self._loaded.ctx
        if self._own_ctx is None:
            config = self._loaded.config
            params = llama.context_params(
                n_ctx=config.num_ctx,
                n_seq=min(EMBED_MAX_SEQS, config.num_ctx),
                n_batch=config.num_ctx,
                threads=config.num_threads,
                flash_attention=config.flash_attention.value,
                kv_cache_type=config.kv_cache_type,
                embeddings=True,
                pooling=L.LLAMA_POOLING_TYPE_MEAN,
                unified=True,
            )
            ctx = L.llama_init_from_model(self._loaded.model, params)
            if not ctx:
                # A context is its KV cache and compute buffers: a NULL is memory.
                raise AllocationFailed(self._log.explain("unable to create the embedding context"))
            self._own_ctx = ctx
            adapters = self._loaded.adapters
            if adapters:  # embeddings of the adapted model, at the adapters' load scales
                adapters.set(ctx, adapters.defaults)
        return self._own_ctx


T = TypeVar("T")


def decode_sequences(
    ctx: Any, batch: llama.Batch, group: list[list[int]], log: llama.LlamaLog, failure: str
) -> None:
    """One decode of ``group`` from an empty cache, one sequence each, every position an
    output (pooling reads them); ``failure`` names what failed, with llama.cpp's reason."""
    batch.clear()
    for seq, tokens in enumerate(group):
        for pos, token in enumerate(tokens):
            batch.add(token, pos, seq, True)
    # Forget the cells, keep the bytes: unused cells are masked, and zeroing
    # the whole cache cost more than embedding a short input.
    L.llama_memory_clear(L.llama_get_memory(ctx), False)
    if batch.decode(ctx) != 0:
        raise EngineError(log.explain(failure))


def decode_in_groups(
    ctx: Any,
    inputs: list[list[int]],
    limit: int,
    decode: Callable[[Any, llama.Batch, list[list[int]]], list[T]],
) -> list[T]:
    """``decode`` over ``inputs``, one sequence each and as many per call as fit ``limit``
    tokens; the context's memory is cleared afterwards (nothing of it is kept)."""
    out: list[T] = []
    batch = llama.Batch(limit)
    try:
        start = 0
        while start < len(inputs):
            group = group_inputs(inputs, start, limit, min(EMBED_MAX_SEQS, limit))
            out.extend(decode(ctx, batch, group))
            start += len(group)
    finally:
        batch.free()
        L.llama_memory_clear(L.llama_get_memory(ctx), False)
    return out


def group_inputs(inputs: list[list[int]], start: int, n_ctx: int, n_seq: int) -> list[list[int]]:
    """The inputs from ``start`` on that fit one decode: at most ``n_seq`` of them, at most
    ``n_ctx`` tokens together (but always at least one)."""
    group: list[list[int]] = []
    used = 0
    for tokens in inputs[start : start + n_seq]:
        if group and used + len(tokens) > n_ctx:
            break
        group.append(tokens)
        used += len(tokens)
    return group
