"""The parsers of untrusted text, fuzzed from real inputs: Modelfiles, chat templates (Jinja
and Go) and the GGUF header.

Each starts from real, representative files and mutates them (characters and lines
deleted, inserted, replaced, duplicated; directives repeated; quotes unbalanced; blocks
nested deeper than any real file). Whatever comes out, the parser either succeeds or
raises its own error (InvalidModelfile, InvalidTemplate, InvalidModelFile), never
anything else, and never hangs. A Modelfile that parses also renders back to text that
parses to the same Modelfile.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_ggufmeta_corrupt import Demo, exercise, write_copy
from test_gotemplate import GO_LEGACY, GO_LLAMA, JINJA_LEGACY, JINJA_LLAMA, TOOLS

from pollama.chat.template import ChatTemplate, Syntax, detect_syntax
from pollama.demo import demo_model_path
from pollama.errors import InvalidModelFile, InvalidModelfile, InvalidTemplate
from pollama.ggufmeta import read_model
from pollama.options.parameters import OPTIONS
from pollama.store.modelfile import parse_modelfile

EXAMPLES: Counter[str] = Counter()
"""Examples run, by parser: reported (and checked) by the last test."""

FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SCALE = float(os.environ.get("POLLAMA_FUZZ_SCALE", "1"))
"""More examples for a deeper run than CI's (``POLLAMA_FUZZ_SCALE=20``)."""


def examples(n: int) -> int:
    return max(1, round(n * SCALE))


SLOW_S = 10.0
"""No parse or render may take longer: the budgets bound them far below this."""


# -- mutations -----------------------------------------------------------------------------


def mutations(vocabulary: list[str]) -> st.SearchStrategy[Callable[[str], str]]:
    """One edit of a text: a character or a line deleted, inserted, replaced or
    duplicated, a stretch repeated, or a word of ``vocabulary`` inserted."""
    position = st.floats(0, 1)
    piece = st.sampled_from(vocabulary) | st.text(max_size=4)

    def at(text: str, where: float) -> int:
        return int(where * len(text))

    def lines(text: str, where: float) -> tuple[list[str], int]:
        parts = text.split("\n")
        return parts, min(int(where * len(parts)), len(parts) - 1)

    def delete(where: float, n: int) -> Callable[[str], str]:
        return lambda t: t[: at(t, where)] + t[at(t, where) + n :]

    def insert(where: float, word: str) -> Callable[[str], str]:
        return lambda t: t[: at(t, where)] + word + t[at(t, where) :]

    def replace(where: float, word: str) -> Callable[[str], str]:
        return lambda t: t[: at(t, where)] + word + t[at(t, where) + len(word) :]

    def repeat(where: float, n: int, times: int) -> Callable[[str], str]:
        def edit(t: str) -> str:
            i = at(t, where)
            return t[:i] + t[i : i + n] * times + t[i:]

        return edit

    def line_edit(where: float, how: str) -> Callable[[str], str]:
        def edit(t: str) -> str:
            parts, i = lines(t, where)
            if how == "drop":
                del parts[i]
            elif how == "double":
                parts.insert(i, parts[i])
            else:
                parts.append(parts.pop(i))
            return "\n".join(parts)

        return edit

    return st.one_of(
        st.builds(delete, position, st.integers(1, 8)),
        st.builds(insert, position, piece),
        st.builds(replace, position, piece),
        st.builds(repeat, position, st.integers(1, 40), st.integers(2, 50)),
        st.builds(line_edit, position, st.sampled_from(["drop", "double", "move"])),
    )


def mutated(originals: list[str], vocabulary: list[str]) -> st.SearchStrategy[str]:
    @st.composite
    def build(draw: st.DrawFn) -> str:
        text = draw(st.sampled_from(originals))
        for edit in draw(st.lists(mutations(vocabulary), min_size=1, max_size=6)):
            text = edit(text)
        return text

    return build()


@contextlib.contextmanager
def bounded(what: str) -> Iterator[None]:
    """Time the block: a parser that takes seconds on a small input has no bound."""
    started = time.monotonic()
    yield
    assert time.monotonic() - started < SLOW_S, f"{what} took too long"


# -- Modelfiles ----------------------------------------------------------------------------

VALUES = {"integer": "42", "float32": "0.5", "boolean": "true", "array": '"</s>"'}
EVERY_OPTION = "FROM ./model.gguf\n" + "".join(
    f"PARAMETER {name} {VALUES[option.type.value]}\n" for name, option in sorted(OPTIONS.items())
)
EXAMPLE = """# a chat model
FROM llama3.2:3b

parameter temperature 0.7
PARAMETER stop "<|im_end|>"
PARAMETER stop <|eot_id|>
PARAMETER num_ctx 8192
PARAMETER use_mmap false
PARAMETER seed -1
PARAMETER top_p .9
PARAMETER repeat_penalty 1.1e0
Template \"\"\"{{ if .System }}<|system|>{{ .System }}{{ end }}
{{ .Prompt }}\"\"\"
SYSTEM "You are \\"terse\\".
Answer in C:\\dir style."
ADAPTER ./lora.gguf
MESSAGE user   Is the sky blue?
MESSAGE Assistant \"\"\"Yes.\"\"\"
MESSAGE system "Be \\\\ kind"
LICENSE \"\"\"MIT
\"\"\"
LICENSE Apache-2.0
"""
MODELFILES = [
    EVERY_OPTION,
    EXAMPLE,
    'FROM "C:\\models\\a model.gguf"\r\nADAPTER "x.gguf"\r\nTEMPLATE """{{ .Prompt }}\r\n"""\r\n'
    'SYSTEM """\r\nmulti\r\nline\r\n"""\r\nPARAMETER stop "\\""\r\n',
    'FROM smollm2\nTEMPLATE """{% for m in messages %}{{ m.content }}{% endfor %}"""\n'
    "SYSTEM You are SmolLM.\nMESSAGE user hi\nMESSAGE assistant hello\n",
]
MODELFILE_WORDS = [
    *('"""', '"', "\\", '\\"', "\\\\", "\n", "\r\n", "\r", "#", " ", "\t"),
    *("FROM ", "PARAMETER ", "TEMPLATE ", "SYSTEM ", "ADAPTER ", "LICENSE ", "MESSAGE "),
    *("from ", "user ", "assistant ", "tool ", "temperature ", "stop ", "num_ctx ", "seed "),
    *("1e999", "-1e999", "nan", "inf", "-0", "9" * 30, "0x10", "1_000", "TRUE", "t", "yes"),
    *("ŝ", "\x00", "\ufeff", "\u2028", "\x85", "\x0b", "\x1c", "\U0001f600"),
]


def check_modelfile(text: str) -> None:
    """Parses or says why (InvalidModelfile); what parses renders back to itself."""
    EXAMPLES["modelfile"] += 1
    with bounded("parse_modelfile"):
        try:
            modelfile = parse_modelfile(text)
        except InvalidModelfile:
            return
        rendered = modelfile.render()
        assert parse_modelfile(rendered) == modelfile, rendered


@pytest.mark.parametrize("text", MODELFILES)
def test_the_real_modelfiles_parse(text: str) -> None:
    parse_modelfile(text)


@settings(FUZZ, max_examples=examples(500))
@given(text=mutated(MODELFILES, MODELFILE_WORDS))
@example(text="FROM x\nPARAMETER temperature 1e999\n")  # inf did not render back
@example(text='FROM x\nSYSTEM """a\r\r\nb"""\n')  # nor did a "\r" before a newline
def test_mutated_modelfiles(text: str) -> None:
    check_modelfile(text)


# -- chat templates ------------------------------------------------------------------------

DEMO_TEMPLATE = read_model(demo_model_path()).chat_template or ""
TEMPLATES = [
    DEMO_TEMPLATE,
    GO_LLAMA,
    GO_LEGACY,
    JINJA_LLAMA,
    JINJA_LEGACY,
    # Qwen-style: thinking, tool calls in tags, a namespace, loop controls, raise_exception.
    "{%- set ns = namespace(sys='') %}{%- for m in messages %}"
    "{%- if m.role == 'system' %}{%- set ns.sys = m.content %}{%- continue %}{%- endif %}"
    "{%- if m.role not in ['user', 'assistant', 'tool'] %}{{ raise_exception('bad role') }}"
    "{%- endif %}<|im_start|>{{ m.role }}\n{%- if m.reasoning_content %}<think>"
    "{{ m.reasoning_content }}</think>{% endif %}{{ m.content }}"
    "{%- for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>"
    "{%- endfor %}<|im_end|>\n{%- endfor %}{%- if add_generation_prompt %}<|im_start|>"
    "assistant\n{%- if enable_thinking %}<think>{% endif %}{%- endif %}",
    # Go, with thinking, tool calls and variables.
    "{{- $last := len .Messages }}{{- range $i, $m := .Messages }}"
    "{{- if and .Thinking $.Think }}<think>{{ .Thinking }}</think>{{ end }}"
    '{{ printf "%s: %q" .Role .Content }}{{ range .ToolCalls }}{{ json .Function }}{{ end }}'
    "{{ if eq $i (len (slice $.Messages 1)) }}last{{ else }}more{{ end }}{{ end }}"
    "{{ with .System }}{{ . }}{{ else }}none{{ end }}",
]
TEMPLATE_WORDS = [
    *("{{", "}}", "{%", "%}", "{#", "#}", "{{-", "-}}", "{%-", "-%}", "{{/*", "*/}}"),
    *(" if ", " else ", " end ", " range ", " with ", " break ", " continue ", " define "),
    *("endif", "endfor", "elif", "for x in messages", "set x = ", "macro f()", "endmacro"),
    *("(", ")", "[", "]", "{", "}", "|", ".", ",", "$", ":=", "=", "'", '"', "`", "\\"),
    *(".Messages", ".Content", ".Role", ".Tools", ".System", ".Prompt", ".Response", ".X.Y"),
    *("$.Messages", "$i", "$m", " len ", " slice ", " index ", " printf ", " print "),
    *(" eq ", " ne ", " lt ", " gt ", " and ", " or ", " not ", " json ", " html ", " call "),
    *("messages", "message", "loop.index0", "loop.last", "| tojson", "| length", "| trim"),
    *("raise_exception(", "namespace(", "range(", "cycler(", "joiner(", "lipsum(", "dict("),
    *("0", "-1", "9" * 30, "1e999", "0x", "0b2", "'a'", "nil", "true", "none", "None"),
    *("\n", " ", "\x00", "\ud800", "ŝ", "**", "*", "%", "~", "//", "is defined", "in"),
]
# Blocks a mutation may wrap around part of a template, many times over.
BLOCKS = [
    ("{% if true %}", "{% endif %}"),
    ("{% for x in [1] %}", "{% endfor %}"),
    ("{{ (", ") }}"),
    ("{{ [", "] }}"),
    ("{% macro m() %}", "{% endmacro %}"),
    ("{{ if true }}", "{{ end }}"),
    ("{{ range $i, $m := .Messages }}", "{{ end }}"),
    ("{{ with .System }}", "{{ else }}{{ end }}"),
    ("{{ if .X }}{{ else if .Y }}", "{{ end }}"),
    ("{{ print (", ") }}"),
]


def wrapped(block: tuple[str, str], where: float, depth: int) -> Callable[[str], str]:
    opening, closing = block

    def edit(text: str) -> str:
        i = int(where * len(text))
        return text[:i] + opening * depth + text[i:] + closing * depth

    return edit


def mutated_templates() -> st.SearchStrategy[str]:
    depths = st.integers(1, 40) | st.integers(1, 3000)
    nest = st.builds(wrapped, st.sampled_from(BLOCKS), st.floats(0, 1), depths)

    @st.composite
    def build(draw: st.DrawFn) -> str:
        text = draw(st.sampled_from(TEMPLATES))
        for edit in draw(st.lists(mutations(TEMPLATE_WORDS) | nest, min_size=1, max_size=5)):
            text = edit(text)
        return text

    return build()


CONVERSATIONS: list[list[dict[str, Any]]] = [
    [],
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "thinking": "call the tool",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": "Thanks"},
    ],
]


def render_every_way(template: ChatTemplate) -> None:
    for messages in CONVERSATIONS:
        for tools, think in ((None, None), (TOOLS, True), (None, False)):
            template.render(messages, tools=tools, think=think, bos_token="<s>", eos_token="</s>")
    template.render(CONVERSATIONS[1], continue_final_message=True)
    if template.supports_insert:
        template.render_insert("def f(", "return x")


def check_template(source: str) -> None:
    """Compiles or says why (InvalidTemplate); what compiles renders or says why."""
    EXAMPLES["template"] += 1
    other: Syntax = "go" if detect_syntax(source) == "jinja" else "jinja"
    for syntax in ("detected", other):
        with bounded(f"a template, as {syntax}"):
            try:
                if syntax == "detected":
                    template = ChatTemplate.from_modelfile(source)
                else:
                    template = ChatTemplate.compile(source, syntax=other)
                render_every_way(template)
            except InvalidTemplate:
                pass


@pytest.mark.parametrize("source", TEMPLATES)
def test_the_real_templates_render(source: str) -> None:
    render_every_way(ChatTemplate.from_modelfile(source))


NESTED = [
    "{% for a in x %}" * 25 + "{% endfor %}" * 25,  # Python: too many statically nested blocks
    "{% if a %}" * 120 + "{% endif %}" * 120,  # Python: too many levels of indentation
    "{{ " + "(" * 300 + "1" + ")" * 300 + " }}",  # Jinja's parser recursion
    "{{ " + "-" * 3000 + "1 }}",
    "{{ x" + ".a" * 3000 + " }}",
    "{{ " + "9" * 5000 + " }}",  # an int literal over Python's 4300 digits
    "{{ " + "(" * 1000 + ".X" + ")" * 1000 + " }}",  # Go parser recursion
    "{{ if .X }}" * 3000 + "{{ end }}" * 3000,
    "{{ range .X }}" * 3000 + "{{ end }}" * 3000,
]


# Go template functions called with the wrong number or kind of arguments, and a
# character constant of two characters: TypeErrors.
MISCALLED = [
    "{{ .X }}" + call
    for call in ("{{ json }}", "{{ json 1 2 }}", "{{ printf 1 }}", "{{ not }}", r"{{ '\n\n' }}")
]


@pytest.mark.parametrize("source", NESTED + MISCALLED, ids=lambda s: s[:12])
def test_templates_past_pythons_limits_are_invalid(source: str) -> None:
    # Each raised RecursionError, SyntaxError, ValueError or TypeError: a 500 through the API.
    with pytest.raises(InvalidTemplate):
        render_every_way(ChatTemplate.from_modelfile(source))


@settings(FUZZ, max_examples=examples(400))
@given(source=mutated_templates())
def test_mutated_templates(source: str) -> None:
    check_template(source)


# -- the GGUF header -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo() -> Demo:
    return Demo()


@st.composite
def header_damage(draw: st.DrawFn, demo: Demo) -> bytes:
    """The demo's header with bytes overwritten, cut out or slipped in: anywhere in its
    first 64 KiB (the key/values) or among its tensor infos (the end of the header)."""
    header = bytearray(demo.header)
    regions = [(0, 65536), (demo.tensor_infos_start, len(header))]
    for _ in range(draw(st.integers(1, 4))):
        low, high = draw(st.sampled_from(regions))
        at = draw(st.integers(low, high - 9))
        how = draw(st.sampled_from(["byte", "u32", "u64", "cut", "slip"]))
        if how == "byte":
            header[at] = draw(st.integers(0, 255))
        elif how in ("u32", "u64"):
            width = 4 if how == "u32" else 8
            value = draw(st.sampled_from([0, 1, 7, 2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1]))
            header[at : at + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
        elif how == "cut":
            del header[at : at + draw(st.integers(1, 16))]
        else:
            header[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(header)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("damaged")


@settings(FUZZ, max_examples=examples(100))
@given(data=st.data())
def test_damage_anywhere_in_the_demo_header(demo: Demo, scratch: Path, data: st.DataObject) -> None:
    EXAMPLES["gguf"] += 1
    path = write_copy(scratch / "fuzz.gguf", data.draw(header_damage(demo)), demo.size)
    with bounded("read_model"):
        try:
            model = read_model(path)
        except InvalidModelFile as exc:
            assert str(path) in str(exc)
        else:
            exercise(model)
            if model.chat_template:
                check_template(model.chat_template)


# -- the volume ----------------------------------------------------------------------------


def test_the_fuzz_ran_enough_examples(capsys: pytest.CaptureFixture[str]) -> None:
    """Last in the file: how many inputs each parser met (at least 900 when all ran)."""
    with capsys.disabled():
        print(f"\ntest_fuzz_parsers: {sum(EXAMPLES.values())} examples {dict(EXAMPLES)}")
    if not {"modelfile", "template", "gguf"} <= set(EXAMPLES):
        pytest.skip("only part of the fuzz ran")
    assert sum(EXAMPLES.values()) >= 900, dict(EXAMPLES)
