"""Reranking, on the engine thread: each (query, document) pair one sequence, as many
per decode as fit, each scored by the model's rank pooling.

A reranker is a model whose GGUF says ``pooling_type`` 4 (rank): its context pools the
last token (causal models) or the first (encoders) through the classification head, and
``llama_get_embeddings_seq`` gives ``n_cls_out`` floats per sequence; the first is the
score, as llama-server reads it. Pairs are formatted as llama-server formats them: the
model's ``rerank`` chat template with ``{query}`` and ``{document}`` filled in, or else
``[BOS]query[EOS][SEP]document[EOS]`` with the special tokens the vocabulary asks for.
"""

from __future__ import annotations

import re
from typing import Any

from pollama.protocol.wire import RerankResponse
from pollama.runner import llama
from pollama.runner.bindings import L
from pollama.runner.embedding import decode_in_groups, decode_sequences
from pollama.runner.state import EngineError, Loaded

_PLACEHOLDER = re.compile(r"\{(query|document)\}")


def fill_template(template: str, query: str, document: str) -> str:
    """The template with its placeholders filled in one pass, so a query that contains
    the text ``{document}`` stays as the user wrote it."""
    values = {"query": query, "document": document}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def rerank_template(model: Any) -> str | None:
    """The model's ``tokenizer.chat_template.rerank``, if it has one."""
    raw = L.llama_model_chat_template(model, b"rerank")
    return raw.decode("utf-8", errors="replace") if raw else None


class Reranker:
    """Scores documents against a query with one loaded reranker (its own context)."""

    def __init__(self, loaded: Loaded, log: llama.LlamaLog) -> None:
        self._loaded = loaded
        self._log = log
        self._template = rerank_template(loaded.model)

    def rerank(self, query: str, documents: list[str]) -> RerankResponse:
        ctx = self._loaded.ctx
        limit = min(int(L.llama_n_ctx(ctx)), int(L.llama_n_ubatch(ctx)))
        pairs = [self._tokens(query, doc) for doc in documents]
        for index, tokens in enumerate(pairs):
            if len(tokens) > limit:
                raise EngineError(
                    f"document {index} and the query take {len(tokens)} tokens; "
                    f"the context holds {limit} (raise num_ctx)",
                    status=400,
                )
        scores = decode_in_groups(ctx, pairs, limit, self._decode)
        return RerankResponse(tuple(scores), sum(len(t) for t in pairs))

    def _tokens(self, query: str, document: str) -> list[int]:
        vocab = self._loaded.vocab
        if self._template is not None:
            return vocab.tokenize(fill_template(self._template, query, document), False)
        handle = vocab.handle
        eos = vocab.eos if vocab.eos != L.LLAMA_TOKEN_NULL else int(L.llama_vocab_sep(handle))
        tokens = [vocab.bos] if L.llama_vocab_get_add_bos(handle) else []
        # Plain text, as llama-server reads it here: "<|im_end|>" in a document is words.
        tokens += vocab.tokenize(query, False, parse_special=False)
        if L.llama_vocab_get_add_eos(handle):
            tokens.append(eos)
        if L.llama_vocab_get_add_sep(handle):
            tokens.append(int(L.llama_vocab_sep(handle)))
        tokens += vocab.tokenize(document, False, parse_special=False)
        if L.llama_vocab_get_add_eos(handle):
            tokens.append(eos)
        return tokens or [max(vocab.bos, 0)]

    def _decode(self, ctx: Any, batch: llama.Batch, group: list[list[int]]) -> list[float]:
        """One decode of ``group``, one sequence each; their scores."""
        decode_sequences(ctx, batch, group, self._log, "rerank decode failed")
        scores = []
        for seq in range(len(group)):
            pooled = L.llama_get_embeddings_seq(ctx, seq)
            if not pooled:
                raise EngineError("the model produced no rank score")
            scores.append(float(pooled[0]))
        return scores
