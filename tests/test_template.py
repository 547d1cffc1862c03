"""Jinja chat templates: the demo model's real template, the sandbox and its limits,
syntax detection, template selection and special tokens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gguf
import pytest
from gguf_files import write_gguf

from pollama.chat.template import ChatTemplate, detect_syntax, special_tokens, template_for
from pollama.demo import demo_model_path
from pollama.errors import InvalidModelFile, InvalidTemplate
from pollama.ggufmeta import GGUFModel, read_model

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chatml(*turns: tuple[str, str], generation_prompt: bool = True) -> str:
    text = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns)
    return text + ("<|im_start|>assistant\n" if generation_prompt else "")


@pytest.fixture(scope="module")
def demo() -> ChatTemplate:
    template = template_for(read_model(demo_model_path()), None)
    assert template is not None
    return template


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


# -- the demo model's GGUF template (ChatML with a default system prompt) ----------------------


def test_demo_one_turn_gets_the_default_system_prompt(demo: ChatTemplate) -> None:
    assert demo.syntax == "jinja"
    assert demo.render([user("Hi")]) == chatml(("system", SMOL_SYSTEM), ("user", "Hi"))


def test_demo_given_system_replaces_the_default(demo: ChatTemplate) -> None:
    text = demo.render([system("Be terse."), user("Hi")])
    assert text == chatml(("system", "Be terse."), ("user", "Hi"))


def test_demo_multi_turn(demo: ChatTemplate) -> None:
    messages = [user("Hi"), assistant("Hello!"), user("2+2?"), assistant("4"), user("Thanks")]
    expected = chatml(
        ("system", SMOL_SYSTEM),
        ("user", "Hi"),
        ("assistant", "Hello!"),
        ("user", "2+2?"),
        ("assistant", "4"),
        ("user", "Thanks"),
    )
    assert demo.render(messages) == expected


@pytest.mark.parametrize("generation_prompt", [True, False])
def test_demo_generation_prompt_on_and_off(demo: ChatTemplate, generation_prompt: bool) -> None:
    messages = [system("S"), user("Hi"), assistant("Yo")]
    text = demo.render(messages, add_generation_prompt=generation_prompt)
    turns = (("system", "S"), ("user", "Hi"), ("assistant", "Yo"))
    assert text == chatml(*turns, generation_prompt=generation_prompt)


def test_demo_continue_final_message_ends_inside_it(demo: ChatTemplate) -> None:
    text = demo.render([user("Hi"), assistant("The answer is")], continue_final_message=True)
    assert text == chatml(("system", SMOL_SYSTEM), ("user", "Hi")) + "The answer is"


def test_demo_special_tokens() -> None:
    demo = read_model(demo_model_path())
    assert special_tokens(demo) == ("<|im_start|>", "<|im_end|>")
    assert special_tokens(demo) == ("<|im_start|>", "<|im_end|>")  # cached


def test_special_tokens_of_a_small_vocabulary(tmp_path: Path) -> None:
    def vocab(writer: gguf.GGUFWriter) -> None:
        writer.add_token_list(["<unk>", "<s>", "</s>", "a"])
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)

    path = write_gguf(tmp_path / "vocab.gguf", "llama", vocab)
    assert special_tokens(read_model(path)) == ("<s>", "</s>")
    # The same vocabulary read as a TruncatedArray: the two items are read from the file.
    assert special_tokens(read_model(path, max_array_len=1)) == ("<s>", "</s>")
    assert special_tokens(read_model(write_gguf(tmp_path / "none.gguf", "llama"))) == ("", "")

    def bad_ids(writer: gguf.GGUFWriter) -> None:
        writer.add_token_list(["<unk>", "a", "b"])
        writer.add_bos_token_id(7)  # out of range: no token, rather than an IndexError
        writer.add_eos_token_id(2)

    bad = write_gguf(tmp_path / "bad.gguf", "llama", bad_ids)
    assert special_tokens(read_model(bad)) == ("", "b")
    assert special_tokens(read_model(bad, max_array_len=1)) == ("", "b")


def test_special_tokens_of_a_file_gone_since_its_header_was_read(tmp_path: Path) -> None:
    def vocab(writer: gguf.GGUFWriter) -> None:
        writer.add_token_list(["<unk>", "<s>", "</s>"])
        writer.add_bos_token_id(1)

    path = write_gguf(tmp_path / "gone.gguf", "llama", vocab)
    model = read_model(path, max_array_len=1)
    path.unlink()
    with pytest.raises(InvalidModelFile, match="gone.gguf"):
        special_tokens(model)


# -- selection and syntax --------------------------------------------------------------------


def model_with(metadata: dict[str, object]) -> GGUFModel:
    return GGUFModel(Path("x.gguf"), 3, 0, 0, {"general.architecture": "llama", **metadata}, ())


def test_template_for_prefers_the_modelfile_then_the_gguf_then_none() -> None:
    gguf = model_with({"tokenizer.chat_template": "{{ messages[0].content }}"})
    assert template_for(gguf, None).render([user("a")]) == "a"  # type: ignore[union-attr]
    modelfile = template_for(gguf, "[{{ .Prompt }}]")
    assert modelfile is not None and modelfile.syntax == "go"
    assert modelfile.render([user("a")]) == "[a]"
    assert template_for(model_with({}), None) is None
    assert template_for(model_with({}), "") is None


@pytest.mark.parametrize(
    ("source", "syntax"),
    [
        ("{{ .Prompt }}", "go"),
        ("{{- range .Messages }}{{ .Content }}{{ end }}", "go"),
        ('{{ if eq .Role "user" }}x{{ end }}', "go"),
        ("{{ $.System }}", "go"),
        ("{{ json .Function.Arguments }}", "go"),
        ("{{/* a comment */}}", "go"),
        ("no actions at all", "go"),
        ("{% for m in messages %}{{ m.content }}{% endfor %}", "jinja"),
        ("{{ bos_token }}{{ messages[0]['content'] }}", "jinja"),
        ("{{ messages[0].content }}", "jinja"),
        ("{# comment #}{{ x }}", "jinja"),
    ],
)
def test_detect_syntax(source: str, syntax: str) -> None:
    assert detect_syntax(source) == syntax


def test_variables_tell_tools_and_insert_support() -> None:
    plain = ChatTemplate.compile("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert not plain.supports_tools and not plain.supports_insert
    tools = ChatTemplate.compile("{% if tools %}{{ tools | tojson }}{% endif %}{{ suffix }}")
    assert tools.supports_tools and tools.supports_insert


def test_compile_error_names_the_problem() -> None:
    with pytest.raises(InvalidTemplate, match="line 2"):
        ChatTemplate.compile("ok\n{% for m in %}")
    with pytest.raises(InvalidTemplate, match="endfor|end of template"):
        ChatTemplate.compile("{% for m in messages %}")


def test_compile_is_cached() -> None:
    source = "{{ messages | length }}"
    assert ChatTemplate.compile(source) is ChatTemplate.compile(source)


# -- what HF templates use ---------------------------------------------------------------------


def render(source: str, messages: Sequence[Mapping[str, Any]] = (), **extra: Any) -> str:
    return ChatTemplate.compile(source).render(messages, **extra)


def test_tojson_keeps_non_ascii_and_indents() -> None:
    assert render("{{ x | tojson }}", x={"é": "ü<>"}) == '{"é": "ü<>"}'
    assert render("{{ x | tojson(indent=2) }}", x=[1]) == "[\n  1\n]"
    assert render("{{ m.missing | tojson }}", m={}) == "null"


def test_raise_exception_is_an_invalid_template() -> None:
    with pytest.raises(InvalidTemplate, match="Only user and assistant roles"):
        render("{{ raise_exception('Only user and assistant roles') }}")


def test_helpers_loop_controls_namespace_and_generation_tag() -> None:
    assert render("{{ strftime_now('%Y') | length }}") == "4"
    source = (
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% if m.role == 'system' %}"
        "{% continue %}{% endif %}{% set ns.n = ns.n + 1 %}{% generation %}{{ m.content }}"
        "{% endgeneration %}{% if ns.n == 2 %}{% break %}{% endif %}{% endfor %}"
    )
    assert render(source, [system("s"), user("a"), assistant("b"), user("c")]) == "ab"


def test_messages_drop_empty_fields_and_gain_hf_names() -> None:
    source = (
        "{% for m in messages %}{{ m.tool_calls is defined }}/{{ m.name }}/"
        "{{ m.reasoning_content }};{% endfor %}"
    )
    messages: list[dict[str, Any]] = [
        {"role": "assistant", "content": "", "tool_calls": [], "thinking": "hm"},
        {"role": "tool", "content": "42", "tool_name": "calc"},
    ]
    assert render(source, messages) == "False//hm;False/calc/;"


def test_think_reaches_jinja_as_enable_thinking() -> None:
    assert render("{{ enable_thinking }}/{{ think }}", think=False) == "False/False"
    assert render("{{ enable_thinking is defined }}") == "False"


# -- the sandbox -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ ''.__class__.__mro__ }}",
        "{{ messages.__class__.__base__.__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ (messages.append(1)) }}",
    ],
)
def test_sandbox_refuses_internals_and_mutation(source: str) -> None:
    with pytest.raises(InvalidTemplate, match="unsafe"):
        render(source, [user("x")])


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        # CPU: loops that would run for hours are stopped by the step budget.
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "steps",
        ),
        ("{% macro f(n) %}{{ f(n) }}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursion|steps"),
        # Memory: values are checked before the operations that multiply them.
        ("{{ 'a' * 1000000000 }}", "exceed"),
        ("{{ [1, 2] * 1000000000 }}", "exceed"),
        ("{{ 9 ** 999999999 }}", "too large"),
        (
            "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
            "{% endfor %}",
            "exceed",
        ),
        (
            "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
            "{% endfor %}",
            "exceed",
        ),
        ("{{ 'x'.center(1000000000) }}", "exceed"),
        ("{{ 'x' | center(1000000000) }}", "exceed"),
        ("{{ '{:>1000000000}'.format(1) }}", "exceed"),
        ("{{ '%1000000000d' % 1 }}", "exceed"),
        ("{{ ('a' * 1000000) | replace('', 'bbbbbbbbbbbbbbbbbbbb') }}", "exceed"),
        # Output: straight to the output cap, or built up in a buffer first.
        ("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "output exceeds"),
        (
            "{% set s %}{% for i in range(99999) %}{{ big }}{% endfor %}{% endset %}{{ s|length }}",
            "more than",
        ),
    ],
)
def test_sandbox_bounds_time_and_size(source: str, problem: str) -> None:
    # Each message names the budget that stopped the template (steps, size, output).
    with pytest.raises(InvalidTemplate, match=problem):
        render(source, big="y" * 4_000_000)


def test_guarded_operations_still_work_with_all_their_arguments() -> None:
    source = (
        "{{ 'x'.ljust(3, '-') }}|{{ 'aa'.replace('a', 'b', 1) }}|{{ 'a\tb'.expandtabs(tabsize=2) }}"
        "|{{ 'x' | center(3) }}|{{ 'a\nb' | indent(2, first=True) }}|{{ [1, 2] | join(', ') }}"
        "|{{ [1, 2, 3] | batch(2) | list }}|{{ '%-3s|' % 'x' }}{{ '{:>3}'.format('y') }}"
        "|{{ 'ab' * 2 }}{{ [0] * 2 }}{{ 2 ** 10 }}|{{ 'a' ~ 1 ~ none }}"
    )
    expected = "x--|ba|a b| x |  a\n  b|1, 2|[[1, 2], [3]]|x  |  y|abab[0, 0]1024|a1None"
    assert render(source) == expected


def test_sandbox_budget_is_per_render() -> None:
    # 60k iterations: well inside one budget, so rendering it many times must keep working.
    template = ChatTemplate.compile("{% for i in range(60000) %}{% endfor %}ok")
    assert [template.render([]) for _ in range(5)] == ["ok"] * 5


def test_ordinary_long_chat_fits_the_budget(demo: ChatTemplate) -> None:
    messages = [
        user("question " * 50) if i % 2 == 0 else assistant("answer " * 50) for i in range(2001)
    ]
    assert demo.render(messages).count("<|im_start|>") == 2003
