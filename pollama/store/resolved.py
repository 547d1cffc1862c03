"""What the model store hands out: a listed model, and a model resolved for serving."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pollama.store.manifest import Manifest
from pollama.store.names import ModelName


@dataclass(frozen=True)
class ModelEntry:
    """One stored model, as ``/api/tags`` lists it."""

    name: ModelName
    manifest: Manifest
    digest: str
    """Hex sha256 of the manifest file (no ``sha256:`` prefix), as /api/tags shows it."""
    size: int
    """Config plus every layer, in bytes."""
    modified_at: datetime
    config: Mapping[str, Any]
    """The config blob ({} when unreadable): format, family, parameter size, quantization."""


@dataclass(frozen=True)
class ResolvedModel:
    """Everything the server needs to load and prompt a stored model."""

    name: ModelName
    digest: str
    """Hex sha256 of the manifest file."""
    manifest: Manifest
    model_path: Path
    projector_paths: tuple[Path, ...]
    adapter_paths: tuple[Path, ...]
    template: str | None
    system: str | None
    parameters: Mapping[str, Any]
    messages: Sequence[Mapping[str, Any]]
    license: tuple[str, ...]
    config: Mapping[str, Any]
    modified_at: datetime
    size: int
    draft_path: Path | None = None
    """The draft model's GGUF (speculative decoding), when it has a DRAFT layer."""


def model_details(config: Mapping[str, Any], parent_model: str = "") -> dict[str, Any]:
    """The ``details`` object of /api/tags, /api/show and /api/ps, from a config blob."""
    family = config.get("model_family", "")
    families = config.get("model_families") or ([family] if family else None)
    return {
        "parent_model": parent_model,
        "format": config.get("model_format", "gguf"),
        "family": family,
        "families": families,
        "parameter_size": config.get("model_type", ""),
        "quantization_level": config.get("file_type", ""),
    }
