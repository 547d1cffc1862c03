"""The ceiling: llama-cpp-python's low-level decode loop, with the runner's own sampler."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp as L

from pollama.engine.cpu_path import CpuPath
from pollama.protocol.wire import SamplingOptions
from pollama.runner import llama
from pollama.settings import Settings


def cpu_extra_buffers() -> bool:
    """Whether pollama's runners load with llama.cpp's extra CPU buffer types here."""
    return CpuPath.for_settings(Settings.from_env()).decide().extra.on


@dataclass
class RawEngine:
    """A model and a context for ``n_seq`` sequences of ``num_ctx`` tokens each."""

    model: Any
    ctx: Any
    vocab: llama.Vocab
    batch: llama.Batch
    num_ctx: int
    n_seq: int
    _log = None

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        num_ctx: int,
        n_seq: int,
        threads: int,
        extra_buffers: bool | None = None,
    ) -> RawEngine:
        """``extra_buffers`` None: the CPU path pollama's runners take on this machine, so
        both sides of a comparison run the same kernels."""
        L.llama_backend_init()
        if cls._log is None:
            cls._log = llama.LlamaLog(verbose=False)  # warnings and errors only, kept alive
        extra = extra_buffers if extra_buffers is not None else cpu_extra_buffers()
        params = llama.model_params(
            gpu_layers=0,
            main_gpu=0,
            use_mmap=False,
            dry_run=False,
            progress=None,
            extra_buffers=extra,
        )
        model = L.llama_model_load_from_file(str(path).encode(), params)
        ctx_params = llama.context_params(
            n_ctx=num_ctx * n_seq,
            n_seq=n_seq,
            n_batch=512,
            threads=threads,
            flash_attention="auto",
            kv_cache_type="f16",
            embeddings=False,
        )
        ctx = L.llama_init_from_model(model, ctx_params)
        vocab = llama.Vocab(model)
        return cls(model, ctx, vocab, llama.Batch(512), num_ctx, n_seq)

    def decode_rate(self, prompt: str, options: SamplingOptions, tokens: int) -> float:
        """Aggregate generated tokens per second over ``n_seq`` sequences decoded together
        (prompt evaluation excluded), each sampled by its own chain."""
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        prompt_tokens = self.vocab.tokenize(prompt)
        chains = [
            llama.sampler_chain(self.vocab, options, prompt_tokens, self.num_ctx)
            for _ in range(self.n_seq)
        ]
        batch = self.batch
        batch.clear()
        last = []
        for seq in range(self.n_seq):
            for pos, token in enumerate(prompt_tokens):
                index = batch.add(token, pos, seq, pos == len(prompt_tokens) - 1)
            last.append(index)
        batch.decode(self.ctx)
        next_tokens = [
            L.llama_sampler_sample(chains[s], self.ctx, last[s]) for s in range(self.n_seq)
        ]
        pos = len(prompt_tokens)
        started = time.perf_counter()
        for _ in range(tokens):
            batch.clear()
            for seq in range(self.n_seq):
                batch.add(next_tokens[seq], pos, seq, True)
            batch.decode(self.ctx)
            next_tokens = [
                L.llama_sampler_sample(chains[s], self.ctx, s) for s in range(self.n_seq)
            ]
            pos += 1
        elapsed = time.perf_counter() - started
        for chain in chains:
            L.llama_sampler_free(chain)
        return self.n_seq * tokens / elapsed

    def prompt_rate(self, text: str) -> float:
        """Prompt tokens per second: ``text`` evaluated from an empty cache in batches of
        the context's 512, logits for the last position only, then one token sampled
        greedily (a request with ``max_tokens`` 1)."""
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        tokens = self.vocab.tokenize(text)
        chain = llama.sampler_chain(self.vocab, SamplingOptions(temperature=0), tokens, 0)
        batch = self.batch
        started = time.perf_counter()
        for start in range(0, len(tokens), batch.capacity):
            batch.clear()
            for pos in range(start, min(start + batch.capacity, len(tokens))):
                index = batch.add(tokens[pos], pos, 0, pos == len(tokens) - 1)
            if batch.decode(self.ctx) != 0:
                raise RuntimeError("llama_decode failed")
        L.llama_sampler_sample(chain, self.ctx, index)
        elapsed = time.perf_counter() - started
        L.llama_sampler_free(chain)
        return len(tokens) / elapsed

    def close(self) -> None:
        self.batch.free()
        L.llama_free(self.ctx)
        L.llama_model_free(self.model)
