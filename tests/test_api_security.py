"""CORS origins and the DNS-rebinding Host check, as pure functions and through the app."""

from __future__ import annotations

import math
import re

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from pollama.api.app import create_app
from pollama.api.ollama.embed import fit_dimensions, normalize
from pollama.api.security import (
    DEFAULT_ORIGINS,
    host_allowed,
    is_loopback_bind,
    origin_regex,
    split_host,
)
from pollama.api.state import ServerState
from pollama.errors import BadRequest
from pollama.scheduler.scheduler import Scheduler
from pollama.settings import Settings
from pollama.store.disk import Store


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        ("", True),
        ("localhost", True),
        ("localhost:11434", True),
        ("127.0.0.1:11434", True),
        ("[::1]:11434", True),
        ("10.1.2.3", True),
        ("192.168.0.7:80", True),
        ("0.0.0.0:11434", True),
        ("printer.local", True),
        ("box.internal:8080", True),
        ("app.localhost", True),
        ("myhost", True),
        ("MYHOST.", True),
        ("evil.example.com", False),
        ("evil.example.com:11434", False),
        ("8.8.8.8", False),
        ("localhost.evil.com", False),
        ("local", False),
    ],
)
def test_host_allowed(header: str, allowed: bool):
    assert host_allowed(header, hostname="myhost") is allowed


def test_split_host_and_bind():
    assert split_host("[::1]:80") == "::1"
    assert split_host("::1") == "::1"
    assert split_host("a.b:1") == "a.b"
    assert is_loopback_bind("127.0.0.1") and is_loopback_bind("::1")
    assert is_loopback_bind("localhost")
    assert not is_loopback_bind("0.0.0.0") and not is_loopback_bind("192.168.1.2")


def test_origin_patterns():
    pattern = re.compile(origin_regex((*DEFAULT_ORIGINS, "https://*.example.org")))
    for ok in (
        "http://localhost",
        "http://localhost:3000",
        "https://127.0.0.1:8443",
        "app://obsidian.md",
        "vscode-webview://abc",
        "https://chat.example.org",
    ):
        assert pattern.match(ok), ok
    for bad in ("https://evil.com", "http://localhost.evil.com", "https://example.org.evil"):
        assert not pattern.match(bad), bad
    assert re.compile(origin_regex(["*"])).match("https://anything")
    assert not re.compile(origin_regex([])).match("http://localhost")


def _app(tmp_path, **env: str) -> TestClient:
    settings = Settings.from_env({"OLLAMA_MODELS": str(tmp_path), **env})
    state = ServerState(settings, Store(settings.models_dir), Scheduler.create(settings))
    return TestClient(create_app(state), base_url="http://localhost:11434")


def test_rebinding_host_is_forbidden(tmp_path):
    with _app(tmp_path) as client:
        assert client.get("/api/version").status_code == 200
        evil = client.get("/api/version", headers={"Host": "attacker.example:11434"})
        assert evil.status_code == 403 and evil.json() == {"error": "forbidden host"}


def test_public_bind_does_not_check_host(tmp_path):
    with _app(tmp_path, OLLAMA_HOST="0.0.0.0:11434") as client:
        response = client.get("/api/version", headers={"Host": "server.example.com"})
        assert response.status_code == 200


def test_cors_from_ollama_origins(tmp_path):
    with _app(tmp_path, OLLAMA_ORIGINS="https://chat.example.org") as client:
        allowed = client.options(
            "/api/chat",
            headers={"Origin": "https://chat.example.org", "Access-Control-Request-Method": "POST"},
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://chat.example.org"
        local = client.get("/api/version", headers={"Origin": "http://localhost:5173"})
        assert local.headers["access-control-allow-origin"] == "http://localhost:5173"
        other = client.get("/api/version", headers={"Origin": "https://evil.com"})
        assert "access-control-allow-origin" not in other.headers


# Real embeddings hold no subnormals, whose few significant bits make exact unit length moot.
vectors = st.lists(
    st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False), min_size=1, max_size=64
)


@given(vectors)
def test_normalize_gives_unit_or_zero(vector: list[float]):
    out = normalize(vector)
    norm = math.sqrt(sum(x * x for x in out))
    assert len(out) == len(vector)
    if any(vector):
        assert math.isclose(norm, 1.0, rel_tol=1e-9)
    else:
        assert norm == 0.0


def test_dimensions_slice_then_normalize():
    assert fit_dimensions([3.0, 4.0, 12.0], 2) == [0.6, 0.8]
    assert fit_dimensions([3.0, 4.0], None) == [0.6, 0.8]
    with pytest.raises(BadRequest):
        fit_dimensions([1.0, 2.0], 3)


def test_unknown_routes_answer_in_the_error_shape(tmp_path):
    with _app(tmp_path) as client:
        missing = client.get("/api/nothing")
        assert missing.status_code == 404 and missing.json() == {"error": "404 page not found"}
        wrong = client.get("/api/generate")
        assert wrong.status_code == 405 and "error" in wrong.json()
