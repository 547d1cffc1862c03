"""What a model can do, as ``/api/show`` lists it: derived from its GGUF and template alone.

    completion   it generates text (every model that is not an embedding-only encoder)
    embedding    it is an embedding model: it says how to pool, or is a BERT-style encoder
    rerank       its pooling ranks (``pooling_type`` 4): it scores (query, document) pairs;
                 listed alone, since it neither generates nor embeds (/api/embed refuses it)
    tools        its template reads ``tools``
    insert       its template reads ``suffix`` (fill-in-the-middle)
    vision       it has a vision projector llama.cpp's mtmd can load: a CLIP GGUF with a
                 vision encoder (a vision tower inside the model's own GGUF is not enough:
                 llama.cpp reads images only through a projector file)
    thinking     its template reads a thinking flag or a message's reasoning, or writes
                 thinking tags (``<think>``)

A pure function of its inputs, so the rules are tested without a server or a file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pollama.chat.reply import infer_thinking
from pollama.chat.template import ChatTemplate
from pollama.ggufmeta.model import RANK_POOLING

COMPLETION = "completion"
EMBEDDING = "embedding"
RERANK = "rerank"
TOOLS = "tools"
INSERT = "insert"
VISION = "vision"
THINKING = "thinking"

# Encoder-only architectures: they produce embeddings and cannot generate, whether or
# not the converter wrote a pooling type.
ENCODER_ARCHITECTURES = frozenset(
    {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "neo-bert", "modern-bert"}
)

# Names a template reads when it renders a thinking model: the flag it is given
# (Jinja ``enable_thinking``/``think``; Go ``.Think``, ``.IsThinkSet``) or the reasoning
# of earlier turns (Go ``.Thinking``). Go identifiers arrive lowercased.
_THINKING_VARIABLES = frozenset({"enable_thinking", "think", "thinking", "isthinkset"})
# Reasoning read from a message (``message.reasoning_content``, ``message['thinking']``)
# is an attribute, not a variable, so the source is searched for it.
_THINKING_SOURCE = re.compile(r"reasoning_content|\.thinking\b|\[\s*['\"]thinking['\"]\s*\]")


def is_embedding_model(metadata: Mapping[str, Any]) -> bool:
    """True for a model that embeds and does not generate."""
    architecture = str(metadata.get("general.architecture", ""))
    return f"{architecture}.pooling_type" in metadata or architecture in ENCODER_ARCHITECTURES


def is_reranker(metadata: Mapping[str, Any]) -> bool:
    """True for a model whose pooled output is a relevance score (llama.cpp's rank pooling)."""
    architecture = str(metadata.get("general.architecture", ""))
    return metadata.get(f"{architecture}.pooling_type") == RANK_POOLING


def has_vision_encoder(metadata: Mapping[str, Any]) -> bool:
    """True when the GGUF itself carries a vision tower (single-file multimodal models)."""
    architecture = str(metadata.get("general.architecture", ""))
    return f"{architecture}.vision.block_count" in metadata


def template_thinks(template: ChatTemplate) -> bool:
    """True when the template renders thinking: it reads a thinking flag or earlier
    reasoning, or writes thinking tags the reply parser knows."""
    return (
        bool(template.variables & _THINKING_VARIABLES)
        or bool(_THINKING_SOURCE.search(template.source))
        or infer_thinking(template.source) is not None
    )


def is_vision_projector(metadata: Mapping[str, Any]) -> bool:
    """True for a projector GGUF the runner can read images with: CLIP, with a vision
    encoder, of a named projector type (what mtmd checks first when it loads one)."""
    return (
        metadata.get("general.architecture") == "clip"
        and metadata.get("clip.has_vision_encoder") is True
        and bool(metadata.get("clip.projector_type") or metadata.get("clip.vision.projector_type"))
    )


IMAGES_WORK = True
"""Whether the runner reads images (through a projector, with llama.cpp's mtmd)."""


def capabilities(
    metadata: Mapping[str, Any],
    template: ChatTemplate | None,
    *,
    has_projector: bool = False,
    images_work: bool = IMAGES_WORK,
) -> list[str]:
    """The capabilities of a model with this GGUF ``metadata``, chat ``template`` (None when
    it has none) and, if ``has_projector``, a vision projector (``is_vision_projector``);
    in Ollama's order."""
    if is_reranker(metadata):
        return [RERANK]
    found = [EMBEDDING if is_embedding_model(metadata) else COMPLETION]
    if template is not None:
        if template.supports_tools:
            found.append(TOOLS)
        if template.supports_insert:
            found.append(INSERT)
    if images_work and has_projector:
        found.append(VISION)
    if template is not None and template_thinks(template):
        found.append(THINKING)
    return found
