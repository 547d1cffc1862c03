"""Fail closed: what a model cannot do is a 400 that names it, through every API, never
silently dropped. Images (native ``images``, OpenAI ``image_url``, Anthropic ``image``
blocks, Responses ``input_image``) for a model without a vision projector. A model
created with an ADAPTER is served. In-process tier (``inprocess``). Images for a vision
model: ``test_images.py``; adapters: ``test_lora.py``."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from gguf_files import write_gguf
from inprocess import InProcess

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n not really").decode()
DATA_URL = f"data:image/png;base64,{PNG}"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[InProcess]:
    app = InProcess(tmp_path)
    with app:
        yield app


@pytest.fixture
def client(app: InProcess) -> TestClient:
    return app.client


def with_image(model: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """The same request carrying one image, in each API's own way."""
    return {
        "generate": ("/api/generate", {"model": model, "prompt": "What is it?", "images": [PNG]}),
        "chat": (
            "/api/chat",
            {"model": model, "messages": [{"role": "user", "content": "Hi", "images": [PNG]}]},
        ),
        "openai": (
            "/v1/chat/completions",
            {
                "model": model,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is it?"},
                            {"type": "image_url", "image_url": {"url": DATA_URL}},
                        ],
                    }
                ],
            },
        ),
        "anthropic": (
            "/v1/messages",
            {
                "model": model,
                "max_tokens": 8,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": PNG,
                                },
                            },
                            {"type": "text", "text": "What is it?"},
                        ],
                    }
                ],
            },
        ),
        "responses": (
            "/v1/responses",
            {
                "model": model,
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "What is it?"},
                            {"type": "input_image", "image_url": DATA_URL},
                        ],
                    }
                ],
            },
        ),
    }


def plain(model: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """A text-only request through each API."""
    hi = [{"role": "user", "content": "Hi"}]
    return {
        "generate": ("/api/generate", {"model": model, "prompt": "Hi"}),
        "chat": ("/api/chat", {"model": model, "messages": hi}),
        "embed": ("/api/embed", {"model": model, "input": "Hi"}),
        "openai": ("/v1/chat/completions", {"model": model, "messages": hi}),
        "anthropic": ("/v1/messages", {"model": model, "max_tokens": 8, "messages": hi}),
        "responses": ("/v1/responses", {"model": model, "input": "Hi"}),
    }


def message_of(body: dict[str, Any]) -> str:
    """The error message, whichever API's shape it comes in."""
    error = body["error"]
    return error if isinstance(error, str) else error["message"]


@pytest.mark.parametrize("api", ["generate", "chat", "openai", "anthropic", "responses"])
def test_an_image_for_a_text_only_model_is_refused_by_name_through_every_api(
    app: InProcess, api: str
) -> None:
    path, body = with_image("smollm2")[api]
    response = app.client.post(path, json={**body, "stream": False})
    assert response.status_code == 400, response.text
    assert message_of(response.json()) == (
        '"smollm2:latest" does not support images: it has no vision projector'
    )
    assert app.runners == []  # refused before anything was loaded


def test_the_same_requests_without_the_image_are_served(app: InProcess) -> None:
    for api, (path, body) in plain("smollm2").items():
        response = app.client.post(path, json={**body, "stream": False})
        assert response.status_code == 200, (api, response.text)


def upload(client: TestClient, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert client.post(f"/api/blobs/{digest}", content=data).status_code == 201
    return digest


def gguf_bytes(tmp: Path, arch: str) -> bytes:
    def kv(writer: Any) -> None:
        writer.add_string("general.type", "adapter" if arch == "llama" else "projector")

    return write_gguf(tmp / f"{arch}.gguf", arch, kv).read_bytes()


def test_a_model_created_with_an_adapter_is_served_with_it(app: InProcess, tmp_path: Path) -> None:
    """Adapters are no longer refused: every API serves the model, and the runner it
    starts is given the adapter's blob (LoRA itself is tested for real in test_lora)."""
    digest = upload(app.client, gguf_bytes(tmp_path, "llama"))
    created = app.client.post(
        "/api/create",
        json={"model": "pirate", "from": "smollm2", "adapters": {"lora.gguf": digest}},
    )
    assert created.status_code == 200, created.text
    for api, (path, body) in plain("pirate").items():
        response = app.client.post(path, json={**body, "stream": False})
        assert response.status_code == 200, (api, response.text)
    (runner,) = app.runners
    assert [Path(p).name for p in runner.spec.adapters] == [digest.replace(":", "-")]


def test_a_projector_that_reads_no_images_leaves_the_model_text_only(
    app: InProcess, tmp_path: Path
) -> None:
    # A CLIP GGUF without a vision encoder: mtmd could not read images with it.
    projector = upload(app.client, gguf_bytes(tmp_path, "clip"))
    assert app.client.post("/api/show", json={"model": "smollm2"}).status_code == 200
    model = "sha256:" + app.state.store.resolve("smollm2").model_path.name.removeprefix("sha256-")
    created = app.client.post(
        "/api/create",
        json={"model": "seer", "files": {"model.gguf": model, "mmproj.gguf": projector}},
    )
    assert created.status_code == 200, created.text
    shown = app.client.post("/api/show", json={"model": "seer"}).json()
    assert "vision" not in shown["capabilities"]
    for api, (path, body) in plain("seer").items():
        response = app.client.post(path, json={**body, "stream": False})
        assert response.status_code == 200, (api, response.text)
    path, body = with_image("seer")["chat"]
    response = app.client.post(path, json={**body, "stream": False})
    assert response.status_code == 400, response.text
    assert message_of(response.json()) == (
        '"seer:latest" does not support images: it has no vision projector'
    )
