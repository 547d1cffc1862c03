"""The runner's watch over a thinking block (``Thinking.watch``), token by token.

Driven with pieces as a tokenizer cuts them; the sampler and the vocabulary are
stand-ins at the two seams the method touches (arming, and re-tokenizing a cut piece).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pollama.runner.thinking import Thinking


@dataclass
class Sampler:
    armed: bool = False

    def arm(self) -> None:
        self.armed = True


@dataclass
class Vocab:
    tokenized: list[str] = field(default_factory=list)

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        self.tokenized.append(text)
        return [ord(c) for c in text]


def watch(pieces: list[bytes], budget: int = -1) -> tuple[Thinking, Sampler, Vocab, list[Any]]:
    thinking = Thinking(end=b"</think>", left=budget)
    sampler, vocab = Sampler(), Vocab()
    out = [thinking.watch(vocab, sampler, i, p) for i, p in enumerate(pieces)]
    return thinking, sampler, vocab, out


def test_a_closing_tag_cut_across_tokens_arms_the_grammar_once_complete() -> None:
    thinking, sampler, _, out = watch([b"hmm", b" </", b"th", b"ink", b">\n\n"])
    assert [replay for _, replay in out] == [[]] * 5
    assert b"".join(piece for piece, _ in out) == b"hmm </think>\n\n"
    assert sampler.armed and not thinking.open


def test_nothing_is_armed_before_the_tag_is_complete() -> None:
    thinking, sampler, _, _ = watch([b"a </", b"thin", b"k"])
    assert not sampler.armed and thinking.end == b"</think>"


def test_text_run_on_past_the_tag_is_cut_and_the_token_replaced() -> None:
    _, sampler, vocab, out = watch([b"ok </think", b">Sure"])
    piece, replay = out[-1]
    assert piece == b">"
    assert vocab.tokenized == [">"] and replay == [ord(">")]
    assert sampler.armed


def test_the_budget_closes_the_block_after_that_many_tokens() -> None:
    thinking, sampler, vocab, out = watch([b"one", b" two"], budget=2)
    assert out[0] == (b"one", [])
    piece, replay = out[1]
    assert piece == b" two\n</think>\n\n"
    # The sampled token is decoded first, then the closing text the runner wrote.
    assert replay[0] == 1 and vocab.tokenized == ["\n</think>\n\n"]
    assert sampler.armed and not thinking.open
