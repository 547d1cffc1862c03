"""Speculative decoding inside the batch step: draft, verify, roll back.

A generating slot with a draft feeds its next token and the draft's k tokens in
the same decode, each asking for logits. Verification samples the rows in order
with the request's own sampler, exactly as plain decoding would sample them one
step at a time: row i is sampled and handled (stop strings, UTF-8, num_predict,
end of generation) like any token; when it equals draft token i, that token is
already in the cache and row i + 1 is its successor, so sampling goes on; at the
first difference, the rest of the draft is dropped from the KV cache. Every
emitted token is one the plain path would have drawn from the same logits with
the same sampler state (a seeded draw consumes one random number per emitted
token either way), so the output is the plain output, token for token — greedy
or sampled, with or without a grammar. Sampled requests just accept less.

Drafts come from one of two kinds: a draft model, when the model has one
(``draft_model``: drafted before the step builds its batch), or else prompt lookup
(``lookup``: drafted while it builds it). Either way ``Pace`` sets how long a draft may
be (per source, the n-gram size matched or the draft model: only while it pays,
given how often that source was right and what a row costs the streams sharing the
step), and a request's ``draft_num_predict`` caps it (0: that request does not draft).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from pollama.runner.bindings import L
from pollama.runner.draft_model import DraftJob
from pollama.runner.lookup import Lookup
from pollama.runner.pace import Pace
from pollama.runner.sampling import sample
from pollama.runner.state import Generation, Loaded, Slot
from pollama.runner.vision import is_image

DRAFT_MODEL = "model"
"""The draft source of a draft model's drafts (prompt lookup's are the n-gram sizes)."""


def drafts_enabled(loaded: Loaded) -> bool:
    """Whether this model's sequences may draft: speculation is on, and its cache can
    drop a rejected tail (not recurrent state; not sliding windows, whose cells a
    rollback cannot bring back)."""
    model = loaded.model
    return (
        loaded.config.draft_max > 0
        and not L.llama_model_is_recurrent(model)
        and not L.llama_model_is_hybrid(model)
        and L.llama_model_n_swa(model) == 0
    )


def start(loaded: Loaded, gen: Generation, prompt: list[int]) -> None:
    """Give a new generation its pace (and, without a draft model, its lookup index over
    the prompt), when it may draft."""
    if not drafts_enabled(loaded):
        return
    length = min(loaded.config.draft_max, gen.request.body.options.draft_num_predict)
    if length <= 0:
        return
    if loaded.drafter is not None:
        # Images are placeholder ids the draft model cannot see: such a prompt does not draft.
        if not any(is_image(t) for t in prompt):
            gen.pace = Pace(max_length=length)
        return
    gen.lookup = Lookup()
    gen.lookup.extend(t for t in prompt if not is_image(t))
    gen.pace = Pace(max_length=length)


def draft_ahead(
    loaded: Loaded, slots: Sequence[Slot], scales: tuple[float, ...] | None, streams: int
) -> None:
    """With a draft model: each generating slot of this step (``scales``: the LoRA set it
    decodes; ``streams``: how many generate) drafts now, before the batch is built, as
    far as the batch (as ``_fill`` will share it out), the context, the request and its
    pace allow."""
    drafter = loaded.drafter
    if drafter is None:
        return
    budget = loaded.batch.capacity
    row_cost = loaded.row_cost.tokens_per_row(streams)
    jobs: list[tuple[Generation, DraftJob]] = []
    for slot in slots:
        gen = slot.gen
        if gen is None or gen.next_token is None or gen.pace is None or budget <= 0:
            continue
        if scales is not None and gen.scales != scales:
            continue
        limit = _limit(loaded, slot, gen, budget - 1)
        limit = gen.pace.allowance(limit, source=DRAFT_MODEL, row_cost=row_cost)
        budget -= 1 + max(0, limit)
        if limit > 0:
            want = [*slot.cache, gen.next_token]
            jobs.append((gen, DraftJob(slot.index, slot.draft_cache, want, limit, [])))
    if not jobs:
        return
    started = time.perf_counter_ns()
    drafter.draft([job for _, job in jobs])
    elapsed = time.perf_counter_ns() - started
    for gen, job in jobs:
        gen.proposed = job.draft
        gen.eval_ns += elapsed


def _limit(loaded: Loaded, slot: Slot, gen: Generation, room: int) -> int:
    """The longest draft ``slot`` may verify this step: within ``room`` batch rows, the
    context, and what the request may still generate."""
    return min(
        room,
        loaded.config.num_ctx - len(slot.cache) - 1,
        gen.num_predict - gen.generated - 1,
    )


def propose(loaded: Loaded, slot: Slot, gen: Generation, room: int, streams: int) -> list[int]:
    """The draft to verify after ``gen.next_token`` this step, within ``room`` batch
    rows, the context, and what the request may still generate; ``streams``: the
    generating slots that share the step."""
    if gen.pace is None:
        return []
    limit = _limit(loaded, slot, gen, room)
    if gen.lookup is None:  # drafted by the draft model (``draft_ahead``)
        proposed, gen.proposed = gen.proposed, []
        gen.draft_source = DRAFT_MODEL
        return proposed[: max(0, limit)]
    if limit <= 0:
        return []
    gen.draft_source, draft = gen.lookup.find(limit)
    for i, token in enumerate(draft):
        if is_image(token):
            draft = draft[:i]
            break
    if not draft:
        return []
    row_cost = loaded.row_cost.tokens_per_row(streams)
    return draft[: gen.pace.allowance(len(draft), source=gen.draft_source, row_cost=row_cost)]


def verify(loaded: Loaded, slot: Slot) -> tuple[int, int]:
    """Sample the rows of ``slot``'s next token and draft, keep the agreeing prefix,
    drop the rest from the cache; the draft's length and how many were accepted."""
    gen = slot.gen
    assert gen is not None
    draft, gen.draft = gen.draft, []
    pace = gen.pace
    assert pace is not None  # only generations with a pace draft
    pace.drafted += len(draft)  # before sampling: the request may end in this loop
    base = len(slot.cache) - len(draft)  # the cache position of the draft's first token
    first = gen.batch_index
    accepted = 0
    for i in range(len(draft) + 1):
        gen.batch_index = first + i
        token = sample(loaded, slot)
        if slot.gen is not gen or gen.next_token is None or i == len(draft):
            break
        if token != draft[i]:
            break
        gen.next_token = None  # already decoded, as draft token i
        accepted += 1
        pace.accepted += 1
    keep = base + accepted
    if keep < len(slot.cache):
        L.llama_memory_seq_rm(L.llama_get_memory(loaded.ctx), slot.index, keep, -1)
        del slot.cache[keep:]
    pace.adapt(len(draft), accepted, source=gen.draft_source)
    return len(draft), accepted
