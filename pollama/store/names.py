"""Model names: ``[host/][namespace/]model[:tag]``, by Ollama's rules.

A name becomes a path in the store (``manifests/<host>/<namespace>/<model>/<tag>``),
so every part is checked against a strict ASCII pattern before a ``ModelName``
can exist: a part can never be ``..``, hold a separator or a NUL, or be empty.
This is what keeps a name like ``../../etc/passwd`` (the CVE-2024-37032 class)
from ever reaching the filesystem; ``ModelName.__post_init__`` enforces it, so
no code path can build an unchecked name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pollama.errors import InvalidModelName

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

MAX_PART = 80
MAX_HOST = 350

# Explicit ASCII classes: str.isalnum() would admit Unicode letters and digits,
# which Ollama rejects and which may normalise differently on some filesystems.
_FIRST = "A-Za-z0-9_"
_NAMESPACE = re.compile(rf"[{_FIRST}][{_FIRST}-]*")
_MODEL = re.compile(rf"[{_FIRST}][{_FIRST}.-]*")
_TAG = _MODEL
# A host may carry a port (``localhost:5000``); a colon is harmless in a directory name.
_HOST = re.compile(rf"[{_FIRST}][{_FIRST}.:-]*")

_SCHEMES = ("https://", "http://")


@dataclass(frozen=True)
class ModelName:
    """A fully qualified, validated model name. Build one with ``ModelName.parse``."""

    host: str
    namespace: str
    model: str
    tag: str

    def __post_init__(self) -> None:
        problem = _problem(self.host, self.namespace, self.model, self.tag)
        if problem:
            raise InvalidModelName(self.full, problem)

    @classmethod
    def parse(cls, text: str) -> ModelName:
        """Parse a name, filling in Ollama's defaults; InvalidModelName if it breaks a rule."""
        if not text:
            raise InvalidModelName(text, "empty name")
        if "@" in text:
            raise InvalidModelName(text, "digest references (name@sha256:...) are not supported")
        rest = text
        for scheme in _SCHEMES:
            if rest.lower().startswith(scheme):
                rest = rest[len(scheme) :]
                break
        # The tag is after the last colon only when that colon follows the last slash:
        # in ``localhost:5000/ns/model`` the colon belongs to the host.
        tag = DEFAULT_TAG
        colon, slash = rest.rfind(":"), rest.rfind("/")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
        parts = rest.split("/")
        if len(parts) > 3:
            raise InvalidModelName(text, "too many '/' separated parts")
        host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
        if len(parts) == 3:
            host, namespace, model = parts
        elif len(parts) == 2:
            namespace, model = parts
        else:
            (model,) = parts
        # Checked here too so the error quotes the text the user typed, not our expansion.
        problem = _problem(host, namespace, model, tag)
        if problem:
            raise InvalidModelName(text, problem)
        return cls(host, namespace, model, tag)

    @property
    def full(self) -> str:
        """``host/namespace/model:tag``, every part present."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def display(self) -> str:
        """The short form Ollama shows: default host and namespace left out."""
        if self.host.lower() != DEFAULT_HOST:
            return self.full
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def key(self) -> str:
        """What two names must share to be the same model (Ollama matches case-insensitively)."""
        return self.full.lower()

    def manifest_parts(self) -> tuple[str, str, str, str]:
        """The four path components of this name's manifest under ``manifests/``."""
        return (self.host, self.namespace, self.model, self.tag)

    def __str__(self) -> str:
        return self.display


def _problem(host: str, namespace: str, model: str, tag: str) -> str:
    """What is wrong with these parts, or "" when they make a valid name."""
    checks = (
        ("host", host, _HOST, MAX_HOST),
        ("namespace", namespace, _NAMESPACE, MAX_PART),
        ("model", model, _MODEL, MAX_PART),
        ("tag", tag, _TAG, MAX_PART),
    )
    for kind, value, pattern, limit in checks:
        if not value:
            return f"empty {kind}"
        if len(value) > limit:
            return f"{kind} longer than {limit} characters"
        # fullmatch, not match + $: "$" also matches before a trailing newline.
        if pattern.fullmatch(value) is None:
            return f"{kind} {value!r} has characters a name cannot hold"
        # No part can be "." or ".." (the first character is never a dot), but a run of
        # dots is refused anyway: nothing legitimate needs it and path tools treat it
        # specially.
        if ".." in value:
            return f"{kind} {value!r} contains '..'"
    return ""
