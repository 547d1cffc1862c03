"""API keys, scopes and read-only mode: the rules (pure), every API's refusal shape
(in-process), and the official clients, the CLI and key reloading against a real server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import anthropic
import ollama
import openai
import pytest
from inprocess import InProcess
from serving import Server

from pollama.api.auth import (
    InvalidKeys,
    KeyRing,
    KeyScope,
    changes_store,
    parse_keys,
    required_scope,
)

ADMIN, INFER = "adm-3f9c", "inf-71b2"
KEYS = f"{ADMIN}:admin,{INFER}:inference"
HI = [{"role": "user", "content": "Hi"}]


# -- the rules ------------------------------------------------------------------------------


def test_keys_parse_with_admin_as_the_default_scope():
    assert parse_keys(["a", " b:inference ", "c:ADMIN", "", "# a comment"]) == {
        "a": KeyScope.ADMIN,
        "b": KeyScope.INFERENCE,
        "c": KeyScope.ADMIN,
    }
    with pytest.raises(InvalidKeys, match="unknown API key scope 'root'"):
        parse_keys(["k:root"])


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/", None),
        ("HEAD", "/", None),
        ("GET", "/api/version", None),
        ("POST", "/api/generate", KeyScope.INFERENCE),
        ("POST", "/api/chat", KeyScope.INFERENCE),
        ("POST", "/api/embed", KeyScope.INFERENCE),
        ("GET", "/api/tags", KeyScope.INFERENCE),
        ("POST", "/api/show", KeyScope.INFERENCE),
        ("GET", "/api/ps", KeyScope.INFERENCE),
        ("POST", "/v1/chat/completions", KeyScope.INFERENCE),
        ("POST", "/v1/messages", KeyScope.INFERENCE),
        ("GET", "/v1/models", KeyScope.INFERENCE),
        ("POST", "/api/create", KeyScope.ADMIN),
        ("POST", "/api/copy", KeyScope.ADMIN),
        ("DELETE", "/api/delete", KeyScope.ADMIN),
        ("POST", "/api/pull", KeyScope.ADMIN),
        ("POST", "/api/push", KeyScope.ADMIN),
        ("HEAD", "/api/blobs/sha256:00", KeyScope.ADMIN),
        ("GET", "/metrics", KeyScope.ADMIN),
        ("GET", "/no/such/route", KeyScope.INFERENCE),  # no key, no hint what exists
    ],
)
def test_each_route_needs_its_scope(method: str, path: str, scope: KeyScope | None):
    assert required_scope(method, path) == scope


def test_metrics_can_be_public_and_read_only_stops_only_changes():
    assert required_scope("GET", "/metrics", metrics_public=True) is None
    assert changes_store("POST", "/api/create") and changes_store("POST", "/api/blobs/sha256:0")
    assert not changes_store("HEAD", "/api/blobs/sha256:0")
    assert not changes_store("POST", "/api/show") and not changes_store("POST", "/api/generate")


def test_a_key_file_is_read_again_on_reload(tmp_path: Path):
    path = tmp_path / "keys"
    path.write_text("one:inference\n")
    ring = KeyRing(parse_keys(["inline"]), path)
    assert ring.scope_of("one") is KeyScope.INFERENCE and ring.scope_of("inline")
    path.write_text("two\n")
    ring.reload()
    assert ring.scope_of("one") is None and ring.scope_of("two") is KeyScope.ADMIN
    path.write_text("bad:scope\n")
    ring.reload()  # a broken file keeps the keys in force
    assert ring.scope_of("two") is KeyScope.ADMIN
    assert ring.scope_of("") is None and ring.scope_of("tw") is None


# -- every API's refusal, in-process --------------------------------------------------------


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[InProcess]:
    app = InProcess(tmp_path, api_keys=KEYS)
    with app:
        yield app


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("path", "body", "message_of"),
    [
        ("/api/generate", {"model": "smollm2", "prompt": "Hi"}, lambda b: b["error"]),
        (
            "/v1/chat/completions",
            {"model": "smollm2", "messages": HI},
            lambda b: b["error"]["message"],
        ),
        (
            "/v1/messages",
            {"model": "smollm2", "max_tokens": 4, "messages": HI},
            lambda b: b["error"]["message"],
        ),
    ],
)
def test_no_key_is_401_and_a_wrong_one_too_in_each_apis_shape(
    keyed: InProcess, path: str, body: dict[str, Any], message_of: Any
):
    body = {**body, "stream": False}
    missing = keyed.client.post(path, json=body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert message_of(missing.json()).startswith("an API key is required")
    wrong = keyed.client.post(path, json=body, headers=bearer("guess"))
    assert wrong.status_code == 401 and message_of(wrong.json()) == "invalid API key"
    assert keyed.client.post(path, json=body, headers=bearer(INFER)).status_code == 200
    assert keyed.client.post(path, json=body, headers={"x-api-key": INFER}).status_code == 200
    if path.startswith("/v1/"):
        kind = "authentication_error"
        assert missing.json()["error"]["type"] == kind


def test_health_routes_stay_public(keyed: InProcess):
    assert keyed.client.get("/").text == "Ollama is running"
    assert keyed.client.get("/api/version").status_code == 200


def test_an_inference_key_cannot_change_the_store(keyed: InProcess):
    copy = {"source": "smollm2", "destination": "mine"}
    assert keyed.client.post("/api/show", json={"model": "smollm2"}, headers=bearer(INFER))
    refused = keyed.client.post("/api/copy", json=copy, headers=bearer(INFER))
    assert refused.status_code == 403 and "admin scope" in refused.json()["error"]
    assert keyed.client.get("/metrics", headers=bearer(INFER)).status_code == 403
    assert keyed.client.post("/api/copy", json=copy, headers=bearer(ADMIN)).status_code == 200
    assert keyed.client.get("/metrics", headers=bearer(ADMIN)).status_code == 200


def test_read_only_refuses_changes_whatever_the_key(tmp_path: Path):
    with InProcess(tmp_path, api_keys=ADMIN, read_only=True) as client:
        assert client.post("/api/show", json={"model": "smollm2"}, headers=bearer(ADMIN))
        copy = {"source": "smollm2", "destination": "mine"}
        refused = client.post("/api/copy", json=copy, headers=bearer(ADMIN))
        assert refused.status_code == 403 and "read-only" in refused.json()["error"]
        assert (
            client.request(
                "DELETE", "/api/delete", json={"model": "smollm2"}, headers=bearer(ADMIN)
            ).status_code
            == 403
        )
        tags = client.get("/api/tags", headers=bearer(ADMIN)).json()["models"]
        assert [m["name"] for m in tags] == ["smollm2:latest"]


# -- the official clients, the CLI and reloading against a real server --------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    keys = tmp_path_factory.mktemp("keys") / "keys"
    keys.write_text(f"{ADMIN}:admin\n{INFER}:inference\n")
    running = Server(tmp_path_factory.mktemp("auth"), POLLAMA_API_KEYS_FILE=str(keys))
    running.keys_file = keys  # type: ignore[attr-defined]
    yield running
    running.stop()


def test_the_official_clients_need_a_key(server: Server):
    greedy = {"temperature": 0, "num_predict": 4}
    with_key, without = (
        ollama.Client(host=server.url, headers=bearer(INFER)),
        ollama.Client(host=server.url),
    )
    with closing(with_key._client), closing(without._client):
        assert with_key.generate("smollm2", "Hi", options=greedy).response
        with pytest.raises(ollama.ResponseError) as refused:
            without.generate("smollm2", "Hi", options=greedy)
        assert refused.value.status_code == 401
        for change in (
            lambda: with_key.copy("smollm2", "mine"),
            lambda: with_key.delete("smollm2"),
        ):
            with pytest.raises(ollama.ResponseError) as forbidden:
                change()
            assert forbidden.value.status_code == 403

    chat = {"model": "smollm2", "messages": HI, "max_tokens": 4}
    with openai.OpenAI(base_url=server.url + "/v1", api_key=INFER) as client:
        assert client.chat.completions.create(**chat).choices
    with openai.OpenAI(base_url=server.url + "/v1", api_key="guess") as client:
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(**chat)

    message = {"model": "smollm2", "messages": HI, "max_tokens": 4}
    with anthropic.Anthropic(base_url=server.url, api_key=INFER) as client:
        assert client.messages.create(**message).content
    with anthropic.Anthropic(base_url=server.url, api_key="guess") as client:
        with pytest.raises(anthropic.AuthenticationError):
            client.messages.create(**message)


def test_the_cli_sends_the_key_from_the_environment(server: Server, tmp_path: Path):
    host = server.url.removeprefix("http://")

    def pollama_list(**env: str) -> subprocess.CompletedProcess[str]:
        inherited = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        environ = {**inherited, "OLLAMA_HOST": host, **env}
        return subprocess.run(
            [sys.executable, "-m", "pollama", "list"],
            env=environ,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert "smollm2" in pollama_list(OLLAMA_API_KEY=INFER).stdout
    refused = pollama_list()
    assert refused.returncode == 1 and "API key is required" in refused.stderr


def test_sighup_reloads_the_key_file(server: Server):
    keys: Path = server.keys_file  # type: ignore[attr-defined]
    fresh = "fresh-9d1e"
    keys.write_text(f"{ADMIN}:admin\n{INFER}:inference\n{fresh}:inference\n")
    server.process.send_signal(signal.SIGHUP)
    # The handler runs between requests: poll the observable effect, bounded.
    for _ in range(1000):
        if server.client.get("/api/tags", headers=bearer(fresh)).status_code == 200:
            break
    else:
        raise AssertionError("the new key was never accepted")
    assert server.client.get("/api/tags").status_code == 401


def test_a_server_on_every_interface_without_keys_says_so(tmp_path: Path):
    exposed = Server(tmp_path, bind="0.0.0.0")
    try:
        assert exposed.client.get("/").status_code == 200
    finally:
        exposed.stop()
    assert (
        "with no API keys: anybody who can reach the port" in (tmp_path / "serve.log").read_text()
    )
