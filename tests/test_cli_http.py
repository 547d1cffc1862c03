"""The CLI's HTTP client and request building, against httpx.MockTransport (no server)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import typer

from pollama.cli.client import (
    Client,
    ClientError,
    ResponseError,
    ServerUnreachable,
    log_tail,
)
from pollama.cli.create import create_request, local_file, sha256_file
from pollama.cli.launch import is_local, server_log_path
from pollama.cli.run import parse_keepalive
from pollama.settings import Settings
from pollama.store.modelfile import parse_modelfile


def client_for(handler: httpx.MockTransport) -> Client:
    return Client("http://pollama.test", transport=handler)


def test_api_errors_become_one_message():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": "model 'x' not found"})

    with client_for(httpx.MockTransport(handler)) as client, pytest.raises(ResponseError) as info:
        client.show("x")
    assert str(info.value) == "model 'x' not found"
    assert info.value.not_found and info.value.status_code == 404


def test_a_missing_route_is_not_a_missing_model():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"detail": "Not Found"})

    with client_for(httpx.MockTransport(handler)) as client, pytest.raises(ResponseError) as info:
        client.copy("a", "b")
    assert str(info.value) == "POST /api/copy: 404 Not Found"
    assert not info.value.not_found


def test_stream_yields_records_and_raises_a_late_error_line():
    lines = [{"status": "pulling"}, {"status": "verifying"}, {"error": "disk full"}]

    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content) == {"model": "m", "insecure": True, "stream": True}
        body = "".join(json.dumps(line) + "\n" for line in lines).encode()
        return httpx.Response(200, content=body, headers={"content-type": "application/x-ndjson"})

    seen = []
    with client_for(httpx.MockTransport(handler)) as client, pytest.raises(ResponseError) as info:
        for record in client.pull("m", insecure=True):
            seen.append(record["status"])
    assert seen == ["pulling", "verifying"]
    assert str(info.value) == "disk full" and info.value.status_code == 200


def test_stream_error_before_the_first_byte_keeps_the_status():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": "invalid format"})

    with client_for(httpx.MockTransport(handler)) as client, pytest.raises(ResponseError) as info:
        list(client.chat({"model": "m", "messages": []}))
    assert info.value.status_code == 400 and str(info.value) == "invalid format"


def test_nothing_listening_is_server_unreachable():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with client_for(httpx.MockTransport(handler)) as client:
        assert client.heartbeat() is False
        with pytest.raises(ServerUnreachable, match="pollama serve"):
            client.list_models()


def test_a_dropped_connection_is_a_client_error():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset", request=request)

    with client_for(httpx.MockTransport(handler)) as client:
        with pytest.raises(ClientError, match="lost the connection"):
            client.running()


def test_blob_head_and_streamed_upload():
    uploaded: dict[str, bytes] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        digest = request.url.path.rsplit("/", 1)[-1]
        if request.method == "HEAD":
            return httpx.Response(200 if digest in uploaded else 404)
        assert request.headers["content-length"] == "6"
        uploaded[digest] = request.read()
        return httpx.Response(201)

    with client_for(httpx.MockTransport(handler)) as client:
        assert not client.blob_exists("sha256:ab")
        client.upload_blob("sha256:ab", iter([b"abc", b"def"]), 6)
        assert client.blob_exists("sha256:ab")
    assert uploaded == {"sha256:ab": b"abcdef"}


def test_delete_sends_a_body():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "DELETE" and json.loads(request.content) == {"model": "m"}
        return httpx.Response(200)

    with client_for(httpx.MockTransport(handler)) as client:
        client.delete("m")


def test_create_request_uploads_local_files_and_names_models(tmp_path: Path):
    (tmp_path / "weights.gguf").write_bytes(b"GGUF")
    (tmp_path / "lora.gguf").write_bytes(b"LORA")
    modelfile = parse_modelfile(
        "FROM ./weights.gguf\n"
        "ADAPTER lora.gguf\n"
        "PARAMETER stop <a>\nPARAMETER stop <b>\nPARAMETER num_ctx 2048\n"
        "SYSTEM terse\nTEMPLATE {{ .Prompt }}\n"
        "MESSAGE user hi\nMESSAGE assistant hello\nLICENSE MIT\n"
    )
    uploaded: list[Path] = []

    def put(path: Path) -> str:
        uploaded.append(path)
        return "sha256:" + sha256_file(path)

    body = create_request("mine", modelfile, tmp_path, put)
    assert uploaded == [tmp_path / "weights.gguf", tmp_path / "lora.gguf"]
    assert body["files"] == {"weights.gguf": "sha256:" + sha256_file(tmp_path / "weights.gguf")}
    assert list(body["adapters"]) == ["lora.gguf"]
    assert body["parameters"] == {"stop": ["<a>", "<b>"], "num_ctx": 2048}
    assert body["system"] == "terse" and body["template"] == "{{ .Prompt }}"
    assert body["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    assert body["license"] == ["MIT"] and "from" not in body

    by_name = create_request("mine", parse_modelfile("FROM llama3.2\n"), tmp_path, put)
    assert by_name == {"model": "mine", "from": "llama3.2"}


def test_local_file_rules(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    with pytest.raises(ClientError, match="no such file"):
        local_file("./missing.gguf", tmp_path)
    with pytest.raises(ClientError, match="no such file"):
        local_file("missing.GGUF", tmp_path)
    with pytest.raises(ClientError, match="directory"):
        local_file("sub", tmp_path)
    with pytest.raises(ClientError, match="no such file"):
        local_file("lora", tmp_path, required=True)
    assert local_file("library/llama3.2:1b", tmp_path) is None


def test_keepalive_flag():
    assert parse_keepalive(None) is None
    assert parse_keepalive("5m") == "5m"
    assert parse_keepalive("-1") == -1.0
    assert parse_keepalive("300") == 300.0
    with pytest.raises(typer.BadParameter):
        parse_keepalive("soon")


def test_server_log_sits_beside_the_store(tmp_path: Path):
    settings = Settings.from_env({"OLLAMA_MODELS": str(tmp_path / "models")})
    assert server_log_path(settings) == tmp_path / "logs" / "server.log"
    assert server_log_path(Settings.from_env({})) == Path.home() / ".ollama" / "logs" / "server.log"


def test_log_tail_reads_from_an_offset(tmp_path: Path):
    log = tmp_path / "server.log"
    log.write_text("old run\n")
    offset = log.stat().st_size
    with log.open("a") as f:
        f.write("".join(f"line {i}\n" for i in range(30)))
    tail = log_tail(log, offset, lines=3)
    assert tail == "line 27\nline 28\nline 29"
    assert "cannot read" in log_tail(tmp_path / "absent.log")


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("0.0.0.0", True),
        ("localhost", True),
        ("10.0.0.5", False),
        ("example.com", False),
    ],
)
def test_is_local(host: str, local: bool):
    assert is_local(host) is local
