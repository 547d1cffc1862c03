"""Model names: Ollama's rules, display forms, and that no name escapes the store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pollama.errors import InvalidModelName
from pollama.store.disk import Store
from pollama.store.names import ModelName

VALID = [
    ("llama3", ("registry.ollama.ai", "library", "llama3", "latest")),
    ("llama3:8b", ("registry.ollama.ai", "library", "llama3", "8b")),
    (
        "llama3.2:3b-instruct-q4_K_M",
        ("registry.ollama.ai", "library", "llama3.2", "3b-instruct-q4_K_M"),
    ),
    ("myns/model:tag", ("registry.ollama.ai", "myns", "model", "tag")),
    ("my_ns-2/model", ("registry.ollama.ai", "my_ns-2", "model", "latest")),
    ("host.io/ns/model:v1.0", ("host.io", "ns", "model", "v1.0")),
    ("localhost:5000/ns/model", ("localhost:5000", "ns", "model", "latest")),
    ("localhost:5000/ns/model:t", ("localhost:5000", "ns", "model", "t")),
    ("https://host.io/ns/model:t", ("host.io", "ns", "model", "t")),
    ("_private", ("registry.ollama.ai", "library", "_private", "latest")),
    ("a" * 80 + ":" + "b" * 80, ("registry.ollama.ai", "library", "a" * 80, "b" * 80)),
    ("h" * 350 + "/n/m", ("h" * 350, "n", "m", "latest")),
]

INVALID = [
    "",
    ":tag",
    "model:",
    "/model",
    "ns//model",
    "a/b/c/d",
    "../model",
    "ns/..",
    "..:latest",
    "model:..",
    "mod..el",
    "model/../../etc",
    "/etc/passwd",
    "ns\\model",
    "model\x00",
    "model\n",
    ".hidden",
    "-dash",
    "model:-tag",
    "model:.tag",
    "name.space/model",
    "model@sha256:" + "a" * 64,
    "mödel",
    "model name",
    "a" * 81,
    "model:" + "t" * 81,
    "h" * 351 + "/n/m",
    "ns/mo:del/x",
]


@pytest.mark.parametrize(("text", "parts"), VALID)
def test_valid_names_parse_to_their_parts(text: str, parts: tuple[str, str, str, str]) -> None:
    assert ModelName.parse(text).manifest_parts() == parts


@pytest.mark.parametrize("text", INVALID)
def test_invalid_names_are_refused(text: str) -> None:
    with pytest.raises(InvalidModelName):
        ModelName.parse(text)


def test_refused_name_is_quoted_as_typed() -> None:
    with pytest.raises(InvalidModelName, match=r"'\.\./evil'"):
        ModelName.parse("../evil")


def test_constructor_validates_too() -> None:
    with pytest.raises(InvalidModelName):
        ModelName("registry.ollama.ai", "library", "..", "latest")


@pytest.mark.parametrize(
    ("text", "display"),
    [
        ("llama3", "llama3:latest"),
        ("library/llama3:8b", "llama3:8b"),
        ("registry.ollama.ai/library/llama3", "llama3:latest"),
        ("myns/model:tag", "myns/model:tag"),
        ("host.io/ns/model:tag", "host.io/ns/model:tag"),
        ("host.io/library/model", "host.io/library/model:latest"),
        ("REGISTRY.ollama.ai/Library/Model", "Model:latest"),
    ],
)
def test_display_omits_default_host_and_namespace(text: str, display: str) -> None:
    name = ModelName.parse(text)
    assert name.display == display
    assert str(name) == display


def test_key_matches_case_insensitively() -> None:
    a, b = ModelName.parse("MyNs/Llama3:Q4"), ModelName.parse("myns/llama3:q4")
    assert a != b
    assert a.key == b.key == "registry.ollama.ai/myns/llama3:q4"
    assert ModelName.parse("myns/llama3:q5").key != a.key


def test_full_form() -> None:
    assert ModelName.parse("llama3").full == "registry.ollama.ai/library/llama3:latest"


# -- traversal: whatever the text, a name's manifest lies inside the store -------------------

_NAME_CHARS = st.sampled_from("abcXYZ019_.-:/\\@\x00 ")
_PART = st.text(alphabet=st.sampled_from("abcXYZ019_.-"), min_size=1, max_size=12).filter(
    lambda s: s[0] not in ".-"
)


def _inside(store: Store, name: ModelName) -> bool:
    path = os.path.normpath(store.manifest_path(name))
    root = os.path.normpath(store.manifests_dir)
    # Exactly four components below manifests/: no part is a separator or "..".
    return Path(path).relative_to(root).parts == name.manifest_parts()


@given(
    namespace=_PART.filter(lambda s: "." not in s),
    model=_PART,
    tag=_PART,
)
def test_every_valid_name_stays_inside_the_store(namespace: str, model: str, tag: str) -> None:
    store = Store(Path("/srv/models"))
    try:
        name = ModelName.parse(f"{namespace}/{model}:{tag}")
    except InvalidModelName:
        assert ".." in model + tag  # the only rule the strategy does not avoid
        return
    assert (name.namespace, name.model, name.tag) == (namespace, model, tag)
    assert _inside(store, name)


@given(st.one_of(st.text(max_size=40), st.text(alphabet=_NAME_CHARS, max_size=40)))
def test_random_text_never_names_a_path_outside(text: str) -> None:
    store = Store(Path("/srv/models"))
    try:
        name = ModelName.parse(text)
    except InvalidModelName:
        return
    assert _inside(store, name)
    for part in name.manifest_parts():
        assert part not in (".", "..") and "/" not in part and "\\" not in part
        assert "\x00" not in part
