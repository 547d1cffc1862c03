"""Which layers a new model gets: the decisions of ``/api/create``, apart from the writing.

The weights come from an uploaded GGUF blob or from an existing model; the small
layers (template, system, parameters, messages, licenses) are written as blobs
here, since their digests are their content.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pollama.errors import InvalidModelfile
from pollama.ggufmeta import GGUFModel, read_model
from pollama.store.blobs import BlobStore
from pollama.store.manifest import (
    ADAPTER,
    DRAFT,
    LICENSE,
    MESSAGES,
    MODEL,
    PARAMS,
    PROJECTOR,
    SYSTEM,
    TEMPLATE,
    Layer,
    Manifest,
    digest_of,
    gguf_config,
    parse_digest,
    sort_layers,
    with_layers,
)


@dataclass(frozen=True)
class LayerPlan:
    layers: tuple[Layer, ...]
    config: Mapping[str, Any]
    """The config blob's contents, its rootfs naming ``layers``."""
    created: frozenset[str]
    """Digests of blobs this plan wrote (the rest already existed)."""


def plan_layers(
    blobs: BlobStore,
    *,
    model_blob: str | None,
    projector_blob: str | None,
    base: tuple[Manifest, Mapping[str, Any]] | None,
    draft_blob: str | None = None,
    base_params: Mapping[str, Any],
    template: str | None,
    system: str | None,
    parameters: Mapping[str, Any] | None,
    messages: Sequence[Mapping[str, Any]] | None,
    license: str | Sequence[str] | None,
    adapters: Sequence[str],
    report: Callable[[str], None],
) -> LayerPlan:
    """The layers and config of a model built from ``model_blob`` or ``base``, or from
    both: ``base``'s layers with ``model_blob`` as its weights (a quantized copy).

    ``base`` is the base model's manifest and config blob; ``base_params`` its params;
    ``draft_blob`` a draft model's GGUF (speculative decoding), kept as the DRAFT layer
    (its vocabulary checked against the weights' before: ``store.vocab``).
    """
    if model_blob is None and base is None:
        raise InvalidModelfile("a model is created from either a GGUF file or an existing model")
    small = _SmallLayers(blobs)
    layers: list[Layer] = list(base[0].layers) if base else []
    config: Mapping[str, Any] = base[1] if base else {}
    if model_blob is not None:
        report("parsing GGUF")
        model_layer, gguf = _gguf_layer(blobs, MODEL, model_blob)
        layers = [model_layer] + _without(layers, MODEL)
        described = gguf_config(
            family=gguf.architecture,
            parameter_size=gguf.parameter_size,
            file_type=gguf.file_type,
            layers=(),
        )
        config = {**config, **described}
    for media_type, blob in ((PROJECTOR, projector_blob), (DRAFT, draft_blob)):
        if blob is not None:
            layers = _without(layers, media_type) + [_gguf_layer(blobs, media_type, blob)[0]]
    if adapters:
        layers = _without(layers, ADAPTER) + [_gguf_layer(blobs, ADAPTER, a)[0] for a in adapters]
    for media_type, text in ((TEMPLATE, template), (SYSTEM, system)):
        if text is not None:
            layers = _without(layers, media_type) + small.of_texts(media_type, [text])
    if parameters is not None:
        # New values win; keys only the base model sets are kept (as Ollama merges).
        merged = {**base_params, **parameters}
        data = [_json_bytes(merged, sort_keys=True)] if merged else []
        layers = _without(layers, PARAMS) + small.of_bytes(PARAMS, data)
    if messages is not None:
        data = [_json_bytes(_checked_messages(messages))] if messages else []
        layers = _without(layers, MESSAGES) + small.of_bytes(MESSAGES, data)
    if license is not None:
        texts = [license] if isinstance(license, str) else list(license)
        layers = _without(layers, LICENSE) + small.of_texts(LICENSE, texts)
    ordered = sort_layers(layers)
    return LayerPlan(ordered, with_layers(config, ordered), frozenset(small.created))


class _SmallLayers:
    """Layers whose content is given (template, system, params, …), written as blobs;
    remembers which blobs it wrote that were not there before."""

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs
        self.created: set[str] = set()

    def of_bytes(self, media_type: str, contents: Sequence[bytes]) -> list[Layer]:
        layers = []
        for data in contents:
            if not self._blobs.has_blob(digest_of(data)):
                self.created.add(digest_of(data))
            layers.append(Layer(media_type, self._blobs.write_blob_bytes(data), len(data)))
        return layers

    def of_texts(self, media_type: str, texts: Sequence[str]) -> list[Layer]:
        """One layer per non-empty text (an empty one only removes the old layer)."""
        return self.of_bytes(media_type, [text.encode() for text in texts if text])


def _gguf_layer(blobs: BlobStore, media_type: str, digest: str) -> tuple[Layer, GGUFModel]:
    """A layer for an uploaded GGUF blob, checked to be one (InvalidModelFile if not,
    including when no blob has that digest)."""
    digest = parse_digest(digest)
    path = blobs.blob_path(digest)
    gguf = read_model(path)
    return Layer(media_type, digest, path.stat().st_size), gguf


def _without(layers: list[Layer], media_type: str) -> list[Layer]:
    return [layer for layer in layers if layer.media_type != media_type]


def _checked_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not all(
            isinstance(message.get(key), str) for key in ("role", "content")
        ):
            raise InvalidModelfile(f"message {i + 1} needs a string role and content")
        out.append(dict(message))
    return out


def _json_bytes(value: Any, *, sort_keys: bool = False) -> bytes:
    # Compact, as Ollama writes these layers; ensure_ascii=False keeps text readable.
    return json.dumps(
        value, separators=(",", ":"), sort_keys=sort_keys, ensure_ascii=False
    ).encode()
