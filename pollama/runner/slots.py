"""Admission, between two decode steps: waiting requests into free slots.

A request takes the free slot whose cache holds the longest prefix of its prompt
(of equals, the least recently used), or a copy of another sequence's cache when
that holds a prefix longer by enough to be worth copying.
"""

from __future__ import annotations

import sys
from collections import deque

from pollama.protocol.wire import CompletionRequest
from pollama.runner import llama
from pollama.runner.bindings import L
from pollama.runner.lora import Scales
from pollama.runner.sampling import finish
from pollama.runner.speculate import start as start_drafting
from pollama.runner.state import EngineError, Generation, Loaded, Request, Slot
from pollama.runner.text import StreamedText
from pollama.runner.thinking import Thinking
from pollama.runner.vision import ImageChunk, is_image, offset_in_image

# A prompt takes its prefix from another sequence's cache only when that saves at
# least this many tokens: llama.cpp copies a sequence's KV stream whole.
_MIN_SHARED_PREFIX = 32


def admit(
    waiting: deque[Request],
    slots: list[Slot],
    ready: Loaded | None,
    log: llama.LlamaLog,
    *,
    generates: bool,
    now: int,
) -> None:
    """Start waiting requests in free slots, in order; errors go to their requests.

    ``ready`` is None while no model is ready to serve; ``now`` is the step count.
    """
    while waiting:
        request = waiting[0]
        if request.cancelled.is_set():
            waiting.popleft()
            continue
        free = [s for s in slots if not s.busy]
        if not free:
            return
        try:
            if ready is None:
                raise EngineError("model not loaded", status=503)
            if request.tokens is None:
                request.tokens, request.images = prompt_tokens(
                    ready, request.body, generates=generates
                )
            scales = ready.adapters.scales_for(request.body.lora)
        except EngineError as exc:
            waiting.popleft()
            request.emit(exc)
            continue
        if _prefix_in_flight(ready, slots, request.tokens, scales):
            return  # another sequence evaluates it in this step: share it next step
        waiting.popleft()
        try:
            _start(ready, slots, request, (request.tokens, scales), free, log, now)
        except EngineError as exc:
            request.emit(exc)


def fail_all(
    slots: list[Slot], waiting: deque[Request], loaded: Loaded | None, error: EngineError
) -> None:
    """Answer every request with ``error`` and forget every cache: after a failed decode
    nothing in the KV cache can be trusted."""
    for slot in slots:
        if slot.gen is not None:
            slot.gen.request.emit(error)
            slot.release()
            slot.cache.clear()
        slot.draft_cache.clear()
    while waiting:
        waiting.popleft().emit(error)
    if loaded is not None:
        L.llama_memory_clear(L.llama_get_memory(loaded.ctx), True)
        if loaded.drafter is not None:
            loaded.drafter.clear()


def prompt_tokens(
    loaded: Loaded, body: CompletionRequest, *, generates: bool
) -> tuple[list[int], dict[int, ImageChunk]]:
    """The prompt's tokens (an image as a run of placeholders, ``vision``), checked, and
    truncated to the context if asked to; and its images by their first placeholder."""
    if not generates:
        raise EngineError("this model does not support generation", status=400)
    images: dict[int, ImageChunk] = {}
    if body.images:
        if loaded.vision is None:
            raise EngineError("this model has no vision projector: it cannot read images", 400)
        tokens, images = loaded.vision.tokenize(body.prompt, body.images)
    elif body.tokens is not None:
        tokens = list(body.tokens)
        if any(not 0 <= t < loaded.vocab.size for t in tokens):
            raise EngineError("token id out of range for this vocabulary", status=400)
    else:
        tokens = loaded.vocab.tokenize(body.prompt, add_special=True)
    if not tokens:
        raise EngineError("empty prompt", status=400)
    n_ctx = loaded.config.num_ctx
    if len(tokens) > n_ctx:
        if not body.truncate:
            raise EngineError(
                f"the input length ({len(tokens)} tokens) exceeds the context length "
                f"({n_ctx} tokens)",
                status=400,
            )
        tokens = _truncate(tokens, min(max(body.options.num_keep, 0), n_ctx - 1), n_ctx)
    if is_image(tokens[-1]):
        raise EngineError("the prompt must not end with an image: add text after it", 400)
    return tokens, images


def _truncate(tokens: list[int], keep: int, n_ctx: int) -> list[int]:
    """The first ``keep`` tokens and as many of the last as fit ``n_ctx``; an image cut
    by either edge is left out whole."""
    if keep < len(tokens) and is_image(tokens[keep]):
        keep -= offset_in_image(tokens[keep])
    start = len(tokens) - (n_ctx - keep)
    while start < len(tokens) and is_image(tokens[start]) and offset_in_image(tokens[start]):
        start += 1
    return tokens[:keep] + tokens[start:]


def _prefix_in_flight(loaded: Loaded, slots: list[Slot], tokens: list[int], scales: Scales) -> bool:
    """Whether a prompt still being evaluated for another request (with the same LoRA
    scales) holds a prefix of ``tokens`` worth sharing (identical system prompts arriving
    together): waiting one step for it to be in the cache beats evaluating it twice."""
    if not loaded.shares_prefixes:
        return False
    cached = max(_shared(s, tokens, scales) for s in slots)
    for slot in slots:
        gen = slot.gen
        if not (gen and gen.pending and gen.scales == scales):
            continue
        if _shared(slot, tokens, scales) == len(slot.cache):
            coming = len(slot.cache) + _common_prefix(gen.pending, tokens[len(slot.cache) :])
            if coming - cached >= _MIN_SHARED_PREFIX:
                return True
    return False


def _donor(
    slots: list[Slot], slot: Slot, tokens: list[int], scales: Scales, reuse: int
) -> tuple[Slot, int] | None:
    """Another sequence whose cache holds a longer prefix of ``tokens`` (computed under
    ``scales``) than ``slot``'s own, by enough to be worth copying: it, and the prefix's
    length."""
    best: tuple[Slot, int] | None = None
    best_len = reuse + _MIN_SHARED_PREFIX - 1
    for other in slots:
        if other is not slot:
            shared = _shared(other, tokens, scales)
            if shared > best_len:
                best, best_len = (other, shared), shared
    return best


def _start(
    loaded: Loaded,
    slots: list[Slot],
    request: Request,
    prompt: tuple[list[int], Scales],
    free: list[Slot],
    log: llama.LlamaLog,
    now: int,
) -> None:
    """Put ``request`` in the best free slot, keeping what its cache shares with the prompt
    (``prompt``: its tokens, and the LoRA scales they are to be evaluated with)."""
    tokens, scales = prompt
    slot = max(free, key=lambda s: (_shared(s, tokens, scales), -s.last_used))
    reuse = _reuse_cache(loaded, slots, slot, prompt)
    body = request.body
    opts = body.options
    sampler = _sampler(loaded, log, body, tokens)
    slot.gen = Generation(
        request=request,
        sampler=sampler,
        text=StreamedText(opts.stop),
        pending=tokens[reuse:],
        # The server caps it (LlamaServer.completion: 10 × num_ctx, as Ollama); here -1
        # means no limit.
        num_predict=opts.num_predict if opts.num_predict >= 0 else sys.maxsize,
        prompt_tokens=len(tokens) - reuse,
        prompt_cached=reuse,
        thinking=Thinking(
            end=body.think_end.encode("utf-8"),
            left=body.think_budget if body.think_end else -1,
        ),
        scales=scales,
    )
    slot.last_used = now
    start_drafting(loaded, slot.gen, tokens)
    if slot.gen.num_predict == 0:
        finish(slot, "length")


def _reuse_cache(
    loaded: Loaded, slots: list[Slot], slot: Slot, prompt: tuple[list[int], Scales]
) -> int:
    """Cut ``slot``'s sequence back to the prefix it shares with the prompt's tokens
    under its scales (copied from a donor first, if one shares more); the number of
    prompt tokens it saves."""
    tokens, scales = prompt
    reuse = _shared(slot, tokens, scales)
    slot.cache_scales = scales
    mem = L.llama_get_memory(loaded.ctx)
    donor = _donor(slots, slot, tokens, scales, reuse) if loaded.shares_prefixes else None
    if donor is not None:
        # Sequences live in streams of their own, so this copies the donor's stream
        # (at the next decode); the tail past the shared prefix is dropped below.
        lender, reuse = donor
        L.llama_memory_seq_rm(mem, slot.index, -1, -1)
        L.llama_memory_seq_cp(mem, lender.index, slot.index, -1, -1)
        slot.cache = lender.cache[:reuse]
    if reuse == len(tokens):
        reuse -= 1  # the last prompt token must be evaluated to get logits
    if reuse < len(tokens) and is_image(tokens[reuse]):
        reuse -= offset_in_image(tokens[reuse])  # an image is evaluated whole or not at all
    if not L.llama_memory_seq_rm(mem, slot.index, reuse, -1):
        # Recurrent caches cannot drop a tail; start the sequence afresh.
        L.llama_memory_seq_rm(mem, slot.index, -1, -1)
        reuse = 0
    del slot.cache[reuse:]
    return reuse


def _sampler(
    loaded: Loaded, log: llama.LlamaLog, body: CompletionRequest, prompt: list[int]
) -> llama.SlotSampler:
    log.begin()
    try:
        return llama.SlotSampler(
            loaded.vocab,
            body.options,
            [t for t in prompt if not is_image(t)],
            loaded.config.num_ctx,
            grammar=body.grammar,
            armed=not body.think_end,
        )
    except ValueError:
        raise EngineError(log.explain("invalid grammar"), status=400) from None


def _shared(slot: Slot, tokens: list[int], scales: Scales) -> int:
    """The prefix of ``tokens`` whose KV ``slot``'s cache holds: none when the cache was
    computed under other LoRA scales (its keys and values differ)."""
    return _common_prefix(slot.cache, tokens) if slot.cache_scales == scales else 0


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
