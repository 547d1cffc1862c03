"""What a generation does with each token it samples: thinking, logprobs, stop strings,
the length limit, and the chunks it emits to its request."""

from __future__ import annotations

import numpy as np

from pollama.protocol.wire import CompletionChunk, CompletionDone, Logprob, TokenLogprob
from pollama.runner.bindings import L
from pollama.runner.state import Loaded, Slot


def sample(loaded: Loaded, slot: Slot) -> int:
    """Sample the slot's row of the batch just decoded; emit, finish, or queue the token
    (which it returns)."""
    gen = slot.gen
    assert gen is not None
    token = gen.sampler.sample(loaded.ctx, gen.batch_index)
    body = gen.request.body
    logprob = (
        logprob_of(loaded, gen.batch_index, token, body.top_logprobs) if body.logprobs else None
    )
    if loaded.vocab.is_eog(token):
        finish(slot, "stop")
        return token
    gen.generated += 1
    if gen.lookup is not None:
        gen.lookup.append(token)
    piece = loaded.vocab.piece(token)
    replay: list[int] = []
    if gen.thinking.open:
        piece, replay = gen.thinking.watch(loaded.vocab, gen.sampler, token, piece)
    out = gen.text.feed(piece)
    if logprob is not None:
        gen.logprobs.append(logprob)
    if out.text:
        # Logprobs of tokens whose text is still held back ride with the next text.
        gen.request.emit(CompletionChunk(out.text, tuple(gen.logprobs)))
        gen.logprobs = []
    if out.stopped:
        finish(slot, "stop", flush=False)
    elif gen.generated >= gen.num_predict:
        finish(slot, "length")
    elif replay:
        gen.pending = replay  # evaluated like prompt tokens; the last one samples
    else:
        gen.next_token = token
    return token


def finish(slot: Slot, reason: str, *, flush: bool = True) -> None:
    """Emit what text is held back and the request's figures; free the slot."""
    gen = slot.gen
    assert gen is not None
    tail = gen.text.finish().text if flush else ""
    if tail or gen.logprobs:
        gen.request.emit(CompletionChunk(tail, tuple(gen.logprobs)))
    gen.request.emit(
        CompletionDone(
            done_reason=reason,
            prompt_eval_count=gen.prompt_tokens,
            prompt_cached=gen.prompt_cached,
            prompt_eval_duration=gen.prompt_ns,
            eval_count=gen.generated,
            eval_duration=gen.eval_ns,
            draft_count=gen.pace.drafted if gen.pace else 0,
            draft_accepted=gen.pace.accepted if gen.pace else 0,
        )
    )
    slot.release()


def logprob_of(loaded: Loaded, index: int, token: int, top: int) -> Logprob:
    """The chosen token's log-probability under the raw logits, and the ``top`` best."""
    logits = np.ctypeslib.as_array(
        L.llama_get_logits_ith(loaded.ctx, index), shape=(loaded.vocab.size,)
    ).astype(np.float64)
    peak = logits.max()
    logsum = peak + np.log(np.exp(logits - peak).sum())
    tops: tuple[TokenLogprob, ...] = ()
    if top > 0:
        best = np.argpartition(-logits, top)[:top]
        best = best[np.argsort(-logits[best])]
        tops = tuple(_token_logprob(loaded, int(t), logits[t] - logsum) for t in best)
    chosen = _token_logprob(loaded, token, logits[token] - logsum)
    return Logprob(chosen.token, chosen.logprob, chosen.bytes, tops)


def _token_logprob(loaded: Loaded, token: int, logprob: float) -> TokenLogprob:
    piece = loaded.vocab.piece(token)
    return TokenLogprob(piece.decode("utf-8", errors="replace"), float(logprob), tuple(piece))
