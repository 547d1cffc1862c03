"""The runner's watch over a thinking block (``Engine._watch_thinking``), token by token.

Driven with pieces as a tokenizer cuts them; the sampler and the vocabulary are
stand-ins at the two seams the method touches (arming, and re-tokenizing a cut piece).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pollama.runner.engine import Engine, Slot


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


@dataclass
class Loaded:
    vocab: Vocab = field(default_factory=Vocab)


def watch(pieces: list[bytes], budget: int = -1) -> tuple[Slot, Loaded, list[Any]]:
    slot = Slot(index=0)
    slot.sampler = Sampler()  # type: ignore[assignment]
    slot.think_end, slot.think_left = b"</think>", budget
    loaded = Loaded()
    out = [Engine._watch_thinking(loaded, slot, i, p) for i, p in enumerate(pieces)]  # type: ignore[arg-type]
    return slot, loaded, out


def test_a_closing_tag_cut_across_tokens_arms_the_grammar_once_complete() -> None:
    slot, _, out = watch([b"hmm", b" </", b"th", b"ink", b">\n\n"])
    assert [replay for _, replay in out] == [[]] * 5
    assert b"".join(piece for piece, _ in out) == b"hmm </think>\n\n"
    assert slot.sampler.armed and not slot.think_end  # type: ignore[union-attr]


def test_nothing_is_armed_before_the_tag_is_complete() -> None:
    slot, _, _ = watch([b"a </", b"thin", b"k"])
    assert not slot.sampler.armed and slot.think_end == b"</think>"  # type: ignore[union-attr]


def test_text_run_on_past_the_tag_is_cut_and_the_token_replaced() -> None:
    slot, loaded, out = watch([b"ok </think", b">Sure"])
    piece, replay = out[-1]
    assert piece == b">"
    assert loaded.vocab.tokenized == [">"] and replay == [ord(">")]
    assert slot.sampler.armed  # type: ignore[union-attr]


def test_the_budget_closes_the_block_after_that_many_tokens() -> None:
    slot, loaded, out = watch([b"one", b" two"], budget=2)
    assert out[0] == (b"one", [])
    piece, replay = out[1]
    assert piece == b" two\n</think>\n\n"
    # The sampled token is decoded first, then the closing text the runner wrote.
    assert replay[0] == 1 and loaded.vocab.tokenized == ["\n</think>\n\n"]
    assert slot.sampler.armed and not slot.think_end  # type: ignore[union-attr]
