"""How the command line shows sizes, times and tables: pure functions, as Ollama prints them.

Sizes are decimal (``105 MB``, ``1.3 GB``) as in ``ollama list``; relative times
read ``2 minutes ago`` / ``4 minutes from now``; tables are plain columns a
script can split on runs of spaces.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

_DECIMAL_UNITS = (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("KB", 1000))
_FOREVER_AFTER = timedelta(days=20 * 365)
"""An expiry further away than this is a model kept loaded forever."""


def human_bytes(n: int) -> str:
    """Decimal units: whole numbers from 10 up, one decimal below unless whole.

    ``human_bytes(105_000_000)`` → ``'105 MB'``, ``1_340_000_000`` → ``'1.3 GB'``.
    """
    for unit, size in _DECIMAL_UNITS:
        if n >= size:
            value = n / size
            if value >= 10 or value == math.trunc(value):
                return f"{math.trunc(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{n} B"


def human_duration(delta: timedelta) -> str:
    """A span as a person says it: ``'Less than a second'``, ``'About a minute'``, ``'3 days'``."""
    seconds = int(delta.total_seconds())
    if seconds < 1:
        return "Less than a second"
    if seconds < 60:
        return "1 second" if seconds == 1 else f"{seconds} seconds"
    minutes = seconds // 60
    if minutes < 60:
        return "About a minute" if minutes == 1 else f"{minutes} minutes"
    hours = round(delta.total_seconds() / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 14:
        return f"{hours // 24} days"
    if hours < 24 * 60:
        return f"{hours // (24 * 7)} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // (24 * 30)} months"
    return f"{int(delta.total_seconds() // (365 * 24 * 3600))} years"


def human_time(moment: datetime | None, now: datetime, *, never: str = "Never") -> str:
    """``'2 minutes ago'``, ``'4 minutes from now'``, ``'Forever'`` (decades away) or ``never``."""
    if moment is None:
        return never
    delta = moment - now
    if delta > _FOREVER_AFTER:
        return "Forever"
    if delta > timedelta(0):
        return human_duration(delta) + " from now"
    return human_duration(-delta) + " ago"


def until(expires_at: datetime | None, now: datetime) -> str:
    """The UNTIL column of ``ps``: when a loaded model will be unloaded."""
    if expires_at is not None and expires_at <= now:
        return "Stopping..."
    return human_time(expires_at, now, never="Forever")


def processor(size: int, size_vram: int) -> str:
    """Where a loaded model runs: ``'100% CPU'``, ``'100% GPU'`` or ``'48%/52% CPU/GPU'``."""
    if size_vram <= 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size <= 0 or size_vram > size:
        return "Unknown"
    cpu = round((size - size_vram) / size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 timestamp (nanoseconds allowed) as an aware datetime; None if absent."""
    if not text:
        return None
    date, dot, rest = text.partition(".")
    if dot:  # Python keeps microseconds: cut the fraction to 6 digits, keep the offset
        fraction = rest[: len(rest) - len(rest.lstrip("0123456789"))]
        text = f"{date}.{fraction[:6]}{rest[len(fraction) :]}" if fraction else date + rest
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def go_duration(nanoseconds: int) -> str:
    """A duration written as Go writes one, to microsecond precision: ``1.234567s``,
    ``12.345ms``, ``2m3.5s``."""
    ns = int(nanoseconds)
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_trim(ns / 1_000, 3)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_trim(ns / 1_000_000, 3)}ms"
    seconds = ns / 1e9
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    text = f"{_trim(seconds, 6)}s"
    if hours:
        return f"{sign}{int(hours)}h{int(minutes)}m{text}"
    if minutes:
        return f"{sign}{int(minutes)}m{text}"
    return sign + text


def _trim(value: float, places: int) -> str:
    text = f"{value:.{places}f}".rstrip("0").rstrip(".")
    return text or "0"


def rate(count: int, nanoseconds: int) -> str:
    """Tokens per second, two decimals; ``'n/a'`` without a duration."""
    if nanoseconds <= 0:
        return "n/a"
    return f"{count / (nanoseconds / 1e9):.2f} tokens/s"


def columns(header: Sequence[str], rows: Sequence[Sequence[str]], gap: int = 4) -> str:
    """Left-aligned plain-text columns, separated by at least ``gap`` spaces; no trailing
    spaces."""
    table = [list(header), *[list(row) for row in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for row in table:
        cells = [cell.ljust(width + gap) for cell, width in zip(row, widths, strict=True)]
        lines.append("".join(cells).rstrip())
    return "\n".join(lines)


class WordWrapper:
    """Wraps streamed text at word boundaries to a width, a piece at a time.

    ``feed`` returns what can be printed now: a word is held back until a space,
    a newline or ``flush`` ends it, so it is never split across lines (a word
    longer than the width is printed as is). Spaces where a line is broken are
    dropped.
    """

    def __init__(self, width: int) -> None:
        self.width = max(width, 1)
        self._column = 0
        self._spaces = 0
        self._word: list[str] = []

    def feed(self, text: str) -> str:
        out: list[str] = []
        for char in text:
            if char == "\n":
                out.append(self._take_word() + "\n")
                self._column = self._spaces = 0
            elif char == " ":
                out.append(self._take_word())
                self._spaces += 1
            else:
                self._word.append(char)
        return "".join(out)

    def flush(self) -> str:
        """The word held back, at the end of the text."""
        return self._take_word()

    def _take_word(self) -> str:
        if not self._word:
            return ""
        word = "".join(self._word)
        self._word.clear()
        if self._column > 0 and self._column + self._spaces + len(word) > self.width:
            self._column, self._spaces = len(word), 0
            return "\n" + word
        text = " " * self._spaces + word
        self._column += len(text)
        self._spaces = 0
        return text
