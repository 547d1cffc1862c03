"""Combining schemas: local ``$ref``, merging ``allOf``, and telling ``oneOf`` parts apart.

Reasoning about several schemas at once, before any grammar is written:
``resolve`` follows a local reference, ``merge`` folds ``allOf`` parts (and a
``$ref`` with siblings) into one equivalent schema or refuses, and
``check_disjoint`` proves ``oneOf`` alternatives exclusive or refuses. It writes
no GBNF, so it imports neither ``rules`` nor the leaf types: only ``keywords``
and ``values``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote

from pollama.chat.grammar.keywords import ANNOTATIONS, TYPES, check_keywords, literal_values
from pollama.chat.grammar.values import (
    as_decimal,
    as_list,
    json_eq,
    json_types,
    show,
    types_overlap,
)
from pollama.errors import InvalidFormat, UnsupportedSchema

__all__ = ["check_disjoint", "merge", "resolve"]


def resolve(root: Mapping[str, Any], ref: object) -> object:
    """The schema a local ``$ref`` (a JSON pointer after '#') points to."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise UnsupportedSchema(
            "$ref", f"only references within the schema are supported: {show(ref)}"
        )
    pointer = ref[1:]
    if pointer and not pointer.startswith("/"):
        raise UnsupportedSchema("$ref", f"anchor references are not supported: {ref!r}")
    node: object = root
    for raw in pointer.split("/")[1:] if pointer else []:
        part = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise UnsupportedSchema("$ref", f"{ref!r} does not point into the schema")
    return node


def merge(root: Mapping[str, Any], parts: Sequence[object]) -> dict[str, Any]:
    """One schema equivalent to all of ``parts`` together (allOf), or UnsupportedSchema."""
    flat: list[Mapping[str, Any]] = []

    def add(part: object, refs: frozenset[str]) -> None:
        if part is True:
            return
        if part is False:
            raise UnsupportedSchema("allOf", "a part is `false`, so no value matches")
        if not isinstance(part, Mapping):
            raise InvalidFormat(f"invalid format: expected a schema object, got {show(part)}")
        check_keywords(part)
        rest = dict(part)
        if "$ref" in rest:
            ref = rest.pop("$ref")
            if not isinstance(ref, str) or ref in refs:
                raise UnsupportedSchema("$ref", f"a reference cycle through {show(ref)}")
            add(resolve(root, ref), refs | {ref})
        for sub in as_list(rest.pop("allOf"), "allOf") if "allOf" in rest else []:
            add(sub, refs)
        flat.append(rest)

    for part in parts:
        add(part, frozenset())
    merged: dict[str, Any] = {}
    for part in flat:
        for key, value in part.items():
            if key in ANNOTATIONS or key.startswith("x-"):
                continue
            merged[key] = _combine(key, merged[key], value) if key in merged else value
    _close_objects(flat, merged)
    return merged


def _combine(key: str, a: Any, b: Any) -> Any:
    """One value for ``key`` that enforces both ``a`` and ``b``, or UnsupportedSchema."""
    if json_eq(a, b):
        return a
    if key == "type":
        left, right = _type_set(a), _type_set(b)
        both = left & right
        if {"integer", "number"} & left and {"integer", "number"} & right:
            both |= {"integer"} if "number" not in both else set()
        if not both:
            raise UnsupportedSchema("allOf", "the parts have no type in common")
        return [t for t in TYPES if t in both]
    exclusive_flags = isinstance(a, bool) or isinstance(b, bool)
    if key in ("minLength", "minItems", "minimum", "exclusiveMinimum") and not exclusive_flags:
        return max(a, b, key=lambda v: as_decimal(v, key))
    if key in ("maxLength", "maxItems", "maximum", "exclusiveMaximum") and not exclusive_flags:
        return min(a, b, key=lambda v: as_decimal(v, key))
    if key == "required" and isinstance(a, list) and isinstance(b, list):
        return list(dict.fromkeys([*a, *b]))
    if key == "properties" and isinstance(a, Mapping) and isinstance(b, Mapping):
        out = dict(a)
        for name, sub in b.items():
            out[name] = {"allOf": [out[name], sub]} if name in out else sub
        return out
    if key == "items" and not isinstance(a, list) and not isinstance(b, list):
        return {"allOf": [a, b]}
    if key == "additionalProperties" and isinstance(a, bool) and isinstance(b, bool):
        return a and b
    if key == "enum" and isinstance(a, list) and isinstance(b, list):
        return [v for v in a if any(json_eq(v, w) for w in b)]
    if key in ("anyOf", "oneOf"):
        options = [{"allOf": [x, y]} for x in as_list(a, key) for y in as_list(b, key)]
        if len(options) > 64:
            raise UnsupportedSchema("allOf", f"combining two {key} lists gives too many cases")
        return options
    raise UnsupportedSchema("allOf", f"cannot combine two different {key!r} values")


def _close_objects(parts: list[Mapping[str, Any]], merged: dict[str, Any]) -> None:
    """Apply each part's own additionalProperties to the properties other parts add."""
    names = set(merged.get("properties", {})) | set(merged.get("required", []))
    for part in parts:
        extra = part.get("additionalProperties", True)
        if extra is True:
            continue
        foreign = sorted(names - set(part.get("properties", {})))
        if not foreign:
            continue
        if extra is False:
            raise UnsupportedSchema(
                "allOf", f"one part forbids the properties {foreign} that another adds"
            )
        props = dict(merged.get("properties", {}))
        for foreign_name in foreign:
            props[foreign_name] = {"allOf": [props.get(foreign_name, True), extra]}
        merged["properties"] = props


def check_disjoint(root: Mapping[str, Any], options: list[Any]) -> None:
    """Refuse ``oneOf`` alternatives unless no two can match the same value."""
    for i, a in enumerate(options):
        for b in options[i + 1 :]:
            if not _disjoint(root, a, b):
                raise UnsupportedSchema(
                    "oneOf",
                    "its alternatives may overlap and a grammar cannot make them exclusive; "
                    "use anyOf if matching several is fine",
                )


def _disjoint(root: Mapping[str, Any], a: object, b: object) -> bool:
    """True only when no JSON value can be valid against both schemas."""
    if not isinstance(a, Mapping) or not isinstance(b, Mapping):
        return False
    if "$ref" in a or "allOf" in a:
        return _disjoint(root, merge(root, [a]), b)
    if "$ref" in b or "allOf" in b:
        return _disjoint(root, a, merge(root, [b]))
    lits_a, lits_b = literal_values(a), literal_values(b)
    if lits_a is not None and lits_b is not None:
        return not any(json_eq(x, y) for x in lits_a for y in lits_b)
    types_a, types_b = _declared_types(a, lits_a), _declared_types(b, lits_b)
    if types_a is None or types_b is None:
        return False
    if not types_overlap(types_a, types_b):
        return True
    if types_a <= {"object"} and types_b <= {"object"}:
        props_a, props_b = a.get("properties", {}), b.get("properties", {})
        shared = set(a.get("required", [])) & set(b.get("required", []))
        return any(
            _disjoint(root, props_a[k], props_b[k]) for k in shared if k in props_a and k in props_b
        )
    return False


def _declared_types(schema: Mapping[str, Any], literals: list[Any] | None) -> set[str] | None:
    """The JSON types a schema admits by its own keywords, None when any type may pass."""
    if literals is not None:
        return set().union(*(json_types(v) for v in literals)) if literals else set()
    declared = schema.get("type")
    if isinstance(declared, str):
        return {declared}
    if isinstance(declared, list | tuple):
        return set(declared)
    return None


def _type_set(declared: object) -> set[str]:
    names = [declared] if isinstance(declared, str) else declared
    if not isinstance(names, list | tuple) or not all(isinstance(t, str) for t in names):
        raise UnsupportedSchema("type", f"must be a type name or a list of them: {show(declared)}")
    return set(names)
