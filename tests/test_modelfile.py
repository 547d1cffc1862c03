"""Modelfiles (parse, render, round trip) and the option table behind PARAMETER and options."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pollama.errors import BadRequest, InvalidModelfile, InvalidOption
from pollama.options.parameters import (
    OPTIONS,
    OptionType,
    ParameterValue,
    parse_parameter,
    validate_options,
)
from pollama.store.disk import ResolvedModel
from pollama.store.manifest import CONFIG_MEDIA_TYPE, Layer, Manifest
from pollama.store.modelfile import Modelfile, modelfile_for, parameters_text, parse_modelfile
from pollama.store.names import ModelName

EXAMPLE = '''# a chat model
FROM llama3.2:3b

parameter temperature 0.7
PARAMETER stop "<|im_end|>"
PARAMETER stop <|eot_id|>
PARAMETER num_ctx 8192
PARAMETER use_mmap false
Template """{{ if .System }}<|system|>{{ .System }}{{ end }}
{{ .Prompt }}"""
SYSTEM "You are \\"terse\\".
Answer in C:\\dir style."
ADAPTER ./lora.gguf
MESSAGE user   Is the sky blue?
MESSAGE Assistant """Yes."""
LICENSE """MIT
"""
LICENSE Apache-2.0
'''


def test_parse_example() -> None:
    mf = parse_modelfile(EXAMPLE)
    assert mf.from_ == "llama3.2:3b"
    assert mf.parameters == (
        ("temperature", 0.7),
        ("stop", "<|im_end|>"),
        ("stop", "<|eot_id|>"),
        ("num_ctx", 8192),
        ("use_mmap", False),
    )
    assert mf.parameter_dict() == {
        "temperature": 0.7,
        "stop": ["<|im_end|>", "<|eot_id|>"],
        "num_ctx": 8192,
        "use_mmap": False,
    }
    assert mf.template == "{{ if .System }}<|system|>{{ .System }}{{ end }}\n{{ .Prompt }}"
    assert mf.system == 'You are "terse".\nAnswer in C:\\dir style.'
    assert mf.adapters == ("./lora.gguf",)
    assert mf.messages == (("user", "Is the sky blue?"), ("assistant", "Yes."))
    assert mf.licenses == ("MIT\n", "Apache-2.0")


def test_render_round_trips_the_example() -> None:
    mf = parse_modelfile(EXAMPLE)
    text = mf.render()
    assert parse_modelfile(text) == mf
    assert 'TEMPLATE """{{ if .System }}' in text
    assert "PARAMETER stop <|im_end|>\nPARAMETER stop <|eot_id|>" in text


def test_windows_line_endings() -> None:
    mf = parse_modelfile('FROM x\r\nSYSTEM """a\r\nb"""\r\nPARAMETER top_k 5\r\n')
    assert mf.system == "a\nb" and mf.parameters == (("top_k", 5),)


def test_later_template_and_system_replace_earlier() -> None:
    mf = parse_modelfile("FROM x\nSYSTEM one\nSYSTEM two\n")
    assert mf.system == "two"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM x\nFORM y\n", "line 2: unknown command 'FORM'"),
        ("# only a comment\nSYSTEM hi\n", "no FROM line"),
        ("FROM x\nFROM y\nFROM z\n", "line 3: a third FROM"),
        ("FROM x\n\nPARAMETER temperature\n", "line 3: PARAMETER needs a name and a value"),
        ("FROM x\nPARAMETER nonsense 1\n", "line 2: unknown parameter 'nonsense'"),
        ("FROM x\nPARAMETER num_ctx 1.5\n", "line 2: invalid int value '1.5'"),
        ("FROM x\nPARAMETER top_p high\n", "line 2: invalid float value"),
        ("FROM x\nPARAMETER use_mmap maybe\n", "line 2: invalid bool value"),
        ("FROM x\nMESSAGE tool hi\n", "line 2: MESSAGE role must be"),
        ("FROM x\nMESSAGE user\n", "line 2: MESSAGE needs a role and content"),
        (
            'FROM x\nTEMPLATE """abc\n\nno end\n',
            'line 2: TEMPLATE: """ opened here is never closed',
        ),
        ('FROM x\nSYSTEM "abc\n', 'line 2: SYSTEM: the " opened here is never closed'),
        ('FROM x\nSYSTEM """a""" trailing\n', "line 2: SYSTEM: unexpected text"),
        ("FROM\n", "line 1: FROM needs a value"),
    ],
)
def test_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(InvalidModelfile) as info:
        parse_modelfile(text)
    assert message in str(info.value)


# -- round trip over generated Modelfiles ----------------------------------------------------

# "\r\n" reads back as "\n" (Windows line endings), so values never contain that pair.
_TEXT = st.text(max_size=30).filter(lambda s: "\r\n" not in s)
_TYPED: dict[OptionType, st.SearchStrategy[Any]] = {
    OptionType.INT: st.integers(min_value=-(2**63), max_value=2**63),
    OptionType.FLOAT: st.floats(allow_nan=False, allow_infinity=False),
    OptionType.BOOL: st.booleans(),
    OptionType.STRING_LIST: _TEXT,
}
_PARAMETER = st.sampled_from(sorted(OPTIONS)).flatmap(
    lambda key: st.tuples(st.just(key), _TYPED[OPTIONS[key].type])
)
_MODELFILES = st.builds(
    Modelfile,
    from_=_TEXT,
    parameters=st.lists(_PARAMETER, max_size=6).map(tuple),
    template=st.none() | _TEXT,
    system=st.none() | _TEXT,
    adapters=st.lists(_TEXT, max_size=2).map(tuple),
    licenses=st.lists(_TEXT, max_size=2).map(tuple),
    messages=st.lists(
        st.tuples(st.sampled_from(["system", "user", "assistant"]), _TEXT), max_size=3
    ).map(tuple),
)


@given(_MODELFILES)
def test_render_then_parse_is_identity(mf: Modelfile) -> None:
    assert parse_modelfile(mf.render()) == mf


@given(st.text(max_size=200))
def test_parser_fails_only_with_invalid_modelfile(text: str) -> None:
    try:
        parse_modelfile(text)
    except InvalidModelfile:
        pass


# -- the Modelfile /api/show returns ---------------------------------------------------------


def resolved(tmp_path: Path) -> ResolvedModel:
    layer = Layer("application/vnd.ollama.image.model", "sha256:" + "a" * 64, 10)
    manifest = Manifest(config=Layer(CONFIG_MEDIA_TYPE, "sha256:" + "b" * 64, 2), layers=(layer,))
    return ResolvedModel(
        name=ModelName.parse("me/smol:chat"),
        digest="c" * 64,
        manifest=manifest,
        model_path=tmp_path / "blobs" / ("sha256-" + "a" * 64),
        projector_paths=(),
        adapter_paths=(),
        template="{{ .Prompt }}",
        system="Be brief.",
        parameters={"stop": ["<|im_end|>", "</s>"], "temperature": 0.2},
        messages=[{"role": "user", "content": "Hi"}],
        license=("MIT",),
        config={},
        modified_at=datetime.now(UTC),
        size=12,
    )


def test_modelfile_for_a_stored_model(tmp_path: Path) -> None:
    model = resolved(tmp_path)
    text = modelfile_for(model)
    assert text.startswith("# ")
    assert "# FROM me/smol:chat\n" in text
    mf = parse_modelfile(text)  # comments and all, it parses
    assert mf.from_ == str(model.model_path)
    assert mf.template == "{{ .Prompt }}" and mf.system == "Be brief."
    assert mf.parameter_dict() == model.parameters
    assert mf.messages == (("user", "Hi"),) and mf.licenses == ("MIT",)
    body = text[text.index("FROM /") :]
    order = [line.split()[0] for line in body.splitlines() if line and not line[0].isspace()]
    assert order == ["FROM", "TEMPLATE", "PARAMETER", "PARAMETER", "PARAMETER"] + [
        "SYSTEM",
        "MESSAGE",
        "LICENSE",
    ]


def test_parameters_text() -> None:
    text = parameters_text({"temperature": 0.2, "stop": ["a", 'b"']})
    assert text.splitlines() == [
        "stop" + " " * 27 + '"a"',
        "stop" + " " * 27 + '"b\\""',
        "temperature" + " " * 20 + "0.2",
    ]


# -- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "text", "value"),
    [
        ("num_ctx", "4096", 4096),
        ("seed", "-1", -1),
        ("temperature", "0.5", 0.5),
        ("top_p", "1", 1.0),
        ("min_p", "1e-3", 0.001),
        ("use_mmap", "True", True),
        ("penalize_newline", "0", False),
        ("stop", "###", "###"),
    ],
)
def test_parse_parameter(key: str, text: str, value: ParameterValue) -> None:
    parsed = parse_parameter(key, text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(
    ("key", "text"),
    [("num_ctx", "1_000"), ("num_ctx", "4k"), ("temperature", "nan"), ("use_mmap", "yes")],
)
def test_parse_parameter_refuses(key: str, text: str) -> None:
    with pytest.raises(InvalidOption):
        parse_parameter(key, text)


def test_validate_options_types_and_messages() -> None:
    options = {"num_ctx": 2048.0, "temperature": 1, "stop": ["a"], "use_mmap": True}
    out = validate_options({**options, "bogus": 1, "seed": None})
    assert out == {"num_ctx": 2048, "temperature": 1.0, "stop": ["a"], "use_mmap": True}
    assert type(out["num_ctx"]) is int and type(out["temperature"]) is float
    for options, message in [
        ({"stop": "a"}, 'option "stop" must be of type array'),
        ({"stop": [1]}, 'option "stop" must be of an array of strings'),
        ({"num_ctx": "2048"}, 'option "num_ctx" must be of type integer'),
        ({"num_ctx": True}, 'option "num_ctx" must be of type integer'),
        ({"temperature": "hot"}, 'option "temperature" must be of type float32'),
        ({"use_mmap": 1}, 'option "use_mmap" must be of type boolean'),
    ]:
        with pytest.raises(InvalidOption) as info:
            validate_options(options)
        assert str(info.value) == message
        assert isinstance(info.value, BadRequest)  # a 400
