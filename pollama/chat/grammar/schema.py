"""Walking a JSON schema: dispatch by keyword and type, literals, objects and arrays.

The top of the package below ``__init__``: ``Converter`` walks one schema,
giving every subschema a rule. Combinators (``$ref``, ``allOf``, ``anyOf``,
``oneOf``) are first rewritten by ``combine`` and walked again; literals, objects
and arrays are written here, since they recurse into subschemas; strings and
numbers are handed to their leaf files. It may import every other file of the
package: ``rules``, ``values``, ``keywords``, ``strings``, ``numbers`` and
``combine``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeAlias

from pollama.chat.grammar.combine import check_disjoint, merge, resolve
from pollama.chat.grammar.keywords import (
    ANNOTATIONS,
    MAX_ITEMS,
    check_keywords,
    constraining,
    literal_values,
    schema_types,
)
from pollama.chat.grammar.numbers import Numbers
from pollama.chat.grammar.rules import Grammar, lit, paren, seq
from pollama.chat.grammar.strings import key_except, string_rule
from pollama.chat.grammar.values import (
    as_count,
    as_list,
    canonical,
    json_text,
    json_types,
    show,
    types_overlap,
)
from pollama.errors import InvalidFormat, UnsupportedSchema

__all__ = ["Converter"]

_ABSENT: Any = object()
_Member: TypeAlias = tuple[str, object, bool]  # property name, its schema, whether required


class Converter:
    """Walks one JSON schema and builds its grammar."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.grammar = Grammar()
        self._rules: dict[str, str] = {}  # canonical schema text -> rule name
        # Schemas being converted since the last '{' or '['; meeting one of them
        # again would be left recursion, which llama.cpp rejects.
        self._unguarded: list[set[str]] = [set()]
        self._numbers = Numbers(self.grammar)

    # -- dispatch

    def rule(self, schema: object, hint: str) -> str:
        """The name of a rule (or a building block) matching ``schema``."""
        if schema is True:
            return self.grammar.prim("value")
        if schema is False:
            raise UnsupportedSchema("false", "the schema `false` matches no value")
        if not isinstance(schema, Mapping):
            raise InvalidFormat(f"invalid format: expected a schema object, got {show(schema)}")
        check_keywords(schema)
        if not constraining(schema):
            return self.grammar.prim("value")
        key = canonical(schema)
        if key in self._rules:
            if key in self._unguarded[-1]:
                raise UnsupportedSchema(
                    "$ref", "a schema that refers to itself without an object or array in between"
                )
            return self._rules[key]
        name = self.grammar.fresh(hint)
        self._rules[key] = name
        self._unguarded[-1].add(key)
        try:
            body = self._body(schema, name)
        finally:
            self._unguarded[-1].discard(key)
        self.grammar.define(name, body)
        return name

    @contextmanager
    def _nested(self) -> Iterator[None]:
        """Children of an object or array: they come after a '{' or '[', so recursion is fine."""
        self._unguarded.append(set())
        try:
            yield
        finally:
            self._unguarded.pop()

    def _body(self, schema: Mapping[str, Any], name: str) -> str:
        def rest_without(keyword: str) -> dict[str, Any]:
            return {k: v for k, v in schema.items() if k != keyword and k not in ANNOTATIONS}

        if "$ref" in schema:
            ref = schema["$ref"]
            rest = rest_without("$ref")
            if not constraining(rest):
                return self.rule(resolve(self.root, ref), _ref_hint(ref))
            return self.rule(merge(self.root, [{"$ref": ref}, rest]), name)
        if "allOf" in schema:
            parts = as_list(schema["allOf"], "allOf")
            return self.rule(merge(self.root, [rest_without("allOf"), *parts]), name)
        for keyword in ("oneOf", "anyOf"):
            if keyword in schema:
                options = [o for o in as_list(schema[keyword], keyword) if o is not False]
                if not options:
                    raise UnsupportedSchema(keyword, "every alternative is `false`")
                rest = rest_without(keyword)
                if constraining(rest):
                    options = [merge(self.root, [rest, option]) for option in options]
                if keyword == "oneOf":
                    check_disjoint(self.root, options)
                rules = [self.rule(option, f"{name}-{i}") for i, option in enumerate(options)]
                return " | ".join(dict.fromkeys(rules))
        if "enum" in schema or "const" in schema:
            return _literals(schema)
        branches = [self._typed(t, schema, name) for t in schema_types(schema)]
        if len(branches) == 1:
            return branches[0]
        return " | ".join(paren(branch) for branch in branches)

    def _typed(self, type_name: str, schema: Mapping[str, Any], name: str) -> str:
        if type_name == "null":
            return self.grammar.prim("null")
        if type_name == "boolean":
            return self.grammar.prim("boolean")
        if type_name == "string":
            return string_rule(self.grammar, schema, name)
        if type_name in ("integer", "number"):
            return self._numbers.number(schema, integer=type_name == "integer")
        if type_name == "object":
            return self._object(schema, name)
        return self._array(schema, name)

    # -- objects

    def _object(self, schema: Mapping[str, Any], name: str) -> str:
        g = self.grammar
        members, extra = _members(schema)
        with self._nested():
            pairs = []
            for key, sub, is_required in members:
                value = self.rule(sub, f"{name}-{key}")
                kv = g.helper(
                    f"{name}-{key}-kv",
                    f'{lit(json_text(key, "properties"))} ws ":" ws {value} ws',
                )
                pairs.append((kv, is_required))
            extra_kv = ""
            if extra is not False:
                value = self.rule(extra, f"{name}-value")
                key_rule = key_except(g, [key for key, _, _ in members], name)
                extra_kv = g.helper(f"{name}-extra-kv", f'{key_rule} ws ":" ws {value} ws')
        g.prim("ws")
        return _object_body(g, pairs, extra_kv, name)

    # -- arrays

    def _array(self, schema: Mapping[str, Any], name: str) -> str:
        g = self.grammar
        items = schema.get("items", _ABSENT)
        prefix = schema.get("prefixItems", [])
        if isinstance(items, list | tuple):  # draft 4-2019 tuple form
            if "prefixItems" in schema:
                raise UnsupportedSchema("items", "an array of schemas together with prefixItems")
            prefix, items = items, schema.get("additionalItems", _ABSENT)
        if not isinstance(prefix, list | tuple):
            raise UnsupportedSchema("prefixItems", "must be an array of schemas")
        if items is _ABSENT:
            rest: object = None if prefix else True  # tuples stay tuples
        else:
            rest = None if items is False else items
        lo = as_count(schema, "minItems", MAX_ITEMS) or 0
        hi = as_count(schema, "maxItems", MAX_ITEMS)
        if hi is not None and lo > hi:
            raise UnsupportedSchema("minItems", "is greater than maxItems")
        fixed = list(prefix) if hi is None else list(prefix)[:hi]
        if any(p is False for p in fixed):
            raise UnsupportedSchema("prefixItems", "an item schema is false")
        more_lo = max(0, lo - len(fixed))
        more_hi = None if hi is None else hi - len(fixed)
        if rest is None:
            if more_lo:
                raise UnsupportedSchema("minItems", "asks for more items than prefixItems allows")
            more_hi = 0

        with self._nested():
            fixed_rules = [self.rule(p, f"{name}-{i}") for i, p in enumerate(fixed)]
            item = self.rule(rest, f"{name}-item") if rest is not None and more_hi != 0 else ""
        g.prim("ws")
        parts = [f"{r} ws" if i == 0 else f'"," ws {r} ws' for i, r in enumerate(fixed_rules)]
        if item:
            following = g.helper(f"{name}-next", f'"," ws {item} ws')
            if fixed_rules:
                parts.append(g.repeat(following, more_lo, more_hi))
            else:
                tail_hi = None if more_hi is None else more_hi - 1
                run = seq(f"{item} ws", g.repeat(following, max(0, more_lo - 1), tail_hi))
                parts.append(run if more_lo else f"( {run} )?")
        return seq('"[" ws', *parts, '"]"')


def _literals(schema: Mapping[str, Any]) -> str:
    """GBNF for exactly the values ``enum``/``const`` allow (and ``type``, if given, admits)."""
    values = literal_values(schema)
    assert values is not None
    keyword = "enum" if "enum" in schema else "const"
    others = [k for k in constraining(schema) if k not in ("enum", "const", "type")]
    if others:
        raise UnsupportedSchema(others[0], "cannot be combined with enum or const")
    if "type" in schema:
        allowed = set(schema_types(schema))
        values = [v for v in values if types_overlap(json_types(v), allowed)]
    texts = list(dict.fromkeys(json_text(v, keyword) for v in values))
    if not texts:
        raise UnsupportedSchema(keyword, "no listed value satisfies the rest of the schema")
    return " | ".join(lit(text) for text in texts)


def _members(schema: Mapping[str, Any]) -> tuple[list[_Member], bool | Mapping[str, Any]]:
    """An object's members in output order, and the schema of extra keys (False: none).

    Declared properties come first, in declared order; required names that are
    not declared follow with the extra-key schema, since they must appear.
    """
    props = schema.get("properties", {})
    if not isinstance(props, Mapping):
        raise UnsupportedSchema("properties", "must be an object")
    required = schema.get("required", [])
    if not isinstance(required, list | tuple) or not all(isinstance(r, str) for r in required):
        raise UnsupportedSchema("required", "must be an array of property names")
    extra = schema.get("additionalProperties", "properties" not in schema)
    if not isinstance(extra, bool | Mapping):
        raise UnsupportedSchema("additionalProperties", "must be a boolean or a schema")

    members: list[_Member] = []
    for key, sub in props.items():
        if sub is False:
            if key in required:
                raise UnsupportedSchema("required", f"{key!r} is required but its schema is false")
            continue
        members.append((key, sub, key in required))
    for key in dict.fromkeys(required):
        if key not in props:
            if extra is False:
                raise UnsupportedSchema(
                    "required",
                    f"{key!r} is required but not among the properties, "
                    "and additional properties are not allowed",
                )
            members.append((key, extra, True))
    return members, extra


def _object_body(g: Grammar, pairs: list[tuple[str, bool]], extra_kv: str, name: str) -> str:
    """The object around its members' key-value rules, optional ones skippable, extras last."""
    # Build from the back: after[i] follows once something was written (so it
    # starts with a comma), first[i] starts the object at property i.
    after = g.helper(f"{name}-more", f'( "," ws {extra_kv} )*') if extra_kv else ""
    first = g.helper(f"{name}-extras", f"( {extra_kv} {after} )?") if extra_kv else ""
    for i in range(len(pairs) - 1, -1, -1):
        kv, is_required = pairs[i]
        start = seq(kv, after)
        if is_required:
            first_body = start
        elif first:
            first_body = f"{start} | {first}"
        else:
            first_body = f"( {start} )?"
        first = g.helper(f"{name}-from-{i}", first_body)
        if i > 0:
            step = f'"," ws {kv}' if is_required else f'( "," ws {kv} )?'
            after = g.helper(f"{name}-after-{i}", seq(step, after))
    return seq('"{" ws', first, '"}"')


def _ref_hint(ref: object) -> str:
    return str(ref).rstrip("/").rsplit("/", 1)[-1] or "ref"
