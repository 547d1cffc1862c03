"""Whether a draft model speaks its target's vocabulary (Modelfile ``DRAFT``), from the
two GGUF headers.

A draft model proposes token ids that the target verifies; if an id means another
piece of text to each, every draft is wasted work at best. The rule is the lenient
one llama.cpp's speculative examples apply, written here from their description:
the same tokenizer model, the same BOS and EOS ids, token lists whose lengths differ
by at most ``MAX_SIZE_DIFFERENCE`` (conversions pad vocabularies differently), and
equal token texts over the ids both have from ``FIRST_COMPARED`` on (the first few
are control tokens some conversions name differently). A draft token the target
does not have is dropped by the runner, never verified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pollama.errors import DraftVocabularyMismatch
from pollama.ggufmeta import GGUFModel, read_model

MAX_SIZE_DIFFERENCE = 128
FIRST_COMPARED = 5


@dataclass(frozen=True)
class Vocabulary:
    """What of a GGUF's tokenizer the comparison reads."""

    model: str
    tokens: Sequence[str]
    bos: int | None
    eos: int | None

    @classmethod
    def of(cls, gguf: GGUFModel) -> Vocabulary:
        """From a header read with every array in full (``max_array_len=-1``)."""
        tokens = gguf.get("tokenizer.ggml.tokens")
        return cls(
            model=str(gguf.get("tokenizer.ggml.model", "")),
            tokens=tokens if isinstance(tokens, list) else [],
            bos=_int_or_none(gguf.get("tokenizer.ggml.bos_token_id")),
            eos=_int_or_none(gguf.get("tokenizer.ggml.eos_token_id")),
        )


def vocabulary_difference(draft: Vocabulary, target: Vocabulary) -> str | None:
    """The first way ``draft``'s vocabulary differs from ``target``'s, in words; None when
    a draft made with one can be verified by the other."""
    if draft.model != target.model:
        return f'its tokenizer is "{draft.model}", the model\'s is "{target.model}"'
    if not draft.tokens or not target.tokens:
        return "one of them has no token list"
    n_draft, n_target = len(draft.tokens), len(target.tokens)
    if abs(n_draft - n_target) > MAX_SIZE_DIFFERENCE:
        return (
            f"it has {n_draft} tokens, the model {n_target} (at most {MAX_SIZE_DIFFERENCE} apart)"
        )
    for what, mine, theirs in (("BOS", draft.bos, target.bos), ("EOS", draft.eos, target.eos)):
        if mine != theirs:
            return f"its {what} token is {mine}, the model's is {theirs}"
    for token_id in range(FIRST_COMPARED, min(n_draft, n_target)):
        if draft.tokens[token_id] != target.tokens[token_id]:
            return (
                f"token {token_id} is {draft.tokens[token_id]!r} in the draft "
                f"and {target.tokens[token_id]!r} in the model"
            )
    return None


def check_draft(draft_path: Path, draft_name: str, model_path: Path, model_name: str) -> None:
    """DraftVocabularyMismatch (400) naming both models unless the draft at ``draft_path``
    can draft for the model at ``model_path``; InvalidModelFile if either is no GGUF."""
    draft = Vocabulary.of(read_model(draft_path, max_array_len=-1))
    target = Vocabulary.of(read_model(model_path, max_array_len=-1))
    difference = vocabulary_difference(draft, target)
    if difference is not None:
        raise DraftVocabularyMismatch(draft_name, model_name, difference)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
