"""Which replica should serve a request: the routing decision, with no Ray in it.

A request carries a ``Hint``: its model, and a key for its conversation (the model, the
system prompt and the first user message: what every later turn starts with, so
what a replica's prefix cache holds for it). ``rank`` orders the replicas:

1. the replica that served this conversation before (prefix affinity);
2. replicas that have the model loaded (model affinity);
3. the others, where a load would be needed.

Ray Serve probes a rank's replicas for room (``max_ongoing_requests``) and takes the
least loaded that has some; a rank with none falls through to the next, so a saturated
favourite gives way to the least loaded replica rather than a queue.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_MAX_BODY_PEEK = 4 * 1024 * 1024
"""The most of a body parsed for a hint: a larger one (an upload) routes on nothing."""


@dataclass(frozen=True)
class Hint:
    model: str = ""
    """The model asked for, with its tag (``smollm2:latest``); "" for none."""
    prefix: str = ""
    """The conversation's key; "" when the request has no conversation."""


@dataclass(frozen=True)
class ReplicaView:
    """What the router knows of one replica."""

    id: str
    models: frozenset[str] = frozenset()
    """Models loaded there (its ``/api/ps``, as last reported)."""
    prefixes: frozenset[str] = frozenset()
    """Conversation keys it served lately (as last reported)."""


def full_name(model: str) -> str:
    """``smollm2`` → ``smollm2:latest``, as the server lists loaded models."""
    model = model.strip()
    if not model:
        return ""
    last = model.rsplit("/", 1)[-1]
    return model if ":" in last else f"{model}:latest"


def hint_for(body: bytes, content_type: str = "application/json") -> Hint:
    """The hint a request body gives; an empty one for anything that is not a JSON
    object naming a model (the replica answers it as it would)."""
    if not body or len(body) > _MAX_BODY_PEEK or "json" not in content_type:
        return Hint()
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return Hint()
    if not isinstance(parsed, dict):
        return Hint()
    model = parsed.get("model")
    if not isinstance(model, str) or not model.strip():
        return Hint()
    name = full_name(model)
    opening = _opening(parsed)
    return Hint(name, _key(name, opening) if opening is not None else "")


def _opening(body: Mapping[str, Any]) -> Any:
    """What every turn of this conversation starts with: the system prompt and the
    first user message (chat, Anthropic's messages, Responses' input), or the prompt."""
    system = body.get("system")
    messages = body.get("messages")
    if isinstance(messages, list):
        first_user = next(
            (m for m in messages if isinstance(m, dict) and m.get("role") == "user"), None
        )
        systems = [m for m in messages if isinstance(m, dict) and m.get("role") == "system"]
        return [system, systems[:1], first_user] if first_user is not None else None
    inputs = body.get("input")
    if isinstance(inputs, list) and inputs:
        return [system, body.get("instructions"), inputs[0]]
    for field in ("prompt", "input"):
        value = body.get(field)
        if isinstance(value, str) and value:
            return [system, value[:2048]]
    return None


def _key(model: str, opening: Any) -> str:
    text = json.dumps([model, opening], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def rank(
    replicas: Sequence[ReplicaView],
    hint: Hint,
    last: str | None = None,
    loaded_on: str | None = None,
) -> list[list[str]]:
    """Replica ids, best first, in ranks (see the module's docstring). ``last``: the
    replica this conversation was last sent to; ``loaded_on``: the one this model was
    last sent to; both as the router remembers them, ahead of the replicas' reports."""
    first = [r.id for r in replicas if hint.prefix and (r.id == last or hint.prefix in r.prefixes)]
    warm = [
        r.id
        for r in replicas
        if hint.model and (hint.model in r.models or r.id == loaded_on) and r.id not in first
    ]
    rest = [r.id for r in replicas if r.id not in first and r.id not in warm]
    return [group for group in (first, warm, rest) if group]


class Recent:
    """A bounded memory of key → value, oldest forgotten first (conversations → the
    replica that served them; the keys a replica served)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._items: OrderedDict[str, str] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def get(self, key: str) -> str | None:
        return self._items.get(key)

    def put(self, key: str, value: str = "") -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)

    def keys(self) -> list[str]:
        return list(self._items)

    def forget_value(self, value: str) -> None:
        """Drop every key that maps to ``value`` (a replica that died)."""
        for key in [k for k, v in self._items.items() if v == value]:
            del self._items[key]
