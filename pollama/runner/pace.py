"""How long a sequence's next draft may be: drafting only where it pays.

A draft of k tokens makes the step's decode k rows longer, for every stream in the
batch; it pays back in the tokens accepted. What a row costs depends on the model and
the machine: next to nothing for a large model on a GPU, half a step or more for a
small one on a CPU, where one row takes the matrix-vector kernels and two take the
matrix-matrix ones. ``RowCost`` learns it from the steps decoded so far.

Each source of drafts (the n-gram size prompt lookup matched, or a draft model) keeps
its own record, because they fail differently: in free text two-token matches are
mostly chance while three-token ones often hold. ``Odds`` estimates how often a draft
token from that source is right. A source drafts only while that beats the cost of a
row (``break_even``); below it, it looks one token ahead now and then, after rests
that double with each miss, so text that starts copying is noticed. While it drafts,
the length follows the text: doubled after a draft accepted whole (copied text is
copied in long runs), what was right plus one after a partial one, halved after a
miss. Pure Python, no llama.cpp: unit-testable.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

ROW_COST = 0.5
"""What one more row adds to a one-row step, as a share of it, until measured."""

MIN_GAIN = 0.03
"""A draft must promise this much more than plain decoding: estimates err."""

FORGET = 0.9
"""Each verified draft keeps this share of the evidence before it: the odds follow
the text, whose start is not its quoted middle."""

_SMOOTHING = 0.05
"""Weight of the newest step in ``RowCost``'s running means (about the last 20)."""

_MAX_PAUSE = 64
"""The most drafting chances a source rests after a run of misses."""


def break_even(row_cost: float) -> float:
    """The odds a one-token draft needs to pay, when a row costs ``row_cost`` tokens:
    1 + p tokens for a step 1 + row_cost long, with ``MIN_GAIN`` to spare."""
    return (1.0 + row_cost) * (1.0 + MIN_GAIN) - 1.0


def stream_row_cost(streams: int, row_cost: float = ROW_COST) -> float:
    """What one more row costs when ``streams`` sequences share the step, in tokens of
    their decoding (every one of them waits for the longer step), given what a row adds
    to a one-row step."""
    streams = max(1, streams)
    return streams * row_cost / (1.0 + row_cost * (streams - 1))


@dataclass(eq=False)
class RowCost:
    """What a draft row costs on this model and machine, learnt from the decode steps.

    A step of ``streams`` generated tokens and no draft sets the base time for that
    many streams; a step with ``extra`` draft rows as well measures what each row adds
    to it. Steps with prompt rows say nothing about drafts and are not observed.
    """

    _base: dict[int, float] = field(default_factory=dict)
    """Streams → running mean of a step's time without drafts (seconds)."""
    _per_row: dict[int, float] = field(default_factory=dict)
    """Streams → running mean of what one draft row adds, as a share of that step."""

    def observe(self, streams: int, extra: int, seconds: float) -> None:
        if streams <= 0 or seconds <= 0:
            return
        base = self._base.get(streams)
        if extra == 0:
            self._base[streams] = seconds if base is None else _mean(base, seconds)
        elif base is not None:
            share = max(0.0, (seconds / base - 1.0) / extra)
            self._per_row[streams] = _mean(self._per_row.get(streams, share), share)

    def tokens_per_row(self, streams: int) -> float:
        """What one more row costs a step of ``streams``, in tokens of their decoding."""
        measured = self._per_row.get(streams)
        if measured is None:
            return stream_row_cost(streams)
        return max(1, streams) * measured


def _mean(mean: float, value: float) -> float:
    return mean + _SMOOTHING * (value - mean)


@dataclass(eq=False)
class Odds:
    """A draft token's chance of being right given the ones before it were: a Beta
    estimate that forgets."""

    hits: float = 1.0
    misses: float = 1.0

    @property
    def p(self) -> float:
        return self.hits / (self.hits + self.misses)

    def observe(self, drafted: int, accepted: int) -> None:
        self.hits = self.hits * FORGET + accepted
        self.misses = self.misses * FORGET + (1 if accepted < drafted else 0)


@dataclass(eq=False)
class SourcePace:
    """One source's odds, draft length and rest."""

    length: int = 1
    odds: Odds = field(default_factory=Odds)
    pause: int = 0
    """Drafting chances left before this source drafts again."""
    next_pause: int = 1

    def rest(self) -> None:
        self.pause = self.next_pause
        self.next_pause = min(_MAX_PAUSE, self.next_pause * 2)


@dataclass(eq=False)
class Pace:
    """One generation's drafting: a record per source, and its totals."""

    max_length: int
    drafted: int = 0
    accepted: int = 0
    _sources: dict[Hashable, SourcePace] = field(default_factory=dict)

    def source(self, name: Hashable) -> SourcePace:
        found = self._sources.get(name)
        if found is None:
            found = self._sources[name] = SourcePace()
        return found

    def allowance(self, limit: int, *, source: Hashable = None, row_cost: float = ROW_COST) -> int:
        """Draft tokens to verify this step, at most ``limit`` (0: do not draft), when a
        row costs ``row_cost`` tokens (``RowCost.tokens_per_row``); counts a chance a
        resting source lets pass."""
        limit = min(limit, self.max_length)
        if limit <= 0:
            return 0
        pace = self.source(source)
        if pace.pause > 0:
            pace.pause -= 1
            return 0
        if pace.odds.p < break_even(row_cost):  # not worth a row: one token to look
            pace.rest()
            return 1
        return min(limit, pace.length)

    def adapt(self, drafted: int, accepted: int, *, source: Hashable = None) -> None:
        """One verified draft: ``accepted`` of its ``drafted`` tokens were right. (The
        totals are counted as verification goes: the request may end inside it.)"""
        if drafted <= 0:
            return
        pace = self.source(source)
        pace.odds.observe(drafted, accepted)
        if accepted == drafted:
            pace.length = min(self.max_length, max(pace.length, 2 * drafted))
            pace.next_pause = 1
        elif accepted == 0:
            pace.length = max(1, pace.length // 2)
            pace.rest()
        else:
            pace.length = max(1, accepted + 1)
            pace.next_pause = 1
