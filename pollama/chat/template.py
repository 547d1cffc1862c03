"""Chat templates: compile once, render many times, from a Modelfile TEMPLATE or the GGUF.

Two syntaxes, one interface:

- **Jinja** (the GGUF's ``tokenizer.chat_template``, or a Modelfile TEMPLATE written
  in Jinja): Hugging Face semantics, rendered in the bounded sandbox of
  ``pollama.chat.sandbox`` with ``messages``, ``tools``, ``add_generation_prompt``,
  ``bos_token``, ``eos_token`` and any extra variables.
- **Go** (Ollama Modelfile TEMPLATEs): the subset described in
  ``pollama.chat.goparse``, executed with Ollama's semantics
  (``pollama.chat.gotemplate``). These templates decide the generation prompt
  themselves, so ``add_generation_prompt``, ``continue_final_message`` and the
  special tokens do not apply to them.

Every failure, at compile or render time, is an InvalidTemplate.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import jinja2
from jinja2 import meta

from pollama.chat.sandbox import BoundedSandbox, render_bounded
from pollama.errors import InvalidModelFile, InvalidTemplate
from pollama.ggufmeta import GGUFModel, TruncatedArray, read_string_items

if TYPE_CHECKING:
    from pollama.chat.gotemplate import GoTemplate

Syntax = Literal["jinja", "go"]

# A Go action starts with a field, a variable, a Go keyword, or a comment; or it
# uses a field somewhere (``{{ json .Function.Arguments }}``). Jinja's ``.`` only
# follows an expression (``message.content``), never a space or a parenthesis.
_GO_ACTION = re.compile(
    r"\{\{-?\s*(?:[.$]|/\*|(?:end|else|if|range|with|define|template|block)\b)"
    r"|\{\{[^}]*(?:^|[\s(])\.[A-Za-z_]"
)


def detect_syntax(source: str) -> Syntax:
    """Jinja when the source has ``{%``/``{#`` tags or no Go-looking action; else Go."""
    if "{%" in source or "{#" in source:
        return "jinja"
    if _GO_ACTION.search(source) or "{{" not in source:
        return "go"  # text without actions is the same in both; Go keeps Ollama's handling
    return "jinja"


@cache
def _environment() -> BoundedSandbox:
    # One environment for the process: compiled templates keep a reference to it and
    # it holds no per-render state (budgets live in a ContextVar).
    return BoundedSandbox()


def _jinja_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """An API message as Hugging Face templates expect one.

    Empty optional fields are dropped, because templates test ``is defined``
    (``message.tool_calls is defined`` must be false when there are none); tool
    results also carry ``name`` and thinking also ``reasoning_content``, the keys
    HF templates read.
    """
    out = {k: v for k, v in message.items() if v is not None and v != [] and v != ""}
    out.setdefault("content", "")
    if message.get("tool_name") and "name" not in out:
        out["name"] = message["tool_name"]
    if message.get("thinking") and "reasoning_content" not in out:
        out["reasoning_content"] = message["thinking"]
    return out


def _cut_after_final(text: str, content: str) -> str:
    """transformers' continue_final_message: end the prompt right after the last
    message's content, so the model continues it instead of starting a new turn."""
    for needle in (content, content.strip()):
        at = text.rfind(needle) if needle else -1
        if at >= 0:
            return text[: at + len(needle)]
    return text


@dataclass(frozen=True, eq=False)
class ChatTemplate:
    """A compiled chat template; immutable, so one instance serves every request."""

    source: str
    syntax: Syntax
    # Names the template reads (lowercase for Go, as Ollama compares them): they say
    # whether a model supports tools ("tools") and fill-in-the-middle ("suffix").
    variables: frozenset[str]
    _jinja: jinja2.Template | None = field(default=None, repr=False)
    _go: GoTemplate | None = field(default=None, repr=False)

    @classmethod
    def compile(cls, source: str, *, syntax: Syntax = "jinja") -> ChatTemplate:
        return _compile(source, syntax)

    @classmethod
    def from_modelfile(cls, source: str) -> ChatTemplate:
        """A Modelfile TEMPLATE, in whichever syntax it is written (detect_syntax)."""
        return _compile(source, detect_syntax(source))

    @property
    def supports_insert(self) -> bool:
        return "suffix" in self.variables

    @property
    def supports_tools(self) -> bool:
        return "tools" in self.variables

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        bos_token: str = "",
        eos_token: str = "",
        **extra: Any,
    ) -> str:
        """The prompt for ``messages`` (API message dicts).

        ``continue_final_message`` ends the prompt inside the last message (assistant
        prefill) instead of after it; it implies no generation prompt. ``think`` in
        ``extra`` is Ollama's think flag: Go templates get it as ``.Think``, Jinja ones
        as ``think`` and ``enable_thinking`` (the name Qwen-style templates read).
        """
        think = extra.pop("think", None)
        if self._go is not None:
            with _within_pythons_limits():
                return self._go.render(messages, tools=tools, think=think)
        if think is not None:
            extra.setdefault("think", think)
            extra.setdefault("enable_thinking", think)
        text = self._render_jinja(
            {
                **extra,
                "messages": [_jinja_message(m) for m in messages],
                "tools": list(tools) if tools else None,
                "add_generation_prompt": add_generation_prompt and not continue_final_message,
                "bos_token": bos_token,
                "eos_token": eos_token,
            }
        )
        if continue_final_message and messages:
            text = _cut_after_final(text, str(messages[-1].get("content") or ""))
        return text

    def render_insert(
        self, prompt: str, suffix: str, *, bos_token: str = "", eos_token: str = ""
    ) -> str:
        """A fill-in-the-middle prompt: the text before (``prompt``) and after (``suffix``)
        the gap. Only for templates that read ``suffix`` (supports_insert)."""
        if self._go is not None:
            with _within_pythons_limits():
                return self._go.render((), prompt=prompt, suffix=suffix)
        variables = {
            "prompt": prompt,
            "suffix": suffix,
            "messages": [{"role": "user", "content": prompt}],
            "add_generation_prompt": True,
            "bos_token": bos_token,
            "eos_token": eos_token,
        }
        return self._render_jinja(variables)

    def _render_jinja(self, variables: dict[str, Any]) -> str:
        assert self._jinja is not None
        return render_bounded(self._jinja, variables)


@contextmanager
def _within_pythons_limits() -> Iterator[None]:
    """A template nested thousands deep exhausts Python's recursion limit while it is
    parsed, compiled or run: the template's fault, so an InvalidTemplate like any other."""
    try:
        yield
    except RecursionError:
        raise InvalidTemplate("template is nested too deeply") from None


@lru_cache(maxsize=64)
def _compile(source: str, syntax: Syntax) -> ChatTemplate:
    """Compiling costs milliseconds and every request needs its model's template: cache
    by source (a ChatTemplate is immutable, so sharing one is safe)."""
    with _within_pythons_limits():
        if syntax == "go":
            # Only Modelfile templates are Go: a model with the GGUF's Jinja template never
            # needs the Go parser, and the server need not import it at start.
            from pollama.chat.gotemplate import GoTemplate

            program = GoTemplate.parse(source)
            return ChatTemplate(source, "go", program.identifiers, _go=program)
        return _compile_jinja(source)


def _compile_jinja(source: str) -> ChatTemplate:
    env = _environment()
    try:
        tree = env.parse(source)
        variables = meta.find_undeclared_variables(tree)
        compiled = env.from_string(tree)  # compiles the parsed tree: no second parse
    except jinja2.TemplateSyntaxError as exc:
        raise InvalidTemplate(f"template line {exc.lineno}: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise InvalidTemplate(f"template does not compile: {exc}") from None
    except (SyntaxError, ValueError) as exc:
        # Python's own limits on the code Jinja writes (blocks nested over 20 deep) and
        # on the literals it reads (integers over 4300 digits).
        raise InvalidTemplate(f"template does not compile: {exc}") from None
    return ChatTemplate(source, "jinja", frozenset(variables), _jinja=compiled)


def template_for(model: GGUFModel, modelfile_template: str | None) -> ChatTemplate | None:
    """The model's chat template: its Modelfile TEMPLATE (Jinja or Go), else the GGUF's
    ``tokenizer.chat_template``, else None (Ollama then uses the prompt as is)."""
    if modelfile_template:
        return ChatTemplate.from_modelfile(modelfile_template)
    if model.chat_template:
        return ChatTemplate.compile(model.chat_template)
    return None


def special_tokens(model: GGUFModel) -> tuple[str, str]:
    """The BOS and EOS token strings of a GGUF ("" where the file names none).

    Templates print them (``{{ bos_token }}``). When the tokenizer adds BOS itself
    (``tokenizer.ggml.add_bos_token``), pass ``bos_token=""`` to render instead, or
    the prompt would start with two.
    """
    ids = tuple(
        model.get(key) for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id")
    )
    tokens = model.get("tokenizer.ggml.tokens")
    if isinstance(tokens, list):  # a small vocabulary, kept whole by the header reader
        found = {i: str(tokens[i]) for i in ids if isinstance(i, int) and 0 <= i < len(tokens)}
    elif isinstance(tokens, TruncatedArray):
        path = Path(model.path).resolve()
        try:
            stat = path.stat()
        except OSError as exc:
            raise InvalidModelFile(str(path), exc.strerror or str(exc)) from None
        found = _special_tokens(str(path), stat.st_mtime_ns, stat.st_size, ids)
    else:
        found = {}
    bos, eos = (found.get(i, "") if isinstance(i, int) else "" for i in ids)
    return bos, eos


@lru_cache(maxsize=32)
def _special_tokens(path: str, mtime_ns: int, size: int, ids: tuple[Any, ...]) -> dict[int, str]:
    # The header reader keeps the vocabulary as a TruncatedArray; decode just these items,
    # once per file version (mtime and size are in the cache key).
    return read_string_items(path, "tokenizer.ggml.tokens", (i for i in ids if isinstance(i, int)))
