"""Parse the subset of Go's text/template syntax that Ollama Modelfile TEMPLATEs use.

Supported: text; ``{{ pipeline }}`` actions with ``{{-``/``-}}`` trimming and
``{{/* comments */}}``; ``if``/``else if``/``else``, ``range`` (with ``$i, $v :=``
declarations, ``else``, ``break``, ``continue``), ``with``/``else with``, ``end``;
variables (``$x := …``, ``$x = …``, ``$``, ``$x.Field``); fields (``.A.B``,
``(pipeline).Field``); pipelines with ``|``; literals ("…", `…`, 'c', numbers,
true, false, nil); the functions in FUNCTIONS. Anything else (``define``,
``template``, ``block``, ``html``, ``call``, method calls with arguments …) is an
InvalidTemplate that names it: a template we cannot render exactly is refused,
never rendered approximately.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pollama.errors import InvalidTemplate

FUNCTIONS = frozenset(
    {"and", "or", "not", "eq", "ne", "lt", "le", "gt", "ge", "len", "index", "slice"}
    | {"print", "printf", "println", "json"}
)
# Go builtins we do not implement; named in the error rather than "not defined".
_UNSUPPORTED_FUNCTIONS = frozenset({"html", "js", "urlquery", "call"})
_UNSUPPORTED_ACTIONS = frozenset({"define", "template", "block"})

_SPACE = " \t\r\n"


# -- syntax tree ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    names: tuple[str, ...]


@dataclass(frozen=True)
class Var:
    name: str  # "$" is the root
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class Dot:
    pass


@dataclass(frozen=True)
class Lit:
    value: Any


@dataclass(frozen=True)
class Func:
    name: str


@dataclass(frozen=True)
class Sub:
    pipe: Pipe
    fields: tuple[str, ...] = ()


Arg = Field | Var | Dot | Lit | Func | Sub


@dataclass(frozen=True)
class Command:
    args: tuple[Arg, ...]


@dataclass(frozen=True)
class Pipe:
    decl: tuple[str, ...]  # variables declared (":=") or assigned ("=") by this pipeline
    assign: bool
    commands: tuple[Command, ...]


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Action:
    pipe: Pipe
    line: int


_BranchKind = Literal["if", "range", "with"]


@dataclass(frozen=True)
class Branch:
    kind: _BranchKind
    pipe: Pipe
    body: tuple[Node, ...]
    orelse: tuple[Node, ...]
    line: int


@dataclass(frozen=True)
class Break:
    pass


@dataclass(frozen=True)
class Continue:
    pass


Node = Text | Action | Branch | Break | Continue


# -- lexing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tok:
    kind: Literal["lit", "field", "var", "dot", "ident", "op", "chain"]
    value: Any = None
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Item:
    """One ``{{ … }}`` action's tokens."""

    tokens: tuple[_Tok, ...]
    line: int


_FIELDS = re.compile(r"(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_VARIABLE = re.compile(r"\$[A-Za-z0-9_]*")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+"
    r"|(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][+-]?\d+)?)"
)
_CHAR = re.compile(r"'(\\.[^']*|[^'\\])'")
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_ESCAPE = re.compile(r"\\(?:x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{3}|.)")
_KEYWORD_LITERALS = {"true": True, "false": False, "nil": None}


def _fail(line: int, problem: str) -> InvalidTemplate:
    return InvalidTemplate(f"template line {line}: {problem}")


def _unquote(body: str, line: int) -> str:
    def one(match: re.Match[str]) -> str:
        escape = match.group()[1:]
        if escape[0] in "xuU":
            return chr(int(escape[1:], 16))
        if escape[0].isdigit():
            return chr(int(escape, 8))
        if escape in _ESCAPES:
            return _ESCAPES[escape]
        if escape in "\\\"'":
            return escape
        raise _fail(line, f"unknown escape sequence \\{escape}")

    return _ESCAPE.sub(one, body)


def _number(text: str, line: int) -> int | float:
    digits = text.replace("_", "")
    try:
        if re.fullmatch(r"[+-]?0[0-7]+", digits):
            return int(digits, 8)  # Go reads a leading 0 as octal
        return int(digits, 0)
    except ValueError:
        pass
    try:
        return float(digits)
    except ValueError:
        raise _fail(line, f"bad number syntax: {text!r}") from None


def _lex_action(src: str, i: int, line: int) -> tuple[tuple[_Tok, ...], int, bool]:
    """Tokens of the action starting at ``i``; returns them, where the action ends,
    and whether it ends with a right trim marker."""
    toks: list[_Tok] = []
    while True:
        if i >= len(src):
            raise _fail(line, "unclosed action")
        c = src[i]
        if c in _SPACE:
            if src.startswith("-}}", i + 1):
                return tuple(toks), i + 4, True
            i += 1
        elif src.startswith("}}", i):
            return tuple(toks), i + 2, False
        elif c in "\"`'":
            tok, i = _lex_quoted(src, i, line)
            toks.append(tok)
        elif src.startswith(":=", i):
            toks.append(_Tok("op", ":="))
            i += 2
        elif c in "(),|=":
            toks.append(_Tok("op", c))
            i += 1
            chain = _FIELDS.match(src, i) if c == ")" else None
            if chain:
                toks.append(_Tok("chain", fields=tuple(chain.group()[1:].split("."))))
                i = chain.end()
        elif (number := _NUMBER.match(src, i)) and (c.isdigit() or number.end() - i > 1):
            toks.append(_Tok("lit", _number(number.group(), line)))
            i = number.end()
        else:
            tok, i = _lex_name(src, i, line)
            toks.append(tok)


def _lex_quoted(src: str, i: int, line: int) -> tuple[_Tok, int]:
    """The string or character literal starting at ``i`` (on its quote), and where it ends."""
    c = src[i]
    if c == '"':
        match = _STRING.match(src, i)
        if match is None:
            raise _fail(line, "unterminated quoted string")
        return _Tok("lit", _unquote(match.group()[1:-1], line)), match.end()
    if c == "`":
        end = src.find("`", i + 1)
        if end < 0:
            raise _fail(line, "unterminated raw quoted string")
        return _Tok("lit", src[i + 1 : end]), end + 1
    match = _CHAR.match(src, i)
    char = _unquote(match.group(1), line) if match else ""
    if match is None or len(char) != 1:  # '\n\n' matches, but is two characters
        raise _fail(line, "bad character constant")
    return _Tok("lit", ord(char)), match.end()


def _lex_name(src: str, i: int, line: int) -> tuple[_Tok, int]:
    """The dot, field chain, variable, keyword literal or identifier at ``i``, and its end."""
    c = src[i]
    if c == ".":
        fields = _FIELDS.match(src, i)
        if fields:
            return _Tok("field", fields=tuple(fields.group()[1:].split("."))), fields.end()
        return _Tok("dot"), i + 1
    if c == "$":
        var = _VARIABLE.match(src, i)
        assert var is not None  # "$" alone matches
        fields = _FIELDS.match(src, var.end())
        names = tuple(fields.group()[1:].split(".")) if fields else ()
        return _Tok("var", var.group(), names), fields.end() if fields else var.end()
    if ident := _IDENT.match(src, i):
        word = ident.group()
        if word in _KEYWORD_LITERALS:
            return _Tok("lit", _KEYWORD_LITERALS[word]), ident.end()
        return _Tok("ident", word), ident.end()
    raise _fail(line, f"unexpected {c!r} in action")


def _scan(src: str) -> list[str | _Item]:
    """Split a template into texts (already trimmed) and actions."""
    items: list[str | _Item] = []
    pos, line, trim_next = 0, 1, False
    while True:
        start = src.find("{{", pos)
        text = src[pos:] if start < 0 else src[pos:start]
        if trim_next:
            text = text.lstrip(_SPACE)
        if start < 0:
            if text:
                items.append(text)
            return items
        line += src.count("\n", pos, start)
        i = start + 2
        if src.startswith("-", i) and src[i + 1 : i + 2] in tuple(_SPACE):
            text = text.rstrip(_SPACE)
            i += 2
        if text:
            items.append(text)
        if src.startswith("/*", i):
            end = src.find("*/", i + 2)
            if end < 0:
                raise _fail(line, "unclosed comment")
            end += 2
            trim_next = src[end : end + 1] in tuple(_SPACE) and src.startswith("-}}", end + 1)
            if not (trim_next or src.startswith("}}", end)):
                raise _fail(line, "comment ends before closing delimiter")
            pos = end + (4 if trim_next else 2)
        else:
            tokens, pos, trim_next = _lex_action(src, i, line)
            items.append(_Item(tokens, line))
        line += src.count("\n", start, pos)


# -- parsing -------------------------------------------------------------------------------


def _is(tok: _Tok | None, kind: str, value: Any = None) -> bool:
    return tok is not None and tok.kind == kind and (value is None or tok.value == value)


def _operand(toks: tuple[_Tok, ...], i: int, line: int) -> tuple[Arg, int]:
    tok = toks[i]
    if tok.kind == "lit":
        return Lit(tok.value), i + 1
    if tok.kind == "field":
        return Field(tok.fields), i + 1
    if tok.kind == "var":
        return Var(tok.value, tok.fields), i + 1
    if tok.kind == "dot":
        return Dot(), i + 1
    if tok.kind == "ident":
        name = tok.value
        if name in _UNSUPPORTED_FUNCTIONS:
            raise _fail(line, f"function {name!r} is not supported")
        if name not in FUNCTIONS:
            raise _fail(line, f"function {name!r} not defined")
        return Func(name), i + 1
    if _is(tok, "op", "("):
        depth, j = 1, i + 1
        while j < len(toks) and depth:
            depth += _is(toks[j], "op", "(") - _is(toks[j], "op", ")")
            j += 1
        if depth:
            raise _fail(line, "unclosed left paren")
        pipe = _pipe(toks[i + 1 : j - 1], line, max_decls=0)
        if j < len(toks) and toks[j].kind == "chain":
            return Sub(pipe, toks[j].fields), j + 1
        return Sub(pipe), j
    raise _fail(line, f"unexpected {tok.value!r} in operand")


def _pipe(toks: tuple[_Tok, ...], line: int, *, max_decls: int) -> Pipe:
    decl: tuple[str, ...] = ()
    assign = False
    if toks and toks[0].kind == "var" and not toks[0].fields:
        if len(toks) > 1 and toks[1].kind == "op" and toks[1].value in (":=", "="):
            decl, assign, toks = (toks[0].value,), toks[1].value == "=", toks[2:]
        elif (
            len(toks) > 3
            and _is(toks[1], "op", ",")
            and toks[2].kind == "var"
            and not toks[2].fields
            and _is(toks[3], "op", ":=")
        ):
            decl, toks = (toks[0].value, toks[2].value), toks[4:]
    if len(decl) > max_decls:
        raise _fail(line, "too many declarations in command" if max_decls else "bad declaration")
    commands: list[Command] = []
    args: list[Arg] = []
    i = 0
    while i <= len(toks):
        if i == len(toks) or _is(toks[i], "op", "|"):
            if not args:
                raise _fail(line, "missing value for command")
            commands.append(Command(tuple(args)))
            args = []
            i += 1
            continue
        if toks[i].kind in ("op", "chain") and not _is(toks[i], "op", "("):
            raise _fail(line, f"unexpected {toks[i].value or '.'!r} in command")
        arg, i = _operand(toks, i, line)
        args.append(arg)
    return Pipe(decl, assign, tuple(commands))


class _Parser:
    def __init__(self, items: list[str | _Item]) -> None:
        self.items = items
        self.pos = 0
        self.loops = 0  # range bodies we are inside: break/continue need one

    def nodes(self) -> tuple[tuple[Node, ...], _Item | None]:
        """Nodes up to an ``end``/``else`` action (returned) or the end of the template."""
        out: list[Node] = []
        while self.pos < len(self.items):
            item = self.items[self.pos]
            self.pos += 1
            if isinstance(item, str):
                out.append(Text(item))
                continue
            if not item.tokens:
                raise _fail(item.line, "missing value for command")
            head = item.tokens[0]
            if _is(head, "ident", "end") or _is(head, "ident", "else"):
                return tuple(out), item
            out.append(self.action(item))
        return tuple(out), None

    def action(self, item: _Item) -> Node:
        head, rest, line = item.tokens[0], item.tokens[1:], item.line
        if head.kind == "ident":
            if head.value in ("if", "range", "with"):
                return self.branch(head.value, rest, line)
            if head.value in ("break", "continue"):
                if rest:
                    raise _fail(line, f"unexpected {rest[0].value!r} in {head.value}")
                if not self.loops:
                    raise _fail(line, f"{{{{{head.value}}}}} outside {{{{range}}}}")
                return Break() if head.value == "break" else Continue()
            if head.value in _UNSUPPORTED_ACTIONS:
                raise _fail(line, f"{{{{{head.value}}}}} is not supported")
        return Action(_pipe(item.tokens, line, max_decls=1), line)

    def branch(self, kind: _BranchKind, toks: tuple[_Tok, ...], line: int) -> Branch:
        pipe = _pipe(toks, line, max_decls=2 if kind == "range" else 1)
        self.loops += kind == "range"
        body, term = self.nodes()
        self.loops -= kind == "range"
        if term is None:
            raise _fail(line, f"unexpected EOF: {{{{{kind}}}}} has no {{{{end}}}}")
        orelse: tuple[Node, ...] = ()
        rest = term.tokens[1:]
        if _is(term.tokens[0], "ident", "else"):
            if rest and _is(rest[0], "ident", kind) and kind != "range":
                orelse = (self.branch(kind, rest[1:], term.line),)  # shares our {{end}}
                return Branch(kind, pipe, body, orelse, line)
            if rest:
                raise _fail(term.line, f"unexpected {rest[0].value!r} after else")
            orelse, term = self.nodes()
            if term is None or not _is(term.tokens[0], "ident", "end"):
                raise _fail(line, f"expected {{{{end}}}} for {{{{{kind}}}}}")
            rest = term.tokens[1:]
        if rest:
            raise _fail(term.line, f"unexpected {rest[0].value!r} in end")
        return Branch(kind, pipe, body, orelse, line)


def parse(source: str) -> tuple[Node, ...]:
    parser = _Parser(_scan(source))
    nodes, term = parser.nodes()
    if term is not None:
        raise _fail(term.line, f"unexpected {{{{{term.tokens[0].value}}}}}")
    return nodes
