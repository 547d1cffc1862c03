"""Prompt-lookup drafting: guess a sequence's next tokens from its own context.

Text that copies its context (an edit of a paragraph, code, an answer quoting its
sources) repeats runs of tokens that are already there. ``Lookup`` indexes every
n-gram of a sequence's context (prompt and accepted output) by the position it
ends at; a draft is what followed the latest earlier occurrence of the context's
last n tokens, longest n first. The target model verifies a draft in the same
decode as the sequence's next token (``speculate``), so a wrong guess costs only
the extra rows of that decode.

``Pace`` keeps drafting from costing more than it saves: it lengthens drafts that
are accepted whole, shortens them after a rejection, and after a draft with
nothing accepted pauses drafting for a number of steps that doubles with each
such miss in a row, so that text with nothing to copy pays for one wasted row
now and then, not every step. Pure Python, no llama.cpp: unit-testable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

NGRAM_SIZES = (3, 2)
"""Suffix lengths tried, longest first: a longer match predicts the continuation
better; single tokens match too often by chance to be worth a decode row."""

_MAX_PAUSE = 64
"""The most steps drafting rests after a run of fully rejected drafts."""


@dataclass(eq=False)
class Lookup:
    """The n-gram index of one sequence's context, grown as tokens are accepted."""

    tokens: list[int] = field(default_factory=list)
    _ends: dict[tuple[int, ...], int] = field(default_factory=dict)

    def extend(self, tokens: Iterable[int]) -> None:
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        """Add one accepted token. The n-grams ending just before it are indexed only
        now, so every indexed n-gram has a continuation and the context's own suffix
        never matches itself."""
        seq = self.tokens
        seq.append(token)
        end = len(seq) - 2
        for n in NGRAM_SIZES:
            if end + 1 >= n:
                self._ends[tuple(seq[end + 1 - n : end + 1])] = end

    def draft(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens that followed the latest earlier occurrence of the
        context's longest matching suffix; none when no suffix occurred before."""
        seq = self.tokens
        if limit <= 0:
            return []
        for n in NGRAM_SIZES:
            if len(seq) <= n:
                continue
            end = self._ends.get(tuple(seq[-n:]))
            if end is not None:
                return seq[end + 1 : end + 1 + limit]
        return []


@dataclass(eq=False)
class Pace:
    """How long the next draft may be, from how the last ones fared."""

    max_length: int
    length: int = 4
    pause: int = 0
    """Steps left before drafting again."""
    _next_pause: int = 1
    drafted: int = 0
    accepted: int = 0

    def __post_init__(self) -> None:
        self.length = min(self.length, self.max_length)

    def allowance(self) -> int:
        """Draft tokens this step may verify (0: do not draft); counts a paused step."""
        if self.pause > 0:
            self.pause -= 1
            return 0
        return self.length

    def adapt(self, drafted: int, accepted: int) -> None:
        """One verified draft: ``accepted`` of its ``drafted`` tokens were right. (The
        totals are counted as verification goes: the request may end inside it.)"""
        if drafted <= 0:
            return
        if accepted == drafted:
            self.length = min(self.max_length, self.length * 2)
            self._next_pause = 1
        elif accepted == 0:
            self.length = max(1, self.length // 2)
            self.pause = self._next_pause
            self._next_pause = min(_MAX_PAUSE, self._next_pause * 2)
        else:
            self.length = max(1, accepted + 1)
            self._next_pause = 1
