"""The decode step, on the engine thread.

Continuous batching: each step builds one batch from every active slot — one
token for each generating slot first, then prompt chunks up to ``num_batch``
— calls ``llama_decode`` once, and samples every slot that asked for logits
with that slot's own native sampler chain. Requests join and leave between
steps; a cancelled request frees its slot at the next step.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import llama_cpp as L

from pollama.protocol.wire import RunnerStats
from pollama.runner.lora import Scales, pick_scales
from pollama.runner.sampling import finish, sample
from pollama.runner.state import Generation, Loaded, Slot


@dataclass(eq=False)
class StepStats:
    """How the engine has batched so far: the figures ``/stats`` reports."""

    steps: int = 0
    tokens_decoded: int = 0
    seqs_per_step: Counter[int] = field(default_factory=Counter)
    lora_switches: int = 0

    def to_wire(self) -> RunnerStats:
        counts = dict(self.seqs_per_step)
        return RunnerStats(
            decode_steps=self.steps,
            tokens_decoded=self.tokens_decoded,
            max_sequences_per_step=max(counts, default=0),
            sequences_per_step=counts,
            lora_switches=self.lora_switches,
        )


def step(loaded: Loaded, slots: list[Slot], stats: StepStats) -> None:
    """One decode of every active slot, and a sample for each that asked for logits."""
    for slot in slots:
        if slot.gen is not None and slot.gen.request.cancelled.is_set():
            slot.release()
    # With adapters, a step decodes the slots of one scale set only (see ``lora``).
    scales = _scales(loaded, slots) if loaded.adapters else None
    in_batch = _fill(loaded, slots, scales)
    if not in_batch:
        return
    if scales is not None and loaded.adapters.use(loaded.ctx, scales):
        stats.lora_switches += 1
    started = time.perf_counter_ns()
    status = loaded.batch.decode(loaded.ctx)
    if status != 0:
        raise RuntimeError(f"llama_decode returned {status}")
    stats.steps += 1
    stats.tokens_decoded += loaded.batch.n
    stats.seqs_per_step[len(in_batch)] += 1
    gens = [gen for _, gen in in_batch]
    prompt_phase = [gen.generated == 0 for gen in gens]
    for slot, gen in in_batch:
        if gen.batch_index >= 0:
            sample(loaded, slot)
    elapsed = time.perf_counter_ns() - started
    for gen, prompt in zip(gens, prompt_phase, strict=True):
        # The step that samples a request's first token still counts as prompt work.
        if prompt:
            gen.prompt_ns += elapsed
        else:
            gen.eval_ns += elapsed
    for slot, _ in in_batch:
        slot.last_used = stats.steps


def _scales(loaded: Loaded, slots: list[Slot]) -> Scales | None:
    """The scale set this step decodes; None when no slot has work."""
    active = [
        (slot.gen.scales, slot.last_used)
        for slot in slots
        if slot.gen is not None and (slot.gen.next_token is not None or slot.gen.pending)
    ]
    adapters = loaded.adapters
    return pick_scales(active, adapters.current, adapters.held) if active else None


def _fill(
    loaded: Loaded, slots: list[Slot], scales: Scales | None
) -> list[tuple[Slot, Generation]]:
    """Build the step's batch: every slot in it, with the request it decodes for; with
    ``scales``, only the slots that decode with them."""
    batch = loaded.batch
    batch.clear()
    budget = batch.capacity
    in_batch: list[tuple[Slot, Generation]] = []
    # Generating slots first: one token each keeps every stream moving.
    for slot in slots:
        gen = slot.gen
        if gen is not None and gen.next_token is not None and budget > 0:
            if scales is not None and gen.scales != scales:
                continue
            if not _make_room(loaded, slot, gen, 1):
                continue
            gen.batch_index = batch.add(gen.next_token, len(slot.cache), slot.index, True)
            slot.cache.append(gen.next_token)
            gen.next_token = None
            budget -= 1
            in_batch.append((slot, gen))
    for slot in slots:
        gen = slot.gen
        if gen is None or not gen.pending or budget <= 0:
            continue
        if scales is not None and gen.scales != scales:
            continue
        chunk = gen.pending[:budget]
        del gen.pending[: len(chunk)]
        last = not gen.pending
        for i, token in enumerate(chunk):
            wants_logits = last and i == len(chunk) - 1
            index = batch.add(token, len(slot.cache), slot.index, wants_logits)
            slot.cache.append(token)
        gen.batch_index = index if last else -1
        budget -= len(chunk)
        in_batch.append((slot, gen))
    return in_batch


def _make_room(loaded: Loaded, slot: Slot, gen: Generation, needed: int) -> bool:
    """Context shift when a generating sequence reaches num_ctx; False if it ended."""
    n_ctx = loaded.config.num_ctx
    if len(slot.cache) + needed <= n_ctx:
        return True
    body = gen.request.body
    mem = L.llama_get_memory(loaded.ctx)
    if not body.shift or not L.llama_memory_can_shift(mem):
        finish(slot, "length")
        return False
    n_past = len(slot.cache)
    keep = min(max(body.options.num_keep, 0), n_past - 1)
    discard = (n_past - keep) // 2
    L.llama_memory_seq_rm(mem, slot.index, keep, keep + discard)
    L.llama_memory_seq_add(mem, slot.index, keep + discard, n_past, -discard)
    del slot.cache[keep : keep + discard]
    return True
