"""The ``*_VISIBLE_DEVICES`` rule that GPU runtimes use to hide and reorder devices."""

from __future__ import annotations

from collections.abc import Callable


def visible_indices(raw: str | None, count: int, uuid_of: Callable[[int], str | None]) -> list[int]:
    """Indices out of ``count`` devices a runtime exposes, in the order it numbers them.

    ``raw`` is the variable's value; ``None`` (unset) exposes every device in
    order. Entries are indices or UUIDs (``GPU-…``; a unique prefix will do).
    The list ends at the first entry that names no device, as CUDA documents;
    an entry that repeats a device ends it too, since one GPU cannot be two.
    ``uuid_of`` is only called when an entry is not an index, and may return
    None for a device whose UUID is unknown.
    """
    if raw is None:
        return list(range(count))
    uuids: dict[int, str | None] = {}

    def uuid(index: int) -> str | None:
        if index not in uuids:
            uuids[index] = uuid_of(index)
        return uuids[index]

    chosen: list[int] = []
    for entry in (part.strip() for part in raw.split(",")):
        index = _resolve(entry, count, uuid)
        if index is None or index in chosen:
            break
        chosen.append(index)
    return chosen


def _resolve(entry: str, count: int, uuid: Callable[[int], str | None]) -> int | None:
    if entry.isdigit():
        index = int(entry)
        return index if index < count else None
    if not entry:
        return None
    wanted = entry.lower()
    matches = [i for i in range(count) if (uuid(i) or "").lower().startswith(wanted)]
    return matches[0] if len(matches) == 1 else None
