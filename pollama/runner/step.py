"""The decode step, on the engine thread.

Continuous batching: each step builds one batch from every active slot — one
token for each generating slot first, then prompt chunks up to ``num_batch``
— calls ``llama_decode`` once, and samples every slot that asked for logits
with that slot's own native sampler chain. Requests join and leave between
steps; a cancelled request frees its slot at the next step. An image due next in a
slot's prompt is evaluated before the batch is built, on its own (``vision``).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from pollama.protocol.wire import RunnerStats
from pollama.runner.bindings import L
from pollama.runner.lora import Scales, pick_scales
from pollama.runner.sampling import finish, sample
from pollama.runner.speculate import draft_ahead, propose, verify
from pollama.runner.state import EngineError, Generation, Loaded, Slot
from pollama.runner.vision import is_image, offset_in_image


@dataclass(eq=False)
class StepStats:
    """How the engine has batched so far: the figures ``/stats`` reports."""

    steps: int = 0
    tokens_decoded: int = 0
    seqs_per_step: Counter[int] = field(default_factory=Counter)
    images_encoded: int = 0
    lora_switches: int = 0

    def to_wire(self) -> RunnerStats:
        counts = dict(self.seqs_per_step)
        return RunnerStats(
            decode_steps=self.steps,
            tokens_decoded=self.tokens_decoded,
            max_sequences_per_step=max(counts, default=0),
            sequences_per_step=counts,
            images_encoded=self.images_encoded,
            lora_switches=self.lora_switches,
        )


def step(loaded: Loaded, slots: list[Slot], stats: StepStats) -> None:
    """One decode of every active slot, and a sample for each that asked for logits."""
    for slot in slots:
        if slot.gen is not None and slot.gen.request.cancelled.is_set():
            slot.release()
    _evaluate_images(loaded, slots, stats)
    # With adapters, a step decodes the slots of one scale set only (see ``lora``).
    scales = _scales(loaded, slots) if loaded.adapters else None
    # The streams a draft row slows: every slot decoding a generated token this step.
    streams = sum(1 for s in slots if s.gen is not None and s.gen.next_token is not None)
    draft_ahead(loaded, slots, scales, streams)  # a draft model's drafts, before the batch
    in_batch = _fill(loaded, slots, scales, streams)
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
    drafted = sum(len(gen.draft) for gen in gens)
    for slot, gen in in_batch:
        if gen.draft:
            verify(loaded, slot)
        elif gen.batch_index >= 0:
            sample(loaded, slot)
    elapsed = time.perf_counter_ns() - started
    if loaded.batch.n == len(in_batch) + drafted:  # generated tokens and drafts only
        loaded.row_cost.observe(len(in_batch), drafted, elapsed / 1e9)
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
    loaded: Loaded, slots: list[Slot], scales: Scales | None, streams: int
) -> list[tuple[Slot, Generation]]:
    """Build the step's batch: every slot in it, with the request it decodes for; with
    ``scales``, only the slots that decode with them; ``streams`` share its drafts' cost."""
    batch = loaded.batch
    batch.clear()
    budget = batch.capacity
    in_batch: list[tuple[Slot, Generation]] = []
    # Generating slots first: one token each keeps every stream moving, and its draft
    # (``speculate``), verified in the same decode.
    for slot in slots:
        gen = slot.gen
        if gen is not None and gen.next_token is not None and budget > 0:
            if scales is not None and gen.scales != scales:
                continue
            if not _make_room(loaded, slot, gen, 1):
                continue
            gen.draft = propose(loaded, slot, gen, budget - 1, streams)
            gen.batch_index = batch.add(gen.next_token, len(slot.cache), slot.index, True)
            slot.cache.append(gen.next_token)
            for token in gen.draft:
                batch.add(token, len(slot.cache), slot.index, True)
                slot.cache.append(token)
            gen.next_token = None
            budget -= 1 + len(gen.draft)
            in_batch.append((slot, gen))
    for slot in slots:
        gen = slot.gen
        if gen is None or not gen.pending or budget <= 0 or is_image(gen.pending[0]):
            continue
        if scales is not None and gen.scales != scales:
            continue
        chunk = _text_run(gen.pending, budget)
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


def _text_run(pending: list[int], budget: int) -> list[int]:
    """The prompt tokens due next, up to ``budget`` and the next image."""
    run = pending[:budget]
    for i, token in enumerate(run):
        if is_image(token):
            return run[:i]
    return run


def _evaluate_images(loaded: Loaded, slots: list[Slot], stats: StepStats) -> None:
    """Every image due next in a prompt, evaluated into its slot's sequence; a failure
    ends that request only."""
    for slot in slots:
        gen = slot.gen
        while gen is not None and gen.pending and is_image(gen.pending[0]):
            assert loaded.vision is not None  # prompts with images are admitted only then
            image = gen.request.images[gen.pending[0]]
            started = time.perf_counter_ns()
            # The image's embeddings pass through the adapted layers too.
            if loaded.adapters and loaded.adapters.use(loaded.ctx, gen.scales):
                stats.lora_switches += 1
            try:
                loaded.vision.evaluate(
                    loaded.ctx, image, slot.index, len(slot.cache), loaded.config.batch_size
                )
            except EngineError as exc:
                # Whatever part of the image reached the cache is dropped with the request.
                mem = L.llama_get_memory(loaded.ctx)
                L.llama_memory_seq_rm(mem, slot.index, len(slot.cache), -1)
                gen.request.emit(exc)
                slot.release()
                break
            slot.cache.extend(gen.pending[: image.n_tokens])
            del gen.pending[: image.n_tokens]
            gen.prompt_ns += time.perf_counter_ns() - started
            stats.images_encoded += 1


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
    keep, end = shift_window(slot.cache, keep, keep + (n_past - keep) // 2)
    discard = end - keep
    L.llama_memory_seq_rm(mem, slot.index, keep, keep + discard)
    L.llama_memory_seq_add(mem, slot.index, keep + discard, n_past, -discard)
    del slot.cache[keep : keep + discard]
    return True


def shift_window(cache: list[int], start: int, end: int) -> tuple[int, int]:
    """Widen ``[start, end)`` so that a context shift drops whole images, never part of
    one: an image's embeddings only mean something together (llama-server refuses the
    shift outright with images; dropping the whole image keeps the slot going)."""
    while 0 < start < len(cache) and is_image(cache[start]) and offset_in_image(cache[start]):
        start -= 1
    while end < len(cache) and is_image(cache[end]) and offset_in_image(cache[end]):
        end += 1
    return start, end
