"""Ollama Modelfile TEMPLATEs in Go template syntax: typical templates render what an
equivalent hand-written Jinja template renders, Go's semantics hold in the corners,
and constructs we do not implement are refused by name."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pollama.chat.template import ChatTemplate
from pollama.errors import InvalidTemplate

Message = dict[str, Any]

# A llama3-style template in Ollama's current (Messages) form, with tools.
GO_LLAMA = """\
{{- if or .System .Tools }}<|start_header_id|>system<|end_header_id|>
{{- if .System }}

{{ .System }}
{{- end }}
{{- if .Tools }}

Tools:
{{- range .Tools }}
{{ json . }}
{{- end }}
{{- end }}<|eot_id|>
{{- end }}
{{- range $i, $m := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>

{{ if .ToolCalls }}
{{- range .ToolCalls }}{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}
{{- end }}
{{- else }}{{ .Content }}
{{- end }}
{{- if not $last }}<|eot_id|>{{ end }}
{{- else if eq $m.Role "tool" }}<|start_header_id|>ipython<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}
{{- end }}"""

# The same prompt format written by hand in Jinja, Hugging Face style.
JINJA_LLAMA = (
    "{% set sys = messages | selectattr('role', 'equalto', 'system')"
    " | map(attribute='content') | join('\\n\\n') %}"
    "{% if sys or tools %}{{ '<|start_header_id|>system<|end_header_id|>' }}"
    "{% if sys %}{{ '\\n\\n' + sys }}{% endif %}"
    "{% if tools %}{{ '\\n\\nTools:' }}{% for t in tools %}"
    "{{ '\\n' + t | tojson(separators=(',', ':')) }}{% endfor %}{% endif %}"
    "{{ '<|eot_id|>' }}{% endif %}"
    "{% for m in messages %}"
    "{% if m.role == 'user' %}"
    "{{ '<|start_header_id|>user<|end_header_id|>\\n\\n' + m.content + '<|eot_id|>' }}"
    "{% if loop.last %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    "{% elif m.role == 'assistant' %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}"
    '{{ \'{"name": "\' + c.function.name + \'", "parameters": \' }}'
    "{{ c.function.arguments | tojson(separators=(',', ':')) + '}' }}{% endfor %}"
    "{% else %}{{ m.content }}{% endif %}"
    "{% if not loop.last %}{{ '<|eot_id|>' }}{% endif %}"
    "{% elif m.role == 'tool' %}"
    "{{ '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + m.content + '<|eot_id|>' }}"
    "{% if loop.last %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    "{% endif %}{% endfor %}"
)

# A legacy (Prompt/Response) template, as many older Modelfiles carry.
GO_LEGACY = (
    "{{ if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}"
    "{{ if .Prompt }}<|user|>\n{{ .Prompt }}<|end|>\n{{ end }}"
    "<|assistant|>\n{{ .Response }}<|end|>\n"
)
JINJA_LEGACY = (
    "{% for m in messages %}"
    "{% if m.role == 'system' %}{{ '<|system|>\\n' + m.content + '<|end|>\\n' }}"
    "{% elif m.role == 'user' %}{{ '<|user|>\\n' + m.content + '<|end|>\\n<|assistant|>\\n' }}"
    "{% else %}{{ m.content }}{% if not loop.last %}{{ '<|end|>\\n' }}{% endif %}"
    "{% endif %}{% endfor %}"
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "required": ["city"],
                "properties": {"city": {"type": "string", "description": "City name"}},
            },
        },
    }
]

# Go's json escapes <, >, & and U+2028/U+2029 (for JavaScript), Jinja's tojson does
# not: the twins differ only there (hypothesis found U+2028).
text = st.text(st.characters(codec="utf-8", exclude_characters="<>&\u2028\u2029"), max_size=20)
words = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)


@st.composite
def conversations(draw: st.DrawFn) -> list[Message]:
    """system?, then user turns answered by text or a tool call plus its result; the last
    turn may stop after the user, the tool result or an assistant prefill."""
    messages: list[Message] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(text)})
    for _ in range(draw(st.integers(1, 4))):
        messages.append({"role": "user", "content": draw(text)})
        if draw(st.booleans()):
            args = draw(st.dictionaries(st.sampled_from(["city", "unit"]), text, max_size=2))
            call = {"function": {"name": "get_weather", "arguments": args}}
            messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            messages.append({"role": "tool", "content": draw(text), "tool_name": "get_weather"})
        messages.append({"role": "assistant", "content": draw(text)})
    return messages[: len(messages) - draw(st.integers(0, 1))]


@settings(max_examples=60, deadline=None)
@given(conversations(), st.booleans())
def test_llama_style_go_template_renders_like_its_jinja_twin(
    messages: list[Message], with_tools: bool
) -> None:
    go, jinja = ChatTemplate.from_modelfile(GO_LLAMA), ChatTemplate.compile(JINJA_LLAMA)
    assert go.syntax == "go" and go.supports_tools
    tools = TOOLS if with_tools else None
    assert go.render(messages, tools=tools) == jinja.render(messages, tools=tools)


@settings(max_examples=60, deadline=None)
@given(
    st.booleans(),
    st.lists(st.tuples(words, words), min_size=1, max_size=4),
    st.booleans(),
    words,
)
def test_legacy_go_template_renders_like_its_jinja_twin(
    with_system: bool, turns: list[tuple[str, str]], prefill: bool, system: str
) -> None:
    messages: list[Message] = [{"role": "system", "content": system}] if with_system else []
    for question, answer in turns:
        messages += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    if not prefill:
        messages.pop()
    go, jinja = ChatTemplate.from_modelfile(GO_LEGACY), ChatTemplate.compile(JINJA_LEGACY)
    assert go.render(messages) == jinja.render(messages)


def test_llama_style_example() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    assert ChatTemplate.from_modelfile(GO_LLAMA).render(messages) == (
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWeather in Paris?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def go(source: str, **root: Any) -> str:
    template = ChatTemplate.compile(source, syntax="go")
    assert template._go is not None
    return template._go.execute(root)


@pytest.mark.parametrize(
    ("source", "root", "expected"),
    [
        ("a  {{- .X -}}  b", {"X": 1}, "a1b"),
        ("a {{- /* note */ -}} b", {}, "ab"),
        ("{{ if .A }}a{{ else if .B }}b{{ else }}c{{ end }}", {"B": [1]}, "b"),
        ("{{ range .L }}{{ . }}{{ else }}none{{ end }}", {"L": []}, "none"),
        ("{{ range $i, $v := .L }}{{ $i }}={{ $v }};{{ end }}", {"L": ["a", "b"]}, "0=a;1=b;"),
        ("{{ range $k, $v := .M }}{{ $k }}{{ $v }}{{ end }}", {"M": {"b": 2, "a": 1}}, "a1b2"),
        (
            "{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}"
            "{{ if eq . 4 }}{{ break }}{{ end }}"
            "{{ . }}{{ end }}",
            {"L": [1, 2, 3, 4, 5]},
            "13",
        ),
        ("{{ range .L }}{{ $.P }}{{ . }}{{ end }}", {"L": [1, 2], "P": "-"}, "-1-2"),
        ("{{ $x := 1 }}{{ if .A }}{{ $x = 2 }}{{ end }}{{ $x }}", {"A": True}, "2"),
        ("{{ with .A }}{{ .B }}{{ else }}no{{ end }}", {"A": {"B": "yes"}}, "yes"),
        ("{{ with .A }}{{ .B }}{{ else }}no{{ end }}", {"A": {}}, "no"),
        ('{{ if eq .R "user" "tool" }}u{{ end }}{{ if ne .R "x" }}n{{ end }}', {"R": "tool"}, "un"),
        ("{{ and .A .B }}|{{ or .A .B }}|{{ not .A }}", {"A": "", "B": "b"}, "|b|true"),
        (
            "{{ len .S }} {{ len .L }} {{ index .L 1 }} {{ slice .L 1 }}",
            {"S": "é", "L": [1, 2, 3]},
            "2 3 2 [2 3]",
        ),
        (
            '{{ lt 1 2 }} {{ ge 1 2 }} {{ print 1 2 }} {{ printf "%s=%d" .K 3 }}',
            {"K": "k"},
            "true false 1 2 k=3",
        ),
        ('{{ "a\\tb" }}{{ `raw\\n` }}{{ 1.5 }} {{ 2.0 }} {{ nil }}', {}, "a\tbraw\\n1.5 2 "),
        ("{{ .Missing }}|{{ .Missing.Deeper }}", {}, "|"),
        (
            "{{ .Args }}|{{ json .Args }}",
            {"Args": {"q": "<a&b>", "n": 1.0}},
            '{"q":"\\u003ca\\u0026b\\u003e","n":1}|{"q":"\\u003ca\\u0026b\\u003e","n":1}',
        ),
        ("{{ .ToolCallID }} {{ .ToolName }}", {"tool_call_id": "c1", "tool_name": "t"}, "c1 t"),
        ("{{ (index .L 0).Name }}", {"L": [{"name": "n"}]}, "n"),
        ('{{ .X | printf "<%s>" }}', {"X": "v"}, "<v>"),
    ],
)
def test_go_semantics(source: str, root: dict[str, Any], expected: str) -> None:
    assert go(source, **root) == expected


def test_messages_mode_collates_like_ollama() -> None:
    source = "[{{ .System }}]{{ range .Messages }}{{ .Role }}:{{ .Content }};{{ end }}"
    messages = [
        {"role": "system", "content": "s1"},
        {"role": "system", "content": "s2"},
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
        {"role": "tool", "content": "t1"},
        {"role": "tool", "content": "t2"},
    ]
    text = ChatTemplate.from_modelfile(source).render(messages)
    assert text == "[s1\n\ns2]system:s1\n\ns2;user:a\n\nb;tool:t1;tool:t2;"


def test_legacy_template_without_response_gets_one_appended() -> None:
    # Ollama's default template: each turn's prompt and reply, system messages dropped.
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
    ]
    assert ChatTemplate.from_modelfile("{{ .Prompt }}").render(messages) == "U1A1U2"


def test_fill_in_the_middle_uses_prompt_and_suffix() -> None:
    template = ChatTemplate.from_modelfile(
        "{{ if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>"
        "{{ else }}{{ .Prompt }}{{ end }}"
    )
    assert template.supports_insert
    assert (
        template.render_insert("def f(", "    return x") == "<PRE> def f( <SUF>    return x <MID>"
    )


def test_think_flags() -> None:
    template = ChatTemplate.from_modelfile(
        "{{ .Think }}/{{ .IsThinkSet }}{{ range .Messages }}{{ end }}"
    )
    assert template.render([], think=True) == "true/true"
    assert template.render([]) == "false/false"


@pytest.mark.parametrize(
    ("source", "construct"),
    [
        ('{{ define "x" }}x{{ end }}', "define"),
        ('{{ template "x" . }}', "template"),
        ('{{ block "x" . }}x{{ end }}', "block"),
        ("{{ html .Prompt }}", "html"),
        ("{{ call .F }}", "call"),
        ("{{ upper .Prompt }}", "upper"),
        ("{{ if .Prompt }}x", "no {{end}}"),
        ("{{ .Prompt }}{{ end }}", "unexpected {{end}}"),
        ("{{ break }}", "outside"),
        ("{{ .Prompt", "unclosed action"),
        ("{{ .Prompt ! }}", "unexpected '!'"),
        ("{{ $a, $b := .X }}", "declaration"),
        ("{{ }}", "missing value"),
    ],
)
def test_unsupported_or_broken_constructs_are_refused_by_name(source: str, construct: str) -> None:
    with pytest.raises(InvalidTemplate, match=construct.replace("{", r"\{").replace("}", r"\}")):
        ChatTemplate.compile(source, syntax="go")


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("{{ .Prompt.Field 1 }}", "non-function"),
        ("{{ $nope }}", "undefined variable"),
        ("{{ len .N }}", "len of type int"),
        ("{{ index .L 5 }}", "out of range"),
        ("{{ range .S }}{{ end }}", "can't iterate"),
        ("{{ .S.Field }}", "can't evaluate field Field in type string"),
    ],
)
def test_render_errors_are_invalid_templates(source: str, problem: str) -> None:
    with pytest.raises(InvalidTemplate, match=problem):
        go(source, L=[1], S="text", Prompt="p", N=3)


def test_endless_range_is_stopped_by_the_step_budget() -> None:
    # The message names the step budget: the loop was cut short by it, not run out.
    with pytest.raises(InvalidTemplate, match="steps"):
        go("{{ range $i := 1000000000 }}{{ range $j := 1000000000 }}{{ end }}{{ end }}")
