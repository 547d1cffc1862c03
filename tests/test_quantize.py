"""Quantize on create, against a real ``pollama serve``: ``/api/create`` with ``quantize``.

The source is the demo model dequantized to F16 (``assets/f16.py``). Three quantizations
run to the end (Q8_0 over HTTP, Q4_K_M through the official ``ollama`` client, Q4_0
through ``pollama create -q``); two more are stopped on purpose, one by the client
leaving, one by the quantizer child being killed. The child is frozen with SIGSTOP
where a test needs the quantize to be still under way, so nothing depends on timing.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import httpx
import ollama
import psutil
import pytest
from assets.f16 import f16_model  # noqa: F401 - the session fixture, by name
from serving import Server, wait_for

from pollama.errors import BadRequest
from pollama.ggufmeta import GGUFModel, read_model
from pollama.llm.quantize import ONLY_UNQUANTIZED, quantize_type

pytestmark = pytest.mark.llama

SYSTEM = "You answer in one word."
PARAMETERS = {"temperature": 0, "num_predict": 8}
ONE_LINE = {"num_predict": 8, "temperature": 0}
EMBEDDING = "token_embd.weight"


# -- helpers -------------------------------------------------------------------------------


def quantizer_pids(server: Server) -> list[int]:
    """The server's quantizer children (``python -m pollama.runner.quantize``)."""
    pids = []
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if "pollama.runner.quantize" in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return pids


def freeze_the_quantizer(server: Server) -> psutil.Process:
    """The server's one quantizer child, frozen (SIGSTOP) as soon as it has started: it
    stays under way, before or after its first tensor, until the test lets it go. Caught
    by polling: the child spends a second starting (Python, llama.cpp) before any work."""
    assert wait_for(lambda: len(quantizer_pids(server)) > 0), "no quantizer started"
    [pid] = quantizer_pids(server)
    child = psutil.Process(pid)
    child.send_signal(signal.SIGSTOP)
    return child


def store_files(models: Path) -> set[str]:
    """Every file in the store, partial and temporary ones included."""
    return {str(p.relative_to(models)) for p in models.rglob("*") if p.is_file()}


def quantizing(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if str(line.get("status", "")).startswith("quantizing")]


def create_streamed(
    server: Server, body: dict[str, Any], under_way: Callable[[int], None] | None = None
) -> list[dict[str, Any]]:
    """Every NDJSON line of a create; ``under_way(pid)`` is called once, with the quantizer
    started and frozen, on the first progress line."""
    lines = []
    with server.client.stream("POST", "/api/create", json=body) as response:
        assert response.status_code == 200, response.read()
        for raw in response.iter_lines():
            lines.append(json.loads(raw))
            if under_way is not None and quantizing(lines[-1:]):
                under_way(freeze_the_quantizer(server).pid)
                under_way = None
    return lines


def model_blob(server: Server, name: str) -> Path:
    manifest = json.loads(
        server.models.joinpath(
            "manifests", "registry.ollama.ai", "library", name, "latest"
        ).read_bytes()
    )
    [layer] = [x for x in manifest["layers"] if x["mediaType"].endswith(".model")]
    return server.models / "blobs" / layer["digest"].replace(":", "-")


def block_bytes(type_name: str) -> float:
    """Bytes per weight of a ggml type (its block's bytes over its block's weights)."""
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return size / block


def check_bits_per_weight(source: GGUFModel, result: GGUFModel) -> None:
    """Every tensor holds exactly what its type's bits per weight make of its weights,
    with the source's shapes; the data section is their sum (padding aside)."""
    shapes = {t.name: t.shape for t in source.tensors}
    assert {t.name: t.shape for t in result.tensors} == shapes
    for tensor in result.tensors:
        assert tensor.n_bytes == tensor.n_elements * block_bytes(tensor.type_name), tensor
    data = result.file_size - result.data_offset
    assert data == pytest.approx(sum(t.n_bytes for t in result.tensors), rel=0.01)


def size_ratio(source: GGUFModel, result: GGUFModel) -> float:
    return result.file_size / source.file_size


def expected_ratio(
    source: GGUFModel, matrix_bytes_per_weight: float, embedding_bytes_per_weight: float = 0.0
) -> float:
    """The size ratio when every matrix gets ``matrix_bytes_per_weight`` (the token
    embedding ``embedding_bytes_per_weight`` if given) and the 1-D tensors (norms) stay
    F32; the metadata (the vocabulary) is the same in both files."""
    embedding = embedding_bytes_per_weight or matrix_bytes_per_weight
    header = source.data_offset
    weights = sum(
        t.n_elements * (embedding if t.name == EMBEDDING else matrix_bytes_per_weight)
        for t in source.tensors
        if len(t.shape) > 1
    )
    vectors = sum(t.n_bytes for t in source.tensors if len(t.shape) == 1)
    return (header + weights + vectors) / source.file_size


def generates(server: Server, model: str) -> dict[str, Any]:
    reply = server.post(
        "/api/generate", {"model": model, "prompt": "Hi", "stream": False, "options": ONE_LINE}
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("quantize"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def source(f16_model: Path) -> GGUFModel:  # noqa: F811
    return read_model(f16_model)


@pytest.fixture(scope="module")
def f16_blob(server: Server, f16_model: Path) -> str:  # noqa: F811
    """The F16 GGUF uploaded to the server; its digest."""
    digest = hashlib.sha256()
    with f16_model.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    name = "sha256:" + digest.hexdigest()

    def chunks() -> Iterator[bytes]:
        with f16_model.open("rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk

    assert server.client.post(f"/api/blobs/{name}", content=chunks()).status_code == 201
    return name


@pytest.fixture(scope="module")
def f16_base(server: Server, f16_blob: str) -> str:
    """An F16 model with a system prompt and parameters of its own, to quantize from."""
    body = {
        "model": "f16base",
        "files": {"smollm2-f16.gguf": f16_blob},
        "system": SYSTEM,
        "parameters": PARAMETERS,
        "stream": False,
    }
    created = server.post("/api/create", body)
    assert created.status_code == 200, created.text
    return "f16base"


@dataclass(frozen=True)
class Quantized:
    lines: list[dict[str, Any]]
    answered: dict[str, int]
    """Statuses of the requests made while the quantizer was under way (and frozen)."""


@pytest.fixture(scope="module")
def q8(server: Server, f16_blob: str) -> Quantized:
    """The F16 upload quantized to Q8_0 in one create, asking the server for its tags and
    version while the quantize is under way."""
    answered: dict[str, int] = {}

    def meanwhile(pid: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as other:
            for path in ("/api/tags", "/api/version"):
                answered[path] = other.get(path).status_code
        assert psutil.Process(pid).status() == psutil.STATUS_STOPPED  # still under way
        os.kill(pid, signal.SIGCONT)

    body = {"model": "q8", "files": {"smollm2-f16.gguf": f16_blob}, "quantize": "Q8_0"}
    return Quantized(create_streamed(server, body, meanwhile), answered)


# -- the checks before anything runs -------------------------------------------------------


def test_quantize_types_are_ollamas_names_in_any_case():
    assert quantize_type("q4_k_m") == "Q4_K_M" == quantize_type("Q4_K")
    assert quantize_type("q8_0") == "Q8_0"
    with pytest.raises(BadRequest, match="unsupported quantization type q2_K - supported types"):
        quantize_type("q2_K")


def test_a_quantized_source_is_refused_in_ollamas_words(server: Server):
    assert server.post("/api/show", {"model": "smollm2"}).status_code == 200  # imported
    before = store_files(server.models)
    for field in ("quantize", "quantization"):  # the older name too
        body = {"model": "requant", "from": "smollm2", field: "q4_K_M"}
        response = server.post("/api/create", body)
        assert response.status_code == 400, response.text
        assert response.json() == {"error": ONLY_UNQUANTIZED}
    assert ONLY_UNQUANTIZED == "quantization is only supported for F16, BF16 and F32 models"
    assert quantizer_pids(server) == []
    assert store_files(server.models) == before


def test_an_unknown_type_is_refused(server: Server, f16_base: str):
    before = store_files(server.models)
    response = server.post("/api/create", {"model": "odd", "from": f16_base, "quantize": "q3_x"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error.startswith("unsupported quantization type q3_x - supported types are ")
    assert "Q4_K_M" in error and "Q8_0" in error
    assert store_files(server.models) == before


# -- Q8_0 over HTTP ------------------------------------------------------------------------


def test_progress_is_streamed_monotonic_and_ends_at_100(q8: Quantized, source: GGUFModel):
    progress = quantizing(q8.lines)
    assert len(progress) > 50  # tensor by tensor: the model has 272
    assert {line["status"] for line in progress} == {"quantizing F16 model to Q8_0"}
    assert {line["digest"] for line in progress} == {"0000000000000000000"}
    assert {line["total"] for line in progress} == {source.file_size}
    completed = [line["completed"] for line in progress]
    assert completed == sorted(completed) and len(set(completed)) == len(completed)
    assert completed[0] == 0 and completed[-1] == source.file_size
    statuses = [line["status"] for line in q8.lines]
    after = statuses[statuses.index("verifying conversion") :]
    assert after[-2:] == ["writing manifest", "success"]
    assert not any("error" in line for line in q8.lines)


def test_the_server_answers_while_a_quantize_runs(q8: Quantized):
    assert q8.answered == {"/api/tags": 200, "/api/version": 200}


def test_q8_0_is_8_5_bits_per_weight(server: Server, q8: Quantized, source: GGUFModel):
    result = read_model(model_blob(server, "q8"))
    assert result.file_type == "Q8_0"
    matrices = {t.type_name for t in result.tensors if len(t.shape) > 1}
    assert matrices == {"Q8_0"}
    check_bits_per_weight(source, result)
    assert size_ratio(source, result) == pytest.approx(expected_ratio(source, 34 / 32), rel=0.01)
    assert 0.50 < size_ratio(source, result) < 0.56  # ≈ 8.5 / 16


def test_the_quantized_model_shows_its_level_and_generates(server: Server, q8: Quantized):
    shown = server.post("/api/show", {"model": "q8"}).json()
    assert shown["details"]["quantization_level"] == "Q8_0"
    assert shown["model_info"]["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    tags = {m["name"]: m for m in server.client.get("/api/tags").json()["models"]}
    assert tags["q8:latest"]["details"]["quantization_level"] == "Q8_0"
    assert tags["q8:latest"]["size"] < model_blob(server, "q8").stat().st_size * 1.01
    reply = generates(server, "q8")
    assert reply["done"] and reply["eval_count"] > 0 and reply["response"]


# -- stopped on purpose --------------------------------------------------------------------


def test_a_client_that_leaves_stops_the_quantize_and_leaves_nothing(server: Server, f16_base: str):
    before = store_files(server.models)
    body = {"model": "gone", "from": f16_base, "quantize": "q6_K"}
    with server.client.stream("POST", "/api/create", json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()  # held: a dropped iterator would close the connection
        for raw in lines:
            if quantizing([json.loads(raw)]):
                break
        child = freeze_the_quantizer(server)  # under way until the server stops it
        assert any(".partial" in name for name in store_files(server.models))
    # Leaving the block closed the connection mid-stream: the server kills the child.
    child.wait(timeout=30)
    assert wait_for(lambda: store_files(server.models) == before, 30.0), (
        store_files(server.models) ^ before
    )
    assert "gone:latest" not in [m["name"] for m in server.client.get("/api/tags").json()["models"]]


def test_a_killed_quantizer_fails_the_create_and_leaves_nothing(server: Server, f16_base: str):
    before = store_files(server.models)

    def kill(pid: int) -> None:
        os.kill(pid, signal.SIGKILL)

    body = {"model": "killed", "from": f16_base, "quantize": "q6_K"}
    lines = create_streamed(server, body, kill)
    assert lines[-1] == {
        "error": "quantizing the model to Q6_K failed: the quantizer was killed by SIGKILL"
    }
    assert store_files(server.models) == before  # removed before the error line was sent
    assert quantizer_pids(server) == []
    assert server.client.get("/api/tags").status_code == 200


# -- the official client, and the CLI ------------------------------------------------------


def test_the_ollama_client_quantizes_a_model_to_q4_k_m(
    server: Server, f16_base: str, source: GGUFModel
):
    with ollama.Client(host=server.url, timeout=300) as client:
        lines = list(client.create(model="q4km", from_=f16_base, quantize="q4_K_M", stream=True))
        shown = client.show("q4km")
    statuses = [line.status for line in lines]
    assert "quantizing F16 model to Q4_K_M" in statuses and statuses[-1] == "success"
    assert shown.details.quantization_level == "Q4_K_M"
    assert shown.modelfile is not None and f'SYSTEM """{SYSTEM}"""' in shown.modelfile
    assert shown.parameters is not None and "num_predict" in shown.parameters
    result = read_model(model_blob(server, "q4km"))
    check_bits_per_weight(source, result)
    # Q4_K (4.5 bits); Q5_0 (5.5) where a row is 576 wide, too narrow for the 256-wide
    # K-quant blocks; Q6_K / Q8_0 where llama.cpp keeps more bits: at most 8.5 bits.
    ratio = size_ratio(source, result)
    assert expected_ratio(source, 18 / 32) < ratio < expected_ratio(source, 34 / 32)
    assert ratio < 0.45


def test_pollama_create_q_quantizes_through_the_cli(
    server: Server, f16_base: str, source: GGUFModel, tmp_path: Path
):
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {f16_base}\nPARAMETER num_predict 4\n")
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{server.port}"}
    env.pop("POLLAMA_GPUS", None)
    result = subprocess.run(
        [sys.executable, "-m", "pollama", "create", "cliq4", "-f", str(modelfile), "-q", "q4_0"],
        capture_output=True,
        text=True,
        env={**env, "OLLAMA_MODELS": str(server.models)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "success" in result.stderr
    shown = server.post("/api/show", {"model": "cliq4"}).json()
    assert shown["details"]["quantization_level"] == "Q4_0"
    result_model = read_model(model_blob(server, "cliq4"))
    check_bits_per_weight(source, result_model)
    # Every matrix Q4_0 (4.5 bits) but the token embedding, which is the output matrix too
    # (tied) and which llama.cpp keeps at more bits: Q8_0 here, its 576-wide rows not
    # fitting the 256-wide blocks of Q6_K.
    types = {t.name: t.type_name for t in result_model.tensors if len(t.shape) > 1}
    assert types.pop(EMBEDDING) == "Q8_0"
    assert set(types.values()) == {"Q4_0"}
    ratio = size_ratio(source, result_model)
    assert ratio == pytest.approx(expected_ratio(source, 18 / 32, 34 / 32), rel=0.01)
    assert 0.25 < expected_ratio(source, 18 / 32) < ratio < 0.35
    assert generates(server, "cliq4")["done"]
