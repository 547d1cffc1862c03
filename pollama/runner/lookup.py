"""Prompt-lookup drafting: guess a sequence's next tokens from its own context.

Text that copies its context (an edit of a paragraph, code, an answer quoting its
sources) repeats runs of tokens that are already there. ``Lookup`` indexes every
n-gram of a sequence's context (prompt and accepted output) by the position it
ends at; a draft is what followed the latest earlier occurrence of the context's
last n tokens, longest n first. The target model verifies a draft in the same
decode as the sequence's next token (``speculate``), so a wrong guess costs only
the extra rows of that decode; ``pace`` decides how many rows a match is worth,
from how the matches of its length fared. Pure Python, no llama.cpp: unit-testable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

NGRAM_SIZES = (3, 2)
"""Suffix lengths tried, longest first: a longer match predicts the continuation
better; single tokens match too often by chance to be worth a decode row."""


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

    def find(self, limit: int) -> tuple[int, list[int]]:
        """Up to ``limit`` tokens that followed the latest earlier occurrence of the
        context's longest matching suffix, with that suffix's length; (0, []) when no
        suffix occurred before."""
        seq = self.tokens
        if limit <= 0:
            return 0, []
        for n in NGRAM_SIZES:
            if len(seq) <= n:
                continue
            end = self._ends.get(tuple(seq[-n:]))
            if end is not None:
                return n, seq[end + 1 : end + 1 + limit]
        return 0, []
