"""The per-request ``lora`` field: LoRA adapter scales, as llama-server takes them.

``"lora": [{"id": 0, "scale": 0.5}]`` at the top level of ``/api/generate``,
``/api/chat``, ``/v1/chat/completions`` and ``/v1/completions``: ids index the model's
adapters in ADAPTER order; adapters the list leaves out are off (scale 0); no list (or
an empty one) keeps every adapter at its load scale, 1.0. The runner applies the rule;
here the field is typed at the edge and checked against the model before anything loads.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ConfigDict, Field

from pollama.api.wiremodel import WireModel
from pollama.errors import BadRequest
from pollama.protocol.wire import LoraScale
from pollama.scheduler.loaded import ModelSpec


class LoraEntry(WireModel):
    """One adapter's scale for this request."""

    model_config = ConfigDict(extra="forbid")
    id: int = Field(ge=0, strict=True)
    scale: float = Field(allow_inf_nan=False)


def lora_scales(entries: Sequence[LoraEntry] | None) -> tuple[LoraScale, ...]:
    """The wire form of a request's ``lora`` list; duplicate ids are a 400."""
    scales = tuple(LoraScale(entry.id, entry.scale) for entry in entries or ())
    seen: set[int] = set()
    for entry in scales:
        if entry.id in seen:
            raise BadRequest(f"lora id {entry.id} is given more than once")
        seen.add(entry.id)
    return scales


def check_lora(spec: ModelSpec, lora: Sequence[LoraScale]) -> None:
    """A 400, before the model loads, for an id the model has no adapter for."""
    count = len(spec.adapters)
    for entry in lora:
        if entry.id >= count:
            have = f"it has {count} (ids 0-{count - 1})" if count else "it was created without any"
            raise BadRequest(
                f'lora id {entry.id}: "{spec.name}" has no LoRA adapter with that id; {have}'
            )
