"""Turn a request's ``format`` into a llama.cpp GBNF grammar.

``grammar_from_format`` is the entry point: ``None``/``""`` mean no grammar,
``"json"`` means any JSON object (Ollama's JSON mode), and a mapping is a JSON
schema handed to ``json_schema_to_grammar``. The grammar's start rule is always
``root``; the runner passes it to ``llama_sampler_init_grammar(vocab, text, "root")``.

Structured output **fails closed**: a schema keyword this converter cannot
enforce raises ``UnsupportedSchema`` naming it. We never emit a grammar that is
looser than the schema, because a client that asked for a schema trusts that the
output validates. The reverse is allowed and used freely: the grammar may accept
*fewer* documents than the schema (fixed property order, bounded digits, no
escapes where a raw character will do), since every document it accepts is
still valid.

Choices a client can notice, all in the "fewer documents" direction:

* Objects emit their declared ``properties`` in declared order. Required ones
  always appear, optional ones may be left out. ``additionalProperties``
  defaults to **false** when ``properties`` is given (as in OpenAI's strict
  mode), so a model cannot pad an object with invented keys; an object schema
  with neither keyword (``{"type": "object"}``) stays a free-form object. Extra
  keys, where allowed, follow the declared ones and never repeat a declared name.
* ``prefixItems`` tuples emit every listed item (up to ``maxItems``) and, unless
  ``items`` says otherwise, nothing after them.
* Without ``type``, the type is inferred from the keywords present
  (``{"minLength": 1}`` produces strings only); ``{}`` is any JSON value.
* ``oneOf`` is accepted only when its alternatives are provably disjoint
  (different types, different constants, or a shared required property with
  disjoint values, as in tagged unions); overlapping alternatives raise, since
  exclusivity cannot be expressed in a grammar.
* ``allOf`` is merged into one schema when the parts combine cleanly
  (intersected types and enums, tightest bounds, union of properties and
  required names); anything else raises.
* ``pattern`` takes the common ECMA-262 subset: literals, escapes, classes,
  ``.``, groups, ``|``, greedy or lazy quantifiers, ``^``/``$`` at the ends.
  Unanchored patterns match anywhere, as JSON Schema says.
* ``format`` supports ``date``, ``time``, ``date-time`` (RFC 3339, real calendar
  days, leap years included) and ``uuid``.
* Numbers carry at most 16 integer digits, 16 fraction digits and a two-digit
  exponent, so a model cannot spin on digits forever; bounded numbers
  (``minimum``/``maximum``/exclusives) are exact decimal ranges without
  exponents and with at most 15 significant digits, which keeps a float parse of
  the output on the right side of an exclusive bound. ``multipleOf`` works for
  integers when it divides 1 and for numbers when it is a power of ten.
* Whitespace between tokens is a single space or a newline plus up to 40
  spaces or tabs, so a model can pretty-print but cannot loop on blanks.
* ``enum``/``const`` values are written as compact JSON, keys in the given order.
  Extra object keys are spelled without escapes. Strings never escape UTF-16
  surrogates (a raw character does the job), which also keeps
  ``minLength`` exact.
* Lengths and repetitions are capped (``MAX_ITEMS``, ``keywords.MAX_LENGTH``);
  larger bounds raise instead of being silently dropped.
* Annotations (``title``, ``description``, ``default``, ``examples``, ``$comment``,
  ``x-*`` extensions, ...) are ignored, as are keywords whose value constrains
  nothing (``uniqueItems: false``) and keywords for another type than the one
  being generated (``minimum`` on a string), exactly as a validator would.

The grammar ends right after the value (no trailing whitespace), so once the
value is complete the grammar allows only end-of-generation tokens.

The package's files import one another top-down only: ``rules`` (GBNF text) and
``charsets`` (character sets) at the bottom; ``values`` and ``keywords`` (reading
JSON values and a schema's own keywords) on them; the leaf types ``regex``,
``strings`` and ``numbers`` next; ``combine`` (``$ref``/``allOf``/``oneOf``
reasoning) beside them; ``schema`` (the walker) above all of those; and this
file on top, importing ``schema`` plus the few building blocks it needs from
``rules``, ``values`` and ``keywords``. Code outside the package uses only the
names in ``__all__``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pollama.chat.grammar.keywords import MAX_ITEMS
from pollama.chat.grammar.rules import Grammar, lit
from pollama.chat.grammar.schema import Converter
from pollama.chat.grammar.values import show
from pollama.errors import InvalidFormat

__all__ = ["MAX_ITEMS", "grammar_from_format", "json_schema_to_grammar"]


def grammar_from_format(fmt: object) -> str:
    """The GBNF grammar for a request's ``format``; ``""`` when output is unconstrained.

    ``None`` and ``""`` give no grammar; ``"json"`` gives any JSON object; a
    mapping is a JSON schema. Anything else raises ``InvalidFormat``.
    """
    if fmt is None or fmt == "":
        return ""
    if fmt == "json":
        grammar = Grammar()
        return grammar.text(f"{grammar.prim('ws')} {grammar.prim('object')}")
    if isinstance(fmt, Mapping):
        return json_schema_to_grammar(fmt)
    raise InvalidFormat(f'invalid format: {show(fmt)}; expected "json" or a JSON schema object')


def json_schema_to_grammar(schema: Mapping[str, Any], *, prefix: str = "", suffix: str = "") -> str:
    """The GBNF grammar (start rule ``root``) for documents valid against ``schema``,
    written between the literal ``prefix`` and ``suffix`` (a tool call's tags).

    Raises ``UnsupportedSchema`` naming the keyword when part of the schema
    cannot be enforced, and ``InvalidFormat`` when the schema is malformed.
    """
    if not isinstance(schema, Mapping):
        raise InvalidFormat(f"invalid format: {show(schema)}; a JSON schema must be an object")
    converter = Converter(schema)
    try:
        top = converter.rule(schema, "schema")
    except RecursionError:
        raise InvalidFormat("invalid format: the JSON schema is nested too deeply") from None
    ws = converter.grammar.prim("ws")
    body = f"{ws} {top}"
    if prefix or suffix:
        head = f"{lit(prefix)} " if prefix else ""
        tail = f" {ws} {lit(suffix)}" if suffix else ""
        body = f"{head}{ws} {top}{tail}"
    return converter.grammar.text(body)
