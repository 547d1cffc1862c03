"""Images through every API, end to end: a vision model made of the demo model and the tiny
projector ``assets.projector`` builds (a real CLIP GGUF mtmd loads and runs).

Two tiers. The refusals (not an image, a GIF, too many, too large, a URL, a text-only
model) and where the markers go are decided before any runner, so they run in process
(``inprocess``). The rest needs the real thing: ``pollama serve``, a runner, mtmd.
The projector's weights are random, so its answers mean nothing: the tests compare
runs with each other on this machine, never against pinned words.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import numpy as np
import ollama
import openai
import psutil
import pytest
from assets.projector import IMAGE_TOKENS, write_projector
from fastapi.testclient import TestClient
from inprocess import InProcess
from PIL import Image
from serving import Server

from pollama.demo import demo_model_path
from pollama.ggufmeta import read_model
from pollama.memory.projector import projector_memory
from pollama.protocol.wire import IMAGE_MARKER

GREEDY = {"temperature": 0, "num_predict": 8}


def picture(seed: int, fmt: str = "PNG", size: tuple[int, int] = (64, 64)) -> bytes:
    """A small image of random pixels (each seed its own), encoded as ``fmt``."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64,{b64(data)}"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="session")
def projector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_projector(tmp_path_factory.mktemp("projector") / "mmproj.gguf")


def upload(client: httpx.Client | TestClient, path: Path) -> str:
    data = path.read_bytes()
    digest = sha(data)
    response = client.post(f"/api/blobs/{digest}", content=data)
    assert response.status_code in (200, 201), response.text
    return digest


def message_of(body: dict[str, Any]) -> str:
    error = body["error"]
    return error if isinstance(error, str) else error["message"]


# -- the in-process tier: refusals and placement ---------------------------------------------


@pytest.fixture
def app(tmp_path: Path, projector: Path) -> Iterator[InProcess]:
    app = InProcess(tmp_path, max_images=3, max_image_pixels=64 * 64)
    with app:
        assert app.post("/api/show", {"model": "smollm2"}).status_code == 200  # imports it
        digest = upload(app.client, projector)
        created = app.post(
            "/api/create", {"model": "seer", "from": "smollm2", "files": {"p": digest}}
        )
        assert created.status_code == 200, created.text
        yield app


def chat(images: list[str], content: str = "What is it?") -> dict[str, Any]:
    message = {"role": "user", "content": content, "images": images}
    return {"model": "seer", "messages": [message], "stream": False}


def test_a_model_with_a_vision_projector_claims_vision(app: InProcess) -> None:
    assert "vision" in app.post("/api/show", {"model": "seer"}).json()["capabilities"]
    assert "vision" not in app.post("/api/show", {"model": "smollm2"}).json()["capabilities"]


def test_images_go_before_their_message_text_or_at_its_placeholders(app: InProcess) -> None:
    one, two = b64(picture(1)), b64(picture(2))
    assert app.post("/api/chat", chat([one, two])).status_code == 200
    sent = app.runners[-1].requests[-1]
    assert sent.images == (one, two)
    assert f"{IMAGE_MARKER}{IMAGE_MARKER}What is it?" in sent.prompt
    assert app.post("/api/chat", chat([one, two], "Compare [img] with [img].")).status_code == 200
    assert f"Compare {IMAGE_MARKER} with {IMAGE_MARKER}." in app.runners[-1].requests[-1].prompt
    raw = {"model": "seer", "prompt": "Look: ", "raw": True, "images": [one], "stream": False}
    assert app.post("/api/generate", raw).status_code == 200
    assert app.runners[-1].requests[-1].prompt == f"{IMAGE_MARKER}Look: "


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([b64(b"not an image at all")], "image 1 is not an image"),
        (["%%% not base64 %%%"], "image 1 is not valid base64"),
        ([b64(picture(1)), b64(picture(2, "GIF"))], "image 2 is GIF: only PNG, JPEG and WebP"),
        ([b64(picture(1, size=(65, 64)))], "image 1 is too large (65×64 pixels)"),
        ([b64(picture(1, "WEBP"))] * 4, "too many images: 4 (at most 3"),
        ([b64(picture(1, "JPEG")[:200])], "image 1 could not be decoded"),
    ],
)
def test_a_bad_image_is_a_400_that_says_why(
    app: InProcess, images: list[str], message: str
) -> None:
    response = app.post("/api/chat", chat(images))
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert app.runners == []  # refused before anything loaded


def bomb(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` × ``height`` pixels: a few hundred bytes that
    would decode to gigabytes (its data is a small image's, so it could not even)."""
    data = bytearray(picture(1, size=(8, 8)))
    struct.pack_into(">II", data, 16, width, height)  # IHDR: after the signature and tag
    struct.pack_into(">I", data, 29, zlib.crc32(data[12:29]))
    return bytes(data)


@pytest.mark.parametrize("size", [(30000, 30000), (100, 100)])
def test_a_decompression_bomb_is_refused_unread(app: InProcess, size: tuple[int, int]) -> None:
    response = app.post("/api/chat", chat([b64(bomb(*size))]))
    assert response.status_code == 400
    assert "image 1 is too large" in response.json()["error"]


@pytest.mark.parametrize("api", ["openai", "anthropic", "responses"])
def test_an_image_url_is_refused_pollama_does_not_fetch(app: InProcess, api: str) -> None:
    url = "https://example.com/cat.png"
    text = {"type": "text", "text": "What is it?"}
    bodies = {
        "openai": (
            "/v1/chat/completions",
            [{"role": "user", "content": [text, {"type": "image_url", "image_url": {"url": url}}]}],
        ),
        "anthropic": (
            "/v1/messages",
            [
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "url", "url": url}}],
                }
            ],
        ),
        "responses": (
            "/v1/responses",
            [{"role": "user", "content": [{"type": "input_image", "image_url": url}]}],
        ),
    }
    path, messages = bodies[api]
    body = {"model": "seer", "input" if api == "responses" else "messages": messages}
    response = app.post(path, {**body, "max_tokens": 8} if api == "anthropic" else body)
    assert response.status_code == 400, response.text
    message = message_of(response.json())
    assert "fetch" in message and ("data" in message or "base64" in message)
    assert app.runners == []


# -- the real tier: pollama serve, a runner, mtmd ---------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, projector: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("vision")
    running = Server(tmp, OLLAMA_NUM_PARALLEL="1", OLLAMA_MAX_LOADED_MODELS="1")
    try:
        digest = upload(running.client, projector)
        # FROM smollm2 + FROM the projector, through /api/create.
        body = {"model": "seer", "from": "smollm2", "files": {"mmproj.gguf": digest}}
        created = running.post("/api/create", {**body, "stream": False})
        assert created.status_code == 200, created.text
        yield running
    finally:
        running.stop()


def runner_stats(server: Server) -> dict[str, Any]:
    (pid,) = server.runner_pids()
    command = psutil.Process(pid).cmdline()
    port = int(command[command.index("--port") + 1])
    base = f"http://127.0.0.1:{port}"
    stats = httpx.get(f"{base}/stats", timeout=30).json()
    stats["memory"] = httpx.get(f"{base}/memory", timeout=30).json()
    return dict(stats)


def encoded(server: Server) -> int:
    return int(runner_stats(server)["images_encoded"])


def ask(server: Server, image: bytes | None, text: str = "What is in the picture?") -> Any:
    message: dict[str, Any] = {"role": "user", "content": text}
    if image is not None:
        message["images"] = [b64(image)]
    body = {"model": "seer", "messages": [message], "stream": False, "options": GREEDY}
    response = server.post("/api/chat", body)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_image_tokens_are_counted(server: Server) -> None:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="-") as client:

        def prompt_tokens(parts: list[dict[str, Any]]) -> int:
            reply = client.chat.completions.create(
                model="seer",
                messages=[{"role": "user", "content": parts}],  # type: ignore[misc,list-item]
                max_tokens=1,
                temperature=0,
            )
            assert reply.usage is not None
            return reply.usage.prompt_tokens

        text = {"type": "text", "text": "What is in the picture?"}
        image = {"type": "image_url", "image_url": {"url": data_url(picture(10))}}
        assert prompt_tokens([image, text]) - prompt_tokens([text]) == IMAGE_TOKENS


def test_what_the_model_sees_is_the_image(server: Server) -> None:
    one, two = picture(20), picture(21)
    first = ask(server, one)["message"]["content"]
    assert ask(server, one)["message"]["content"] == first  # the same image: the same reply
    assert ask(server, two)["message"]["content"] != first  # another image: another reply


def test_a_second_turn_about_the_same_image_reuses_the_cache(server: Server) -> None:
    image, other = picture(30), picture(31)
    turn = [{"role": "user", "content": "Describe it.", "images": [b64(image)]}]
    before = encoded(server)
    reply = ask_messages(server, turn)
    assert encoded(server) == before + 1
    second = [*turn, reply["message"], {"role": "user", "content": "And its colours?"}]
    again = ask_messages(server, second)
    assert encoded(server) == before + 1  # not encoded again
    # The same conversation about another image shares nothing from the image on: it is
    # encoded, and evaluated with all that follows it. (Ollama's prompt_eval_count leaves
    # out what the cache held.)
    swapped = [{**second[0], "images": [b64(other)]}, *second[1:]]
    fresh = ask_messages(server, swapped)
    assert encoded(server) == before + 2
    assert fresh["prompt_eval_count"] >= again["prompt_eval_count"] + IMAGE_TOKENS


def ask_messages(server: Server, messages: list[dict[str, Any]]) -> Any:
    body = {"model": "seer", "messages": messages, "stream": False, "options": GREEDY}
    response = server.post("/api/chat", body)
    assert response.status_code == 200, response.text
    return response.json()


def test_ollama_client_chat_and_generate(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "picture.jpg"
    path.write_bytes(picture(40, "JPEG"))
    with ollama.Client(host=server.url, timeout=300) as client:
        before = encoded(server)
        chat = client.chat(
            "seer",
            messages=[{"role": "user", "content": "What is it?", "images": [picture(41)]}],
            options=GREEDY,
        )
        assert chat.message.content and (chat.prompt_eval_count or 0) > IMAGE_TOKENS
        assert encoded(server) == before + 1
        generated = client.generate("seer", "What is it?", images=[path], options=GREEDY)
        assert generated.response and (generated.prompt_eval_count or 0) > IMAGE_TOKENS
        assert encoded(server) == before + 2


def test_openai_chat_and_responses_read_data_urls(server: Server) -> None:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="-") as client:
        before = encoded(server)
        reply = client.chat.completions.create(
            model="seer",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is it?"},
                        {
                            "type": "image_url",
                            "image_url": {"url": data_url(picture(50, "WEBP"), "webp")},
                        },
                    ],
                }
            ],
            max_tokens=8,
            temperature=0,
        )
        assert reply.choices[0].message.content is not None
        assert reply.usage is not None and reply.usage.prompt_tokens > IMAGE_TOKENS
        assert encoded(server) == before + 1
        response = client.responses.create(
            model="seer",
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is it?"},
                        {
                            "type": "input_image",
                            "image_url": data_url(picture(51)),
                            "detail": "auto",
                        },
                    ],
                }
            ],
            max_output_tokens=8,
            temperature=0,
        )
        assert response.usage is not None and response.usage.input_tokens > IMAGE_TOKENS
        assert encoded(server) == before + 2


def test_anthropic_reads_base64_image_blocks(server: Server) -> None:
    with anthropic.Anthropic(base_url=server.url, api_key="-") as client:
        before = encoded(server)
        message = client.messages.create(
            model="seer",
            max_tokens=8,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": b64(picture(60)),
                            },
                        },
                        {"type": "text", "text": "What is it?"},
                    ],
                }
            ],
        )
        assert message.content and message.usage.input_tokens > IMAGE_TOKENS
        assert encoded(server) == before + 1


def test_fit_and_ps_count_the_projector_as_llama_cpp_measures_it(
    server: Server, projector: Path
) -> None:
    ask(server, picture(70))
    measured = runner_stats(server)["memory"]["projector"]
    assert measured is not None and measured["device"] is None  # system memory
    estimate = projector_memory(read_model(projector), flash_attention=True)
    assert abs(estimate.weights - measured["weights"]) <= 0.05 * measured["weights"]
    assert abs(estimate.graph - measured["graph"]) <= 0.05 * measured["graph"]
    env = {**os.environ, "OLLAMA_MODELS": str(server.models)}
    fitted = subprocess.run(
        [sys.executable, "-m", "pollama", "fit", "seer", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    planned = json.loads(fitted.stdout)["projector"]
    total = measured["weights"] + measured["graph"]
    assert abs(planned["total"] - total) <= 0.05 * total
    # /api/ps: the vision model is the text model plus its projector, as measured.
    (seer,) = server.client.get("/api/ps").json()["models"]
    text_only = server.post(
        "/api/generate", {"model": "smollm2", "prompt": "Hi", "options": GREEDY}
    )
    assert text_only.status_code == 200
    (plain,) = server.client.get("/api/ps").json()["models"]
    assert seer["size"] - plain["size"] == total


def test_a_modelfile_with_two_froms_makes_a_vision_model(server: Server, projector: Path) -> None:
    modelfile = server.models.parent / "Modelfile"
    modelfile.write_text(f"FROM {demo_model_path()}\nFROM {projector}\nPARAMETER temperature 0\n")
    env = {**os.environ, "OLLAMA_HOST": server.url.removeprefix("http://")}
    subprocess.run(
        [sys.executable, "-m", "pollama", "create", "seer2", "-f", str(modelfile)],
        env=env,
        capture_output=True,
        timeout=300,
        check=True,
    )
    shown = server.post("/api/show", {"model": "seer2"}).json()
    assert "vision" in shown["capabilities"]
    assert shown["modelfile"].count("\nFROM ") == 2
    body = {
        "model": "seer2",
        "messages": [{"role": "user", "content": "Hi", "images": [b64(picture(80))]}],
        "stream": False,
        "options": GREEDY,
    }
    response = server.post("/api/chat", body)
    assert response.status_code == 200 and response.json()["prompt_eval_count"] > IMAGE_TOKENS


def test_a_vision_model_from_an_ollama_store_is_recognised(tmp_path: Path, projector: Path) -> None:
    """An Ollama-layout store (a model layer and a projector layer, blobs by digest), as
    Ollama itself writes one: pollama serves it as a vision model."""
    store = tmp_path / "ollama-models"
    blobs = store / "blobs"
    blobs.mkdir(parents=True)
    layers = []
    for media, path in (("model", demo_model_path()), ("projector", projector)):
        digest = sha(path.read_bytes())
        shutil.copyfile(path, blobs / digest.replace(":", "-"))
        layers.append(
            {
                "mediaType": f"application/vnd.ollama.image.{media}",
                "digest": digest,
                "size": path.stat().st_size,
            }
        )
    config = json.dumps({"model_format": "gguf", "model_family": "llama"}).encode()
    (blobs / sha(config).replace(":", "-")).write_bytes(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": sha(config),
            "size": len(config),
        },
        "layers": layers,
    }
    where = store / "manifests/registry.ollama.ai/library/llava-tiny/latest"
    where.parent.mkdir(parents=True)
    where.write_text(json.dumps(manifest))
    server = Server(tmp_path, OLLAMA_MODELS=str(store))
    try:
        shown = server.post("/api/show", {"model": "llava-tiny"}).json()
        assert "vision" in shown["capabilities"]
        body = {
            "model": "llava-tiny",
            "messages": [{"role": "user", "content": "Hi", "images": [b64(picture(90))]}],
            "stream": False,
            "options": GREEDY,
        }
        response = server.post("/api/chat", body)
        assert response.status_code == 200, response.text
        assert response.json()["prompt_eval_count"] > IMAGE_TOKENS
    finally:
        server.stop()
