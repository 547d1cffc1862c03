"""Execute Ollama Modelfile TEMPLATEs (Go text/template; syntax in goparse) as Ollama does.

GoTemplate.render follows Ollama's template.Execute:

- ``prompt`` and ``suffix`` both set: one execution with Prompt/Suffix (fill-in-the-middle).
- a template that mentions ``.Messages`` (or ``.Document``): one execution with
  System (every system message, joined by blank lines), Messages (consecutive
  same-role messages merged, tool messages kept apart), Tools, Think, IsThinkSet.
- otherwise ("legacy" Prompt/Response templates): one execution per completed
  user/assistant turn, then the last turn with the template cut after
  ``.Response``, so the prompt stops where the reply starts.

As in Ollama, a template that mentions neither Messages nor Response gets a
``{{ .Response }}`` appended when parsed.

Values are the API's JSON objects (dicts with snake_case keys). A Go field name
finds its key as written, in snake_case (``ToolCalls`` → ``tool_calls``,
``ToolCallID`` → ``tool_call_id``) or with a lowercase first letter; a missing key
reads as nil, which prints as "" (Go prints ``<no value>``). Maps and lists of maps
print as compact JSON, which is what Ollama's API types (tools, tool-call
arguments) print as; lists of scalars print Go-style (``[a b]``). Renders are
bounded by MAX_STEPS and by MAX_OUTPUT_CHARS of output.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pollama.chat.gofuncs import FUNCTIONS, MAX_OUTPUT_CHARS, field, to_text, truthy
from pollama.chat.goparse import (
    Action,
    Arg,
    Branch,
    Break,
    Command,
    Continue,
    Dot,
    Field,
    Func,
    Lit,
    Node,
    Pipe,
    Sub,
    Text,
    Var,
    parse,
)
from pollama.errors import InvalidTemplate

MAX_STEPS = 1_000_000  # our interpreter is slower than Jinja's compiled code: ~1 s

_RESPONSE = Action(Pipe((), False, (Command((Field(("Response",)),)),)), 0)


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


# -- execution -------------------------------------------------------------------------------


class _Machine:
    """One render: output, step count, and the variable stack (Go scopes variables to
    the enclosing control structure, so a mark taken before a body is restored after)."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.size = 0
        self.steps = 0
        self.vars: list[tuple[str, Any]] = []

    def execute(self, nodes: tuple[Node, ...], root: Mapping[str, Any]) -> None:
        self.vars = [("$", root)]
        self.run(nodes, root)

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise InvalidTemplate(f"template exceeded {MAX_STEPS} steps (a loop that never ends?)")

    def emit(self, text: str) -> None:
        self.size += len(text)
        if self.size > MAX_OUTPUT_CHARS:
            raise InvalidTemplate(f"template output exceeds {MAX_OUTPUT_CHARS} characters")
        self.out.append(text)

    def run(self, nodes: Iterable[Node], dot: Any) -> None:
        for node in nodes:
            self.step()
            if isinstance(node, Text):
                self.emit(node.text)
            elif isinstance(node, Action):
                value = self.pipe(node.pipe, dot)
                if not node.pipe.decl:  # a declaration prints nothing
                    self.emit(to_text(value))
            elif isinstance(node, Branch):
                mark = len(self.vars)
                try:
                    self.branch(node, dot)
                finally:
                    del self.vars[mark:]
            elif isinstance(node, Break):
                raise _Break
            elif isinstance(node, Continue):
                raise _Continue

    def branch(self, node: Branch, dot: Any) -> None:
        if node.kind == "range":
            self.range(node, dot)
            return
        value = self.pipe(node.pipe, dot)
        if truthy(value):
            self.run(node.body, value if node.kind == "with" else dot)
        else:
            self.run(node.orelse, dot)

    def range(self, node: Branch, dot: Any) -> None:
        value = self.pipe(node.pipe, dot, declare=False)
        items: Iterable[tuple[Any, Any]]
        if value is None:
            items = ()
        elif isinstance(value, list | tuple):
            items = enumerate(value)
        elif isinstance(value, Mapping):
            items = [(key, value[key]) for key in sorted(value)]  # Go visits keys in order
        elif isinstance(value, int) and not isinstance(value, bool):
            items = ((i, i) for i in range(value))
        else:
            raise InvalidTemplate(f"template: range can't iterate over {to_text(value)[:40]}")
        mark = len(self.vars)
        names = node.pipe.decl  # one variable gets the element; two, the key and the element
        empty = True
        for key, element in items:
            empty = False
            self.step()
            del self.vars[mark:]
            if len(names) == 1:
                self.vars.append((names[0], element))
            elif names:
                self.vars += ((names[0], key), (names[1], element))
            try:
                self.run(node.body, element)
            except _Break:
                break
            except _Continue:
                continue
        if empty:
            self.run(node.orelse, dot)

    def pipe(self, pipe: Pipe, dot: Any, *, declare: bool = True) -> Any:
        value: Any = None
        for i, command in enumerate(pipe.commands):
            value = self.command(command, dot, (value,) if i else ())
        if declare and pipe.decl:
            name = pipe.decl[0]
            if pipe.assign:
                self.vars[self.find(name)] = (name, value)
            else:
                self.vars.append((name, value))
        return value

    def find(self, name: str) -> int:
        for i in range(len(self.vars) - 1, -1, -1):
            if self.vars[i][0] == name:
                return i
        raise InvalidTemplate(f"template: undefined variable: {name}")

    def command(self, command: Command, dot: Any, final: tuple[Any, ...]) -> Any:
        first, rest = command.args[0], command.args[1:]
        if not isinstance(first, Func):
            if rest or final:
                raise InvalidTemplate("template: can't give argument to non-function")
            return self.arg(first, dot)
        if first.name in ("and", "or"):
            if not rest and not final:
                raise InvalidTemplate(f"template: wrong number of args for {first.name}")
            # Go evaluates these lazily and returns the deciding argument itself.
            result = None
            for result in self.lazy_args(rest, dot, final):
                if truthy(result) != (first.name == "and"):
                    break
            return result
        return _call(first.name, [*(self.arg(a, dot) for a in rest), *final])

    def lazy_args(self, args: tuple[Arg, ...], dot: Any, final: tuple[Any, ...]) -> Iterator[Any]:
        for arg in args:
            yield self.arg(arg, dot)
        yield from final

    def arg(self, arg: Arg, dot: Any) -> Any:
        if isinstance(arg, Dot):
            return dot
        if isinstance(arg, Lit):
            return arg.value
        if isinstance(arg, Field):
            value, names = dot, arg.names
        elif isinstance(arg, Var):
            value, names = self.vars[self.find(arg.name)][1], arg.fields
        elif isinstance(arg, Sub):
            value, names = self.pipe(arg.pipe, dot), arg.fields
        else:  # a function named as an argument is called without arguments
            return _call(arg.name, [])
        for name in names:
            value = field(value, name)
        return value


def _call(name: str, args: list[Any]) -> Any:
    """A template function called as the template says: a wrong number or kind of
    arguments (``{{ json }}``, ``{{ printf 1 }}``) is the template's error, as in Go."""
    try:
        return FUNCTIONS[name](*args)
    except TypeError:
        raise InvalidTemplate(f"template: wrong number or type of args for {name}") from None


# -- Ollama's tree walks ---------------------------------------------------------------------


def identifiers(nodes: tuple[Node, ...]) -> frozenset[str]:
    """Field and variable names a template mentions, lowercased: Ollama's Template.Vars(),
    which decides how a template is executed and what a model can do (tools, insert)."""
    names: set[str] = set()

    def pipe(p: Pipe) -> None:
        for command in p.commands:
            for arg in command.args:
                if isinstance(arg, Field):
                    names.update(arg.names)
                elif isinstance(arg, Var):
                    names.update((arg.name, *arg.fields))
                elif isinstance(arg, Sub):
                    pipe(arg.pipe)  # like Ollama, not the fields chained after ")"

    def walk(ns: tuple[Node, ...]) -> None:
        for node in ns:
            if isinstance(node, Action):
                pipe(node.pipe)
            elif isinstance(node, Branch):
                pipe(node.pipe)
                walk(node.body)
                walk(node.orelse)

    walk(nodes)
    return frozenset(name.lower() for name in names)


def cut_after_response(nodes: tuple[Node, ...]) -> tuple[Node, ...]:
    """Ollama's deleteNode for the last turn of a legacy (Prompt/Response) template: keep
    everything up to the first ``.Response`` field, in tree order, and drop all after it,
    so the prompt ends where the model's reply begins. Branch conditions are not searched,
    as in Ollama."""
    cut = False

    def args(command: Command) -> tuple[Arg, ...]:
        nonlocal cut
        kept: list[Arg] = []
        for arg in command.args:
            if cut:
                break
            if isinstance(arg, Field) and "Response" in arg.names:
                cut = True
            elif isinstance(arg, Sub):
                sub = pipe(arg.pipe)
                if sub is None:
                    continue
                arg = replace(arg, pipe=sub)
            kept.append(arg)
        return tuple(kept)

    def pipe(p: Pipe) -> Pipe | None:
        # As Ollama: a command left without arguments drops the whole pipeline (and its
        # action), even one that kept the .Response before it.
        commands = []
        for command in p.commands:
            kept = args(command)
            if not kept:
                return None
            commands.append(Command(kept))
        return replace(p, commands=tuple(commands))

    def walk(ns: tuple[Node, ...]) -> tuple[Node, ...]:
        out: list[Node] = []
        for node in ns:
            if cut:
                break
            if isinstance(node, Action):
                kept = pipe(node.pipe)
                if kept is not None:
                    out.append(replace(node, pipe=kept))
            elif isinstance(node, Branch):
                out.append(replace(node, body=walk(node.body), orelse=walk(node.orelse)))
            else:
                out.append(node)
        return tuple(out)

    return walk(nodes)


# -- Ollama's execution modes ----------------------------------------------------------------


def _collate(messages: Sequence[Mapping[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    system = [str(m.get("content") or "") for m in messages if m.get("role") == "system"]
    collated: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if collated and collated[-1].get("role") == role and role != "tool":
            previous = collated[-1]
            previous["content"] = (
                f"{previous.get('content') or ''}\n\n{message.get('content') or ''}"
            )
        else:
            collated.append(dict(message))
    return "\n\n".join(system), collated


@dataclass(frozen=True)
class GoTemplate:
    source: str
    nodes: tuple[Node, ...]
    last_turn: tuple[Node, ...]  # legacy templates: the nodes up to .Response
    identifiers: frozenset[str]

    @classmethod
    def parse(cls, source: str) -> GoTemplate:
        nodes = parse(source)
        names = identifiers(nodes)
        if "messages" not in names and "response" not in names:
            nodes = (*nodes, _RESPONSE)
        return cls(source, nodes, cut_after_response(nodes), names)

    def execute(self, root: Mapping[str, Any]) -> str:
        """One plain execution with ``root`` as dot and ``$``."""
        machine = _Machine()
        machine.execute(self.nodes, root)
        return "".join(machine.out)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        prompt: str = "",
        suffix: str = "",
        think: bool | None = None,
    ) -> str:
        thinking = {"Think": bool(think), "IsThinkSet": think is not None}
        machine = _Machine()
        if prompt and suffix:
            root = {"Prompt": prompt, "Suffix": suffix, "Response": "", **thinking}
            machine.execute(self.nodes, root)
            return "".join(machine.out)
        system, collated = _collate(messages)
        if "messages" in self.identifiers or "document" in self.identifiers:
            root = {
                "System": system,
                "Messages": collated,
                "Tools": list(tools or []),
                "Response": "",
            }
            machine.execute(self.nodes, {**root, **thinking})
            return "".join(machine.out)
        turn = {"System": "", "Prompt": "", "Response": ""}
        for message in collated:
            role, content = message.get("role"), str(message.get("content") or "")
            if (role == "system" and (turn["Prompt"] or turn["Response"])) or (
                role == "user" and turn["Response"]
            ):
                machine.execute(self.nodes, {**turn, **thinking})
                turn = {"System": "", "Prompt": "", "Response": ""}
            if role in ("system", "user", "assistant"):
                turn[{"system": "System", "user": "Prompt", "assistant": "Response"}[role]] = (
                    content
                )
        machine.execute(self.last_turn, {**turn, **thinking})
        return "".join(machine.out)
