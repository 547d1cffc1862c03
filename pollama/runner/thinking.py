"""A reply's way through its thinking block, token by token.

A grammar that constrains the answer waits (``SlotSampler(armed=False)``) until the
model closes its thinking block; this watches for the closing text, arms the grammar
when it comes, and closes the block itself when a thinking budget runs out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class Tokenizer(Protocol):
    def tokenize(self, text: str, add_special: bool = True) -> list[int]: ...


class Armable(Protocol):
    def arm(self) -> None: ...


@dataclass(eq=False)
class Thinking:
    """Where a reply stands in its thinking block."""

    end: bytes = b""
    """While set, the reply is inside a thinking block that these bytes close; a
    grammar waits for them."""
    left: int = -1
    """Thinking tokens left before the runner closes the block itself (-1: no limit)."""
    tail: bytes = b""
    """The last bytes seen, so an end cut across tokens is still found."""

    @property
    def open(self) -> bool:
        return bool(self.end)

    def watch(
        self, vocab: Tokenizer, sampler: Armable, token: int, piece: bytes
    ) -> tuple[bytes, list[int]]:
        """Follow a reply through its thinking block; at its end, arm a waiting grammar.

        Returns the bytes to emit for this token and, when the block's end is not simply
        this token, the tokens to decode instead of it:

        - the token ran on past the end into text the grammar never saw: decode exactly
          the text up to the end, so the constrained answer starts right after it;
        - the thinking budget ran out: decode the token and then the closing text, which
          is emitted too, as if the model had written it.
        """
        end = self.end
        tail = self.tail + piece
        at = tail.find(end)
        if at < 0:
            if self.left > 0:
                self.left -= 1
            if self.left != 0:
                self.tail = tail[-(len(end) - 1) :] if len(end) > 1 else b""
                return piece, []
            closing = b"\n" + end + b"\n\n"
            self.end = self.tail = b""
            sampler.arm()
            text = closing.decode("utf-8", errors="ignore")
            return piece + closing, [token, *vocab.tokenize(text, add_special=False)]
        self.end = self.tail = b""
        sampler.arm()
        beyond = tail[at + len(end) :]
        if not beyond.strip():
            return piece, []
        kept = piece[: len(piece) - len(beyond)]
        return kept, vocab.tokenize(kept.decode("utf-8", errors="ignore"), add_special=False)
