"""Digests, manifests and config blobs in Ollama's on-disk formats.

A model is an OCI image manifest (schema 2) naming a config blob and a list of
layers, each a blob addressed by its sha256. The manifest's own digest is the
sha256 of its file's bytes, which is what ``/api/tags`` shows; so a manifest is
written once as bytes and copied byte for byte, never re-serialised.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pollama.errors import CorruptManifest, InvalidDigest

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"

_LAYER_PREFIX = "application/vnd.ollama.image."
MODEL = _LAYER_PREFIX + "model"
PROJECTOR = _LAYER_PREFIX + "projector"
ADAPTER = _LAYER_PREFIX + "adapter"
DRAFT = _LAYER_PREFIX + "draft"
"""A draft model's GGUF: a small model of the same vocabulary that drafts tokens for
this one to verify (speculative decoding). Ollama has no such layer yet; the name
follows its scheme."""
TEMPLATE = _LAYER_PREFIX + "template"
SYSTEM = _LAYER_PREFIX + "system"
PARAMS = _LAYER_PREFIX + "params"
MESSAGES = _LAYER_PREFIX + "messages"
LICENSE = _LAYER_PREFIX + "license"

# The order layers are written in: weights first, then the small text layers.
# Layers of a type not listed here (newer Ollama releases add some) keep their
# place after these.
LAYER_ORDER = (MODEL, PROJECTOR, DRAFT, ADAPTER, TEMPLATE, SYSTEM, PARAMS, MESSAGES, LICENSE)

_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")


def parse_digest(text: str) -> str:
    """``sha256:<hex>`` or ``sha256-<hex>`` (any case) as ``sha256:<lowercase hex>``."""
    # fullmatch: "$" would let a trailing newline through, and the hex becomes a file name.
    match = _DIGEST.fullmatch(text)
    if match is None:
        raise InvalidDigest(text)
    return "sha256:" + match.group(1).lower()


def digest_of(data: bytes) -> str:
    """The digest of some bytes, in ``sha256:<hex>`` form."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Layer:
    """One blob a manifest names: its media type, digest (``sha256:<hex>``) and size."""

    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest. Fields Ollama may add are ignored on reading."""

    config: Layer
    layers: tuple[Layer, ...]
    schema_version: int = 2
    media_type: str = MANIFEST_MEDIA_TYPE

    @property
    def size(self) -> int:
        """Bytes on disk: every layer plus the config blob (what /api/tags reports)."""
        return self.config.size + sum(layer.size for layer in self.layers)

    def layers_of(self, media_type: str) -> tuple[Layer, ...]:
        return tuple(layer for layer in self.layers if layer.media_type == media_type)

    def layer_of(self, media_type: str) -> Layer | None:
        """The last layer of a type: Ollama lets a later layer override an earlier one."""
        found = self.layers_of(media_type)
        return found[-1] if found else None

    def digests(self) -> set[str]:
        """Every blob this manifest references, the config included."""
        return {self.config.digest, *(layer.digest for layer in self.layers)}

    def to_bytes(self) -> bytes:
        """Compact JSON, as Ollama writes it (field order: schemaVersion, mediaType, ...)."""
        body = {
            "schemaVersion": self.schema_version,
            "mediaType": self.media_type,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        return json.dumps(body, separators=(",", ":")).encode()


def parse_manifest(data: bytes, where: str) -> Manifest:
    """A manifest from its file's bytes; CorruptManifest (naming ``where``) if unusable.

    Every digest is validated here, because digests become blob file names.
    """
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptManifest(where, f"not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise CorruptManifest(where, "not a JSON object")
    version = body.get("schemaVersion", 2)
    if version != 2:
        raise CorruptManifest(where, f"schemaVersion {version!r} is not 2")
    layers = body.get("layers", [])
    if not isinstance(layers, list):
        raise CorruptManifest(where, "layers is not a list")
    media_type = body.get("mediaType", MANIFEST_MEDIA_TYPE)
    return Manifest(
        config=_layer(body.get("config"), where, "config"),
        layers=tuple(_layer(item, where, f"layer {i}") for i, item in enumerate(layers)),
        media_type=media_type if isinstance(media_type, str) else MANIFEST_MEDIA_TYPE,
    )


def _layer(item: Any, where: str, what: str) -> Layer:
    if not isinstance(item, dict):
        raise CorruptManifest(where, f"{what} is not an object")
    media_type, digest, size = item.get("mediaType"), item.get("digest"), item.get("size")
    if not isinstance(media_type, str):
        raise CorruptManifest(where, f"{what} has no mediaType")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise CorruptManifest(where, f"{what} has no valid size")
    try:
        if not isinstance(digest, str):
            raise InvalidDigest(repr(digest))
        return Layer(media_type, parse_digest(digest), size)
    except InvalidDigest:
        raise CorruptManifest(where, f"{what} has an invalid digest {digest!r}") from None


def sort_layers(layers: Iterable[Layer]) -> tuple[Layer, ...]:
    """Layers in LAYER_ORDER, keeping the relative order of layers of one type."""
    rank = {media_type: i for i, media_type in enumerate(LAYER_ORDER)}
    return tuple(sorted(layers, key=lambda layer: rank.get(layer.media_type, len(rank))))


def gguf_config(
    *, family: str, parameter_size: str, file_type: str, layers: Iterable[Layer]
) -> dict[str, Any]:
    """The config blob Ollama writes for a GGUF model."""
    return with_layers(
        {
            "model_format": "gguf",
            "model_family": family,
            "model_families": [family],
            "model_type": parameter_size,
            "file_type": file_type,
            "architecture": "amd64",
            "os": "linux",
        },
        layers,
    )


def with_layers(config: Mapping[str, Any], layers: Iterable[Layer]) -> dict[str, Any]:
    """A copy of a config blob with its rootfs naming these layers."""
    out = dict(config)
    out["rootfs"] = {"type": "layers", "diff_ids": [layer.digest for layer in layers]}
    return out


def config_bytes(config: Mapping[str, Any]) -> bytes:
    return json.dumps(config, separators=(",", ":")).encode()
