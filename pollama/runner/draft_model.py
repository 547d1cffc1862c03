"""Drafting with a draft model: a small model of the target's vocabulary (Modelfile
``DRAFT``) guesses each generating sequence's next tokens, greedily.

The draft model lives on the CPU in a context of its own, with the target's sequences
and context per sequence. Each slot records which tokens the draft context holds for
its sequence (``Slot.draft_cache``). Before a step builds its batch, every drafting
slot's draft sequence is brought in line with what the target has accepted plus the
token it feeds next (the common prefix kept, the rest dropped and the missing tokens
decoded, every slot in the same batches), then each drafts one token per draft
decode, all drafting slots in one batch. The drafts go through the target's verify
step like prompt lookup's (``speculate``): whatever the draft model guesses, the text
is the target's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pollama.options.load import LoadConfig
from pollama.runner import llama
from pollama.runner.bindings import L
from pollama.runner.errors import AllocationFailed, EngineError


@dataclass(eq=False)
class DraftJob:
    """One slot's drafting this step: its sequence id, the draft context's record of it,
    the tokens it must hold (accepted ones and the next), and how many to draft."""

    seq: int
    cache: list[int]
    """The slot's ``draft_cache``: updated in place."""
    want: list[int]
    limit: int
    draft: list[int]


class DraftModel:
    """The draft model and its context in llama.cpp, and a greedy sampler to draft with."""

    def __init__(self, model: Any, ctx: Any, batch: llama.Batch, target_vocab: int) -> None:
        self._model = model
        self.ctx = ctx
        self._batch = batch
        self._vocab = llama.Vocab(model)
        self._target_vocab = target_vocab
        self._greedy = L.llama_sampler_init_greedy()

    @classmethod
    def open(
        cls,
        path: str,
        config: LoadConfig,
        lg: llama.LlamaLog,
        *,
        target_vocab: int,
        extra_buffers: bool,
    ) -> DraftModel:
        """The draft model on the CPU, with a context like the target's (one row of logits
        per sequence: it drafts one token per decode)."""
        lg.begin()
        params = llama.model_params(
            gpu_layers=0,
            main_gpu=0,
            use_mmap=config.use_mmap,
            dry_run=False,
            progress=None,
            extra_buffers=extra_buffers,
        )
        model = L.llama_model_load_from_file(path.encode(), params)
        if not model:
            raise EngineError(lg.explain(f"unable to load the draft model {path}"))
        ctx_params = llama.context_params(
            n_ctx=config.kv_size,
            n_seq=config.parallel,
            n_batch=config.batch_size,
            threads=config.num_threads,
            flash_attention=config.flash_attention.value,
            kv_cache_type=config.kv_cache_type,
            embeddings=False,
        )
        ctx = L.llama_init_from_model(model, ctx_params)
        if not ctx:
            L.llama_model_free(model)
            raise AllocationFailed(lg.explain("unable to create the draft model's context"))
        return cls(model, ctx, llama.Batch(config.batch_size), target_vocab)

    def clear(self) -> None:
        """Forget every sequence (after a failed decode nothing cached can be trusted)."""
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)

    def free(self) -> None:
        L.llama_sampler_free(self._greedy)
        self._batch.free()
        L.llama_free(self.ctx)
        L.llama_model_free(self._model)

    def draft(self, jobs: Sequence[DraftJob]) -> None:
        """Fill each job's ``draft`` with up to ``limit`` greedy tokens."""
        live = [job for job in jobs if self._catch_up(job)]
        pending = self._sync(live)
        # One draft decode per round, every slot still drafting in it.
        while pending:
            batch = self._batch
            batch.clear()
            for job in pending:
                token = job.draft[-1]
                batch.add(token, len(job.cache), job.seq, True)
                job.cache.append(token)
            self._decode()
            pending = [job for i, job in enumerate(pending) if self._take(job, i)]

    def _catch_up(self, job: DraftJob) -> bool:
        """Drop what the draft context holds past the common prefix with ``want`` (keeping
        at least ``want``'s last token to decode: its logits give the first draft token).
        False when the sequence could not be cut (then it starts over)."""
        keep = min(_common_prefix(job.cache, job.want), len(job.want) - 1)
        if keep < len(job.cache):
            mem = L.llama_get_memory(self.ctx)
            if not L.llama_memory_seq_rm(mem, job.seq, keep, -1):
                L.llama_memory_seq_rm(mem, job.seq, -1, -1)
                keep = 0
            del job.cache[keep:]
        return job.limit > 0

    def _sync(self, jobs: Sequence[DraftJob]) -> list[DraftJob]:
        """Decode each job's missing tokens (all jobs sharing batches) and sample its first
        draft token from its last one; the jobs that go on drafting."""
        missing = {id(job): job.want[len(job.cache) :] for job in jobs}
        going_on: list[DraftJob] = []
        while any(missing.values()):
            batch = self._batch
            batch.clear()
            finished: list[tuple[DraftJob, int]] = []
            for job in jobs:
                tokens = missing[id(job)]
                if not tokens or batch.n >= batch.capacity:
                    continue
                chunk = tokens[: batch.capacity - batch.n]
                missing[id(job)] = tokens[len(chunk) :]
                last = not missing[id(job)]
                for i, token in enumerate(chunk):
                    row = batch.add(token, len(job.cache), job.seq, last and i == len(chunk) - 1)
                    job.cache.append(token)
                if last:
                    finished.append((job, row))
            self._decode()
            # Sampled now: the next decode overwrites these logits.
            going_on += [job for job, row in finished if self._take(job, row)]
        return going_on

    def _take(self, job: DraftJob, row: int) -> bool:
        """Sample ``job``'s next draft token from ``row``; whether it drafts on."""
        token = int(L.llama_sampler_sample(self._greedy, self.ctx, row))
        if token >= self._target_vocab:
            return False  # a token the target does not have: the draft ends before it
        job.draft.append(token)
        # Past an end of generation the target stops: nothing to verify there.
        return len(job.draft) < job.limit and not self._vocab.is_eog(token)

    def _decode(self) -> None:
        status = self._batch.decode(self.ctx)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status} in the draft model")


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
