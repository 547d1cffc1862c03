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
"""

from __future__ import annotations

import llama_cpp as L

from pollama.runner.lookup import Lookup, Pace
from pollama.runner.sampling import sample
from pollama.runner.state import Generation, Loaded, Slot
from pollama.runner.vision import is_image


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
    """Give a new generation its lookup index over the prompt, when it may draft."""
    if drafts_enabled(loaded):
        gen.lookup = Lookup()
        gen.lookup.extend(t for t in prompt if not is_image(t))
        gen.pace = Pace(max_length=loaded.config.draft_max)


def propose(loaded: Loaded, slot: Slot, gen: Generation, room: int) -> list[int]:
    """The draft to verify after ``gen.next_token`` this step, within ``room`` batch
    rows, the context, and what the request may still generate."""
    if gen.lookup is None or gen.pace is None:
        return []
    limit = min(
        room,
        loaded.config.num_ctx - len(slot.cache) - 1,
        gen.num_predict - gen.generated - 1,
    )
    if limit <= 0:
        return []
    draft = gen.lookup.draft(min(limit, gen.pace.allowance()))
    for i, token in enumerate(draft):
        if is_image(token):
            return draft[:i]
    return draft


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
    pace.adapt(len(draft), accepted)
    return len(draft), accepted
