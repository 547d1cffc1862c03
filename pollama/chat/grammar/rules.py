"""GBNF text: the rule set under construction, its fixed building blocks, and literals.

The bottom of the package: everything that spells GBNF syntax (rule names,
string literals, sequences, bounded repetition that llama.cpp keeps exact) lives
here, so no other file needs to know how GBNF quotes or repeats. It imports
nothing from the package; every other file may import it.
"""

from __future__ import annotations

import re

__all__ = ["Grammar", "escape_code", "is_atom", "lit", "paren", "seq"]

_CHUNK = 1000  # llama.cpp turns x{m,n} with n > 2000 into x{m,} silently; stay well below
_RULE_NAME = re.compile(r"[A-Za-z0-9-]+")

# Fixed building blocks, defined on first use: name -> (body, rules it uses).
_PRIMITIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    "ws": (r'( " " | "\n" [ \t]{0,40} )?', ()),
    "value": (
        'object | array | string | number | "true" | "false" | "null"',
        ("object", "array", "string", "number"),
    ),
    "object": (r'"{" ws ( member ( "," ws member )* )? "}"', ("ws", "member")),
    "member": ('string ws ":" ws value ws', ("string", "ws", "value")),
    "array": (r'"[" ws ( value ws ( "," ws value ws )* )? "]"', ("ws", "value")),
    "string": (r'"\"" char* "\""', ("char",)),
    # Escapes of UTF-16 surrogates are left out: they would count as two
    # characters against minLength and can decode to unpaired surrogates.
    "char": (r'[^"\\\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" hex4 )', ("hex4",)),
    "hex4": ("[0-9a-cA-Ce-fE-F] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2}", ()),
    "key-char": (r'[^"\\\x00-\x1F]', ()),
    "number": (
        '"-"? int-part ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,2} )?',
        ("int-part",),
    ),
    "integer": ('"-"? int-part', ("int-part",)),
    "int-part": ('"0" | [1-9] [0-9]{0,15}', ()),
    "boolean": ('"true" | "false"', ()),
    "null": ('"null"', ()),
    # RFC 3339 dates, with the real number of days per month and Gregorian leap years.
    "date": (
        'year "-" ( month31 "-" day31 | month30 "-" day30 | "02-" day28 ) | leap-year "-02-29"',
        ("year", "month31", "month30", "day28", "day30", "day31", "leap-year"),
    ),
    "year": ('[0-9]{3} [1-9] | [0-9]{2} [1-9] "0" | [0-9] [1-9] "00" | [1-9] "000"', ()),
    "leap-year": (
        '[0-9]{2} ( "0" [48] | [2468] [048] | [13579] [26] )'
        ' | ( "0" [48] | [2468] [048] | [13579] [26] ) "00"',
        (),
    ),
    "month31": ('"0" [13578] | "1" [02]', ()),
    "month30": ('"0" [469] | "11"', ()),
    "day28": ('"0" [1-9] | "1" [0-9] | "2" [0-8]', ()),
    "day30": ('day28 | "29" | "30"', ("day28",)),
    "day31": ('day28 | "29" | "3" [01]', ("day28",)),
    "time": (
        'hour ":" minute ":" minute ( "." [0-9]{1,9} )? ( "Z" | [+-] hour ":" minute )',
        ("hour", "minute"),
    ),
    "hour": ('[01] [0-9] | "2" [0-3]', ()),
    "minute": ("[0-5] [0-9]", ()),
    "date-time": ('date "T" time', ("date", "time")),
    "uuid": (
        '[0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4}'
        ' "-" [0-9a-fA-F]{12}',
        (),
    ),
}


class Grammar:
    """Named GBNF rules under construction; helper rules with equal bodies are shared."""

    def __init__(self) -> None:
        self.rules: dict[str, str] = {}
        self._taken: set[str] = {"root", *_PRIMITIVES}
        self._helpers: dict[str, str] = {}

    def fresh(self, hint: str) -> str:
        """A rule name not used yet; GBNF names allow only letters, digits and '-'."""
        base = "-".join(re.findall(r"[A-Za-z0-9]+", hint))[:40] or "r"
        name, n = base, 1
        while name in self._taken:
            n += 1
            name = f"{base}-{n}"
        self._taken.add(name)
        return name

    def define(self, name: str, body: str) -> None:
        self.rules[name] = body

    def helper(self, hint: str, body: str) -> str:
        """The name of a rule with this body, defining it under a fresh name if new."""
        name = self._helpers.get(body)
        if name is None:
            name = self.fresh(hint)
            self.rules[name] = body
            self._helpers[body] = name
        return name

    def prim(self, name: str) -> str:
        """The name of a fixed building block, defining it (and what it uses) on first use."""
        if name not in self.rules:
            body, uses = _PRIMITIVES[name]
            self.rules[name] = body
            for dep in uses:
                self.prim(dep)
        return name

    def text(self, root_body: str) -> str:
        lines = [f"root ::= {root_body}"]
        lines += [f"{name} ::= {body}" for name, body in self.rules.items()]
        return "\n".join(lines) + "\n"

    def repeat(self, atom: str, lo: int, hi: int | None) -> str:
        """``atom`` repeated lo..hi times (hi None: unbounded), in pieces llama.cpp keeps exact."""
        if not is_atom(atom):
            atom = self.helper("item", atom)
        if hi == 0:
            return ""
        head: list[str] = []
        if lo > _CHUNK:
            whole, lo = divmod(lo, _CHUNK)
            head = [self.helper("chunk", f"{atom}{{{_CHUNK}}}")] * whole
            hi = None if hi is None else hi - whole * _CHUNK
        if hi is not None and hi > _CHUNK:
            return seq(*head, _quantified(atom, lo, lo), self._up_to(atom, hi - lo))
        return seq(*head, _quantified(atom, lo, hi))

    def _up_to(self, atom: str, n: int) -> str:
        """0..n copies of ``atom``: a full chunk and then the rest, or fewer than a chunk."""
        if n <= _CHUNK:
            return _quantified(atom, 0, n)
        chunk = self.helper("chunk", f"{atom}{{{_CHUNK}}}")
        rest = self._up_to(atom, n - _CHUNK)
        return self.helper("up-to", f"{chunk} {rest} | {atom}{{0,{_CHUNK - 1}}}")


def lit(text: str) -> str:
    """A GBNF string literal matching exactly ``text``; non-ASCII goes in as escapes."""
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append(escape_code(ord(ch)))
    out.append('"')
    return "".join(out)


def escape_code(code: int) -> str:
    """GBNF's escape for the character ``code``: the shortest of \\x, \\u and \\U that fits."""
    if code < 0x80:
        return f"\\x{code:02X}"
    if code <= 0xFFFF:
        return f"\\u{code:04X}"
    return f"\\U{code:08X}"


def seq(*parts: str) -> str:
    """A GBNF sequence of ``parts``, leaving out the empty ones (an absent optional piece)."""
    return " ".join(part for part in parts if part)


def paren(body: str) -> str:
    """``body`` made safe to place inside a sequence."""
    return f"( {body} )" if "|" in body else body


def _quantified(atom: str, lo: int, hi: int | None) -> str:
    """GBNF for ``atom`` repeated lo..hi times; both bounds at most _CHUNK."""
    if hi is None:
        return {0: f"{atom}*", 1: f"{atom}+"}.get(lo, f"{atom}{{{lo},}}")
    if hi == 0:
        return ""
    if lo == hi:
        return atom if lo == 1 else f"{atom}{{{lo}}}"
    return f"{atom}?" if (lo, hi) == (0, 1) else f"{atom}{{{lo},{hi}}}"


def is_atom(expr: str) -> bool:
    """Whether a quantifier placed after ``expr`` applies to all of it."""
    if _RULE_NAME.fullmatch(expr):
        return True
    if expr.startswith("[") and expr.endswith("]") and " " not in expr:
        return True
    return re.fullmatch(r'"(?:[^"\\]|\\.)*"', expr) is not None
