"""Hostile input is never a 5xx: every route, fuzzed in process (``inprocess``).

Each route gets (a) bodies drawn from its own request model's JSON schema
(``Model.model_json_schema()``, through the small schema-to-strategy translator below:
the app serves no OpenAPI document, since its routes read their bodies themselves),
with the fields that steer the request path (``model``, ``format``, ``options``,
``template``...) drawn mostly from values that reach deep into it; (b) arbitrary JSON,
wrong types everywhere, NaN and infinities included; (c) raw bytes: truncated JSON,
invalid UTF-8, lone surrogates, deep nesting. Every answer must be below 500 (a 5xx is
a bug of ours), in its API's error shape when it is an error, with no "internal error"
record inside a stream; afterwards the server still answers ``GET /``, no write left a
``.partial-``/``.tmp-`` file in the store, and nothing appeared outside it.

Pull and push never leave this machine: their names point at a closed port on
127.0.0.1 (a 502 is then the right answer: the registry failed, not the client), and a
transport that refuses every other host guards against a fuzzed name that names one.

The runner is scripted, but its calls are encoded as the real runner client encodes
them (httpx's JSON: UTF-8, no NaN) and token ids outside its vocabulary are refused
with the runner's 400, so what would fail on the way to a real runner fails here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import hashlib
import json
import math
import os
import re
import socket
import time
from collections import Counter
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from inprocess import InProcess, ScriptedRunner
from pydantic import BaseModel

from pollama.api.anthropic.types import MessagesRequest
from pollama.api.ollama import types as ollama
from pollama.api.ollama.rerank import RerankRequest
from pollama.api.openai import types as openai
from pollama.api.openai.responses_types import ResponsesRequest
from pollama.devices.types import DeviceInfo
from pollama.errors import RunnerHTTPError
from pollama.options.load import LoadConfig
from pollama.options.parameters import OPTIONS
from pollama.protocol.wire import (
    CompletionChunk,
    CompletionDone,
    CompletionRequest,
    EmbeddingResponse,
)
from pollama.scheduler.loaded import ModelSpec
from pollama.store import registry
from pollama.store.blobs import PARTIAL_PREFIX, TEMP_PREFIX

SENT: Counter[str] = Counter()
"""Requests sent, by test: the volume is checked (and reported) by the last test."""
ANSWERS: Counter[tuple[str, int]] = Counter()
"""Statuses by path: how many requests got past validation is reported with the volume."""
MIN_REQUESTS = 2500


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CLOSED = f"127.0.0.1:{_closed_port()}"
"""A registry host nothing listens on: pull and push fail there with a 502."""


# -- the app -------------------------------------------------------------------------------


def _encoded(body: Any) -> None:
    """Encode ``body`` as httpx encodes a runner request (ValueError/UnicodeEncodeError)."""
    json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


class WireRunner(ScriptedRunner):
    """A scripted runner whose arguments must survive the real runner client's wire."""

    async def completion(
        self, request: CompletionRequest
    ) -> AsyncGenerator[CompletionChunk | CompletionDone, None]:
        _encoded(request.to_json())
        async for item in super().completion(request):
            yield item

    async def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        _encoded({"content": text, "add_special": add_special})
        return await super().tokenize(text, add_special)

    async def detokenize(self, tokens: Sequence[int]) -> str:
        _encoded({"tokens": list(tokens)})
        if any(not 0 <= token < 256 for token in tokens):  # as the runner answers
            raise RunnerHTTPError("token id out of range for this vocabulary", 400)
        return await super().detokenize(tokens)

    async def embedding(self, inputs: Sequence[str], truncate: bool = True) -> EmbeddingResponse:
        _encoded({"content": list(inputs), "truncate": truncate})
        return await super().embedding(inputs, truncate)


def parrot(request: CompletionRequest) -> list[str]:
    """The prompt's last 300 characters, in pieces of 7: the client writes the "reply"."""
    tail = request.prompt[-300:]
    pieces = [tail[i : i + 7] for i in range(0, len(tail), 7)]
    limit = request.options.num_predict
    return pieces if limit < 0 else pieces[:limit]


class Fuzzed(InProcess):
    """The in-process app over ``WireRunner``s."""

    async def _start(
        self, spec: ModelSpec, config: LoadConfig, gpus: Sequence[DeviceInfo]
    ) -> ScriptedRunner:
        return WireRunner(spec, config, self.script)


class LocalOnly(httpx.AsyncBaseTransport):
    """Connects to 127.0.0.1 only; any other registry host is unreachable."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.refused: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host != "127.0.0.1":
            self.refused.append(str(request.url))
            raise httpx.ConnectError("the fuzz tests reach no network", request=request)
        return await self.inner.handle_async_request(request)


@dataclass
class Server:
    app: Fuzzed
    root: Path
    """The temporary directory the store (``root/models``) lives in."""
    outside: frozenset[str]
    """What ``root`` held, the store aside, once the server was up."""
    digests: tuple[str, ...]
    """The blobs the store holds."""
    model_digest: str
    """The demo GGUF's: ``files`` that name it reach create."""
    guard: LocalOnly
    strategies: dict[tuple[str, bool], Any] = field(default_factory=dict)

    @property
    def client(self) -> Any:
        return self.app.client


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("fuzz")
    guard = LocalOnly()
    pull, push = registry.pull, registry.push
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry, "pull", lambda *a, **k: pull(*a, **k, transport=guard))
        patch.setattr(registry, "push", lambda *a, **k: push(*a, **k, transport=guard))
        app = Fuzzed(root, script=parrot)
        with app:
            # The demo model is imported, and a copy named for the closed registry is
            # there for push to fail against.
            copied = app.post("/api/copy", {"source": "smollm2", "destination": local("smollm2")})
            assert copied.status_code == 200, copied.text
            fuzzer = {"model": "fuzzer", "from": "smollm2", "template": FUZZER_TEMPLATE}
            created = app.post("/api/create", {**fuzzer, "stream": False})
            assert created.status_code == 200, created.text
            blobs = sorted((root / "models" / "blobs").glob("sha256-*"), key=_size)
            digests = tuple(b.name.replace("sha256-", "sha256:") for b in blobs)
            yield Server(app, root, _outside(root), digests, digests[-1], guard)
    asyncio.run(guard.inner.aclose())


def _size(path: Path) -> int:
    return path.stat().st_size


def local(model: str) -> str:
    return f"{CLOSED}/library/{model}"


def _outside(root: Path) -> frozenset[str]:
    found = set()
    for path in root.rglob("*"):
        if path.relative_to(root).parts[0] != "models":
            found.add(str(path.relative_to(root)))
    return frozenset(found)


# -- what every answer must be -------------------------------------------------------------

_INTERNAL = re.compile(rb'"(?:error|message)"\s*:\s*"internal error"')
_WATCHDOG_S = 60.0


@contextlib.contextmanager
def watchdog() -> Iterator[None]:
    """A request that hangs dumps every thread's stack and ends the run."""
    faulthandler.dump_traceback_later(_WATCHDOG_S, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def send(
    server: Server, test: str, method: str, path: str, content: bytes | None = None, **kw: Any
) -> httpx.Response:
    SENT[test] += 1
    started = time.monotonic()
    with watchdog():
        response: httpx.Response = server.client.request(method, path, content=content, **kw)
    assert time.monotonic() - started < 20, f"{method} {path} took too long"
    return response


def check(server: Server, method: str, path: str, response: httpx.Response) -> None:
    status = response.status_code
    ANSWERS[re.sub(r"^(/api/blobs|/v1/models)/.*", r"\1/{...}", path), status] += 1
    note = f"{method} {path} -> {status}: {response.text[:800]}"
    allowed = 502 if path in ("/api/pull", "/api/push") else None
    assert status < 500 or status == allowed, note
    assert not _INTERNAL.search(response.content), note  # an error record inside a stream
    kind = response.headers.get("content-type", "")
    if method == "HEAD":
        assert not response.content, note
    elif status >= 400:
        assert kind.startswith("application/json"), note
        # The shape is the served path's (the client resolves "a/../b" before sending).
        check_error_shape(response.request.url.path, strict_json(response.content), note)
    elif kind.startswith("application/json"):
        strict_json(response.content)
    elif kind.startswith("application/x-ndjson"):
        for line in response.content.splitlines():
            strict_json(line)
    check_still_serving(server)


def strict_json(data: bytes) -> Any:
    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(data, parse_constant=refuse)


def check_error_shape(path: str, body: Any, note: str) -> None:
    assert isinstance(body, dict), note
    if path.startswith("/v1/messages"):
        assert body.get("type") == "error", note
        error = body["error"]
        assert isinstance(error.get("type"), str) and isinstance(error.get("message"), str), note
    elif path.startswith("/v1/"):
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, note
        assert isinstance(error["message"], str) and error["message"], note
    else:
        assert set(body) == {"error"} and isinstance(body["error"], str), note
        assert body["error"], note


def check_still_serving(server: Server) -> None:
    alive = server.client.get("/")
    assert alive.status_code == 200 and alive.text == "Ollama is running"
    leftovers = [
        path
        for path in (server.root / "models").rglob("*")
        if path.name.startswith((PARTIAL_PREFIX, TEMP_PREFIX))
    ]
    assert not leftovers, leftovers
    assert _outside(server.root) == server.outside


# -- the routes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    body: type[BaseModel] | None = None

    @property
    def remote(self) -> bool:
        return self.path in ("/api/pull", "/api/push")


BODY_ROUTES = (
    Route("POST", "/api/generate", ollama.GenerateRequest),
    Route("POST", "/api/chat", ollama.ChatRequest),
    Route("POST", "/api/embed", ollama.EmbedRequest),
    Route("POST", "/api/embeddings", ollama.EmbeddingsRequest),
    Route("POST", "/api/rerank", RerankRequest),
    Route("POST", "/api/show", ollama.ShowRequest),
    Route("POST", "/api/create", ollama.CreateRequest),
    Route("POST", "/api/copy", ollama.CopyRequest),
    Route("DELETE", "/api/delete", ollama.DeleteRequest),
    Route("POST", "/api/pull", ollama.PullRequest),
    Route("POST", "/api/push", ollama.PushRequest),
    Route("POST", "/v1/chat/completions", openai.ChatCompletionRequest),
    Route("POST", "/v1/completions", openai.CompletionRequest),
    Route("POST", "/v1/embeddings", openai.EmbeddingRequest),
    Route("POST", "/v1/rerank", RerankRequest),
    Route("POST", "/v1/responses", ResponsesRequest),
    Route("POST", "/v1/messages", MessagesRequest),
)
PLAIN_ROUTES = (
    Route("GET", "/"),
    Route("HEAD", "/"),
    Route("GET", "/api/version"),
    Route("GET", "/api/tags"),
    Route("GET", "/api/ps"),
    Route("GET", "/v1/models"),
    Route("GET", "/metrics"),
)
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")

# -- values that reach deep ----------------------------------------------------------------

# What a model may be asked to write back (the script parrots the prompt's tail): the
# reply parser then meets tool calls and thinking blocks, well-formed or not.
REPLY_TEXTS = [
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
    '<tool_call>{"name": "nope", "arguments": [1, 2]}</tool_call>',
    '<tool_call>[{"name": "get_weather"}, 7]</tool_call>',
    "<tool_call>" + "[" * 3000 + "</tool_call>",
    '<tool_call>{"name": "get_weather", "arguments": {"city": NaN}}</tool_call>',
    "<tool_call>{",
    "<think>hmm</think>answer",
    "</think><think><think>",
    '{"name": "get_weather", "arguments": {}}',
]
# Text, and now and then a lone surrogate (the JSON encoder escapes it as \ud800).
ODD_TEXT = ["\ud800", "a\udfffb", "\x00", "\u2028", "\ufeff", "\U0001f600", "{{", "%s", "\r\n"]
clean_text = st.text(max_size=30) | st.sampled_from(REPLY_TEXTS)
text = st.one_of(
    clean_text,
    st.text(st.characters(exclude_categories=()), max_size=30),
    st.sampled_from(ODD_TEXT),
)
huge_ints = st.sampled_from([2**31, 2**63, 2**64, -(2**63) - 1, 10**30, -(10**40)])
floats = st.floats() | st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0, 5e-324])
scalars = st.none() | st.booleans() | st.integers() | huge_ints | floats | text


def json_values(keys: st.SearchStrategy[str] = text, leaves: int = 12) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
        max_leaves=leaves,
    )


BAD_NAMES = [
    *("", " ", "nope", "SmolLM2", "smollm2:nope", "library/smollm2"),
    "registry.ollama.ai/library/smollm2:latest",
    # None of these parses as a name: pull and push refuse them before any I/O.
    *("../../etc/passwd", "..", "smollm2/../../x", "x/../y:z", "%2e%2e/x", "..\\..\\x"),
    *("/etc/passwd", "C:\\x", "smollm2@sha256:" + "0" * 64, "a/b/c/d", "smollm2\x00"),
    *("smollm2\n", "x" * 81, "a" * 5000, "ŝmøllm2", "\ud800"),
]
UNPARSABLE = BAD_NAMES[7:]
model_names = st.sampled_from(["smollm2", "smollm2:latest", "fuzzer"])
fresh_names = st.from_regex(r"fz[a-z0-9]{0,6}(:[a-z0-9]{1,4})?", fullmatch=True)
bad_names = st.sampled_from(BAD_NAMES) | st.text(max_size=20) | st.text(min_size=300)
# Pull and push only ever name the closed registry, or a name that does not parse.
remote_names = st.sampled_from([local("smollm2"), local("nope"), f"http://{CLOSED}/ns/m:t"])

SCHEMA_KEYS = [
    *("type", "properties", "items", "prefixItems", "enum", "const", "required"),
    *("minimum", "maximum", "exclusiveMinimum", "minLength", "maxLength", "pattern"),
    *("minItems", "maxItems", "anyOf", "oneOf", "allOf", "$ref", "$defs", "format"),
    *("additionalProperties", "description", "not", "multipleOf"),
]
schema_words = st.sampled_from(
    [*("object", "array", "string", "integer", "number", "boolean", "null"), "#/$defs/x", "#"]
)
GOOD_SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "n": {"type": "integer", "maximum": 9}},
        "required": ["city"],
    },
    {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 3},
    {"enum": ["a", "b", 1, None]},
    {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
    {"anyOf": [{"type": "string", "format": "date"}, {"type": "boolean"}]},
    {
        "$defs": {"x": {"type": "integer"}},
        "type": "object",
        "properties": {"x": {"$ref": "#/$defs/x"}},
    },
]
BAD_SCHEMAS: list[dict[str, Any]] = [
    {"type": "integer", "minimum": 1e308, "maximum": -1e308},
    {"type": "number", "minimum": math.nan},
    {"type": "integer", "minimum": math.inf},
    {"type": "integer", "minimum": 10**30, "maximum": 10**31},
    {"type": "string", "pattern": "(a"},
    {"type": "string", "pattern": "a{1000000}"},
    {"type": "string", "minLength": 10**9},
    {"type": "array", "minItems": 10**9},
    {"type": "integer", "multipleOf": 0},
    {"enum": []},
    {"$ref": "#"},
    {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
    {"type": "object", "properties": {"a": {"$ref": "#/properties/a"}}},
    {"type": ["string", 7]},
    {"type": "object", "properties": [], "required": "a"},
]
schemas = st.sampled_from(BAD_SCHEMAS) | st.recursive(
    st.dictionaries(st.sampled_from(SCHEMA_KEYS), scalars | schema_words, max_size=3),
    lambda inner: st.dictionaries(
        st.sampled_from(SCHEMA_KEYS),
        inner | st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
        max_size=3,
    ),
    max_leaves=10,
)
good_schemas = st.sampled_from(GOOD_SCHEMAS)

# A template that reads tools and the think flag and writes Qwen-style tags: the model
# "fuzzer" has it, so that tools, thinking and the reply parser are all in play.
FUZZER_TEMPLATE = (
    "{{- if .Tools }}<tools>{{ range .Tools }}{{ json . }}{{ end }}</tools>{{ end }}"
    "{{- range .Messages }}<{{ .Role }}>"
    "{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}"
    "{{ range .ToolCalls }}<tool_call>{{ json .Function }}</tool_call>{{ end }}\n"
    "{{ end }}{{ if .Think }}<think>{{ end }}"
)
GOOD_TEMPLATES = [
    "{{ .Prompt }}",
    "{{ if .System }}<|system|>{{ .System }}{{ end }}{{ .Prompt }}",
    "{{- range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}",
    "{{ range .Tools }}{{ json . }}{{ end }}{{ .Prompt }}<fim>{{ .Suffix }}",
    "{% for m in messages %}{{ m.content }}{% endfor %}",
    FUZZER_TEMPLATE,
]
BAD_TEMPLATES = [
    "{{ range $i := 1000000000 }}{{ range $j := 1000000000 }}{{ end }}{{ end }}",
    "{{ .Prompt",
    "{{ index .Messages 99 }}",
    "{% for m in messages %}{{ m.content | tojson }}{{ tools }}{% endfor %}",
    "{{ messages[0].content }}",
    "{% for i in range(10**9) %}x{% endfor %}",
    "{{ raise_exception('no') }}",
    "{{ ''.__class__.__mro__ }}",
    "{% set x = 'a' * 1000000000 %}{{ x }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{{ messages | map(attribute='content') | join('x' * 100000000) }}",
    "{% for m in messages %}{% include 'x' %}{% endfor %}",
    # Past Python's own limits (each was a 500): recursion, nested blocks, arity.
    "{% for a in messages %}" * 25 + "{% endfor %}" * 25,
    "{{ " + "(" * 500 + "1" + ")" * 500 + " }}",
    "{{ if .Prompt }}" * 2000 + "{{ end }}" * 2000,
    "{{ .Prompt }}{{ json }}",
]
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": GOOD_SCHEMAS[0]},
}
bad_tools = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.just("function"),
            "function": st.fixed_dictionaries(
                {"name": st.just("get_weather") | text},
                optional={"parameters": schemas, "description": text},
            ),
        }
    )
    | json_values(),
    max_size=3,
)
good_options = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.floats(0, 2),
        "num_predict": st.integers(1, 8),
        "stop": st.lists(clean_text, max_size=2),
        "seed": st.integers(0, 99),
        "num_ctx": st.sampled_from([512, 2048]),
        "top_k": st.integers(1, 50),
    },
)
bad_options = st.dictionaries(st.sampled_from(sorted(OPTIONS)) | text, scalars | json_values())
file_names = st.sampled_from(["model.gguf", "../x.gguf", "/abs.gguf", "C:x", "", "a/b"]) | text


def digests(server: Server) -> st.SearchStrategy[str]:
    real = st.sampled_from(server.digests)
    return real | st.sampled_from(["sha256:" + "0" * 64, "sha256:xyz", "md5:0", ""]) | text


GOOD: dict[str, st.SearchStrategy[Any]] = {
    "model": model_names,
    "name": model_names,
    "from": model_names,
    "source": model_names,
    "destination": fresh_names,
    "format": st.sampled_from([None, "json", ""]) | good_schemas,
    "schema": good_schemas,
    "input_schema": good_schemas,
    "parameters": good_schemas,
    "options": good_options,
    "template": st.sampled_from(GOOD_TEMPLATES),
    "tools": st.lists(st.just(WEATHER), max_size=2),
    "keep_alive": st.sampled_from([None, "5m", "1h", 300, -1]),
    "think": st.sampled_from([None, False, True, "low", "high"]),
    "context": st.lists(st.integers(0, 255), max_size=5),
    "images": st.sampled_from([None, []]),
    "role": st.sampled_from(["user", "assistant"]),
}
BAD: dict[str, st.SearchStrategy[Any]] = {
    "model": bad_names,
    "name": bad_names,
    "from": bad_names,
    "source": bad_names,
    "destination": bad_names,
    "format": st.sampled_from(["yaml", "JSON", 7]) | schemas,
    "schema": schemas,
    "input_schema": schemas,
    "parameters": schemas | bad_options,
    "options": bad_options,
    "template": st.sampled_from(BAD_TEMPLATES) | text,
    "tools": bad_tools,
    "keep_alive": st.sampled_from(["0", "-1m", "1h30m", "300", "", "1e400h", "5 m"])
    | floats
    | huge_ints,
    "think": st.sampled_from(["medium", "max", "", "true", 1]) | text,
    "context": st.lists(st.integers() | huge_ints, max_size=5),
    "images": st.lists(st.sampled_from(["iVBORw0KGgo=", "", "%%%"]) | text, max_size=2),
    "role": st.sampled_from(["system", "tool", "developer", "", "x"]) | text,
}


def hints(server: Server, route: Route, hostile: bool) -> dict[str, st.SearchStrategy[Any]]:
    """Values for the fields that steer the request path, by field name: good ones that
    pass validation and reach deep, and, when ``hostile``, bad ones too."""
    good = dict(GOOD)
    files = st.dictionaries(file_names, digests(server), max_size=3)
    good["files"] = st.fixed_dictionaries({"model.gguf": st.just(server.model_digest)})
    if route.path in ("/api/create", "/api/copy", "/api/delete"):
        good["model"] = good["name"] = fresh_names  # "fuzzer" stays
    if route.path == "/api/create":
        good["parameters"] = good_options
    if route.remote:
        good["model"] = good["name"] = remote_names
    if not hostile:
        return good
    bad = {**BAD, "files": files, "adapters": files}
    if route.remote:
        bad["model"] = bad["name"] = st.sampled_from(UNPARSABLE)
    return {name: good.get(name, st.nothing()) | bad[name] for name in {*good, *bad}}


# -- a JSON schema as a strategy -----------------------------------------------------------


class FromSchema:
    """Values for a pydantic JSON schema: the keywords pydantic writes (``$ref`` into
    ``$defs``, ``anyOf``/``oneOf``, ``const``/``enum``, typed objects, arrays, bounds).

    A property named in ``hints`` is drawn from its hint (or, when ``hostile``, from its
    hint or its schema). Unless ``hostile``, values stay in their bounds and an object
    carries its required properties, ``model``, and at most two other optional ones."""

    def __init__(
        self, schema: Mapping[str, Any], hints: Mapping[str, st.SearchStrategy[Any]], hostile: bool
    ) -> None:
        self.defs: Mapping[str, Any] = schema.get("$defs", {})
        self.hints = hints
        self.hostile = hostile
        self.strategy = self.of(schema, 0)

    def of(self, node: Mapping[str, Any], depth: int) -> st.SearchStrategy[Any]:
        if depth > 16:  # no schema here is recursive; this only bounds a mistake
            return scalars
        if "$ref" in node:
            return self.of(self.defs[node["$ref"].rsplit("/", 1)[-1]], depth + 1)
        if "const" in node:
            return st.just(node["const"])
        if "enum" in node:
            return st.sampled_from(node["enum"])
        for key in ("anyOf", "oneOf"):
            if key in node:
                return st.one_of([self.of(option, depth + 1) for option in node[key]])
        kind = node.get("type")
        if kind == "object":
            return self.object(node, depth)
        if kind == "array":
            items = self.of(node.get("items", {}), depth + 1)
            return st.lists(items, min_size=node.get("minItems", 0), max_size=3)
        return self.scalar(kind, node)

    def scalar(self, kind: str | None, node: Mapping[str, Any]) -> st.SearchStrategy[Any]:
        if kind == "integer":
            low, high = node.get("minimum", 0), node.get("maximum", 64)
            return (
                st.integers(low, high) | st.integers() if self.hostile else st.integers(low, high)
            )
        if kind == "number":
            return st.floats(allow_nan=False) if self.hostile else st.floats(0, 2)
        return {
            "string": text if self.hostile else clean_text,
            "boolean": st.booleans(),
            "null": st.none(),
        }.get(kind or "", json_values())

    def object(self, node: Mapping[str, Any], depth: int) -> st.SearchStrategy[Any]:
        properties: Mapping[str, Any] = node.get("properties", {})
        if not properties:
            return st.dictionaries(text, json_values(), max_size=3)
        fields = {name: self.field(name, schema, depth) for name, schema in properties.items()}
        needed = set(node.get("required", ())) | {"model"}
        required = [name for name in fields if name in needed]
        optional = [name for name in fields if name not in needed]
        extra = len(optional) if self.hostile else 2

        @st.composite
        def build(draw: st.DrawFn) -> dict[str, Any]:
            chosen = draw(st.lists(st.sampled_from(optional), max_size=extra, unique=True))
            return {name: draw(fields[name]) for name in [*required, *chosen]}

        return build() if optional else st.fixed_dictionaries({n: fields[n] for n in required})

    def field(self, name: str, schema: Mapping[str, Any], depth: int) -> st.SearchStrategy[Any]:
        if name not in self.hints:
            return self.of(schema, depth + 1)
        if self.hostile:
            return self.hints[name] | self.of(schema, depth + 1)
        return self.hints[name]


_ALL_FIELDS = sorted(
    {
        name
        for route in BODY_ROUTES
        if route.body is not None
        for schema in (route.body.model_json_schema(),)
        for node in (schema, *schema.get("$defs", {}).values())
        for name in node.get("properties", {})
    }
)


def body_strategy(server: Server, route: Route, hostile: bool) -> st.SearchStrategy[Any]:
    key = (route.path, hostile)
    if key not in server.strategies:
        assert route.body is not None
        schema = route.body.model_json_schema()
        server.strategies[key] = FromSchema(schema, hints(server, route, hostile), hostile).strategy
    return server.strategies[key]


@st.composite
def schema_bodies(draw: st.DrawFn, server: Server, route: Route) -> dict[str, Any]:
    """A body from the route's schema: clean (it should pass validation), or hostile, with
    bad values among the good and now and then a field replaced by junk."""
    assert route.body is not None
    hostile = draw(st.booleans())
    body: dict[str, Any] = draw(body_strategy(server, route, hostile))
    if "stream" in route.body.model_fields:
        body["stream"] = draw(st.booleans())
    if route.path == "/api/create" and not hostile and not {"from", "files"} & set(body):
        source = draw(st.sampled_from(["from", "files"]))  # create needs exactly one
        body[source] = draw(hints(server, route, hostile=False)[source])
    for _ in range(draw(st.integers(0, 2)) if hostile else 0):
        key = draw(st.sampled_from(sorted(body)) if body else st.sampled_from(_ALL_FIELDS))
        body[key] = draw(json_values())
    if route.remote and not isinstance(body.get("model"), str):
        body["model"] = draw(remote_names)  # "name" alone could still name a real host
    return body


def post_json(server: Server, test: str, route: Route, body: Any) -> None:
    content = json.dumps(body).encode()  # NaN and Infinity as Python writes them
    headers = {"content-type": "application/json"}
    response = send(server, test, route.method, route.path, content, headers=headers)
    check(server, route.method, route.path, response)


# -- (a) bodies from the schemas -----------------------------------------------------------

SCALE = float(os.environ.get("POLLAMA_FUZZ_SCALE", "1"))
"""More examples for a deeper run than CI's (``POLLAMA_FUZZ_SCALE=20``)."""


def examples(n: int) -> int:
    return max(1, round(n * SCALE))


FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


@pytest.mark.parametrize("route", BODY_ROUTES, ids=lambda r: r.path)
def test_bodies_from_the_schema(server: Server, route: Route) -> None:
    @settings(FUZZ, max_examples=examples(100))
    @given(body=schema_bodies(server, route))
    def fuzz(body: dict[str, Any]) -> None:
        post_json(server, "schema", route, body)

    fuzz()


# -- (b) arbitrary JSON --------------------------------------------------------------------


@pytest.mark.parametrize("route", BODY_ROUTES, ids=lambda r: r.path)
def test_arbitrary_json(server: Server, route: Route) -> None:
    keys = st.sampled_from(_ALL_FIELDS) | text
    anything = json_values(keys, leaves=20)

    @settings(FUZZ, max_examples=examples(30))
    @given(body=anything | st.dictionaries(keys, anything, max_size=6))
    def fuzz(body: Any) -> None:
        if route.remote and isinstance(body, dict):
            for key in ("model", "name"):
                if isinstance(body.get(key), str):
                    body[key] = local(body[key])
        post_json(server, "json", route, body)

    fuzz()


# -- (c) raw bytes -------------------------------------------------------------------------

NEST = st.integers(1, 1200) | st.integers(1, 3000)
raw_junk = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b" ", b"null", b"[]", b"{}", b'"x"', b"1e999", b"\xef\xbb\xbf{}"]),
    NEST.map(lambda n: b"[" * n + b"]" * n),
    NEST.map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    NEST.map(lambda n: b"[" * n),
    st.just(b"9" * 5000),
)


@st.composite
def raw_bodies(draw: st.DrawFn, server: Server, route: Route) -> bytes:
    """Junk, or a body from the schema broken at the byte level."""
    if draw(st.booleans()):
        return draw(raw_junk)
    valid = json.dumps(draw(schema_bodies(server, route))).encode()
    how = draw(st.sampled_from(["truncate", "insert", "nan", "nest", "utf16", "surrogate"]))
    at = draw(st.integers(0, len(valid)))
    if how == "truncate":
        return valid[:at]
    if how == "insert":
        return valid[:at] + draw(st.binary(min_size=1, max_size=4)) + valid[at:]
    if how == "nan":
        constant = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999"]))
        return re.sub(rb"(?<=: )-?\d[\d.eE+-]*", constant, valid)
    if how == "nest":
        key = draw(st.sampled_from(_ALL_FIELDS)).encode()
        depth, bracket = draw(NEST), draw(st.sampled_from([b"[", b'{"a":']))
        nested = bracket * depth + b"1" + (b"]" if bracket == b"[" else b"}") * depth
        return valid[:-1] + b', "' + key + b'": ' + nested + b"}"
    if how == "utf16":
        return valid.decode().encode(draw(st.sampled_from(["utf-16", "utf-32-be"])))
    # A lone surrogate, escaped, at the start of the first string value (or key).
    where = b'": "' if b'": "' in valid else b'"'
    return valid.replace(where, where + draw(st.sampled_from([b"\\ud800", b"\\udfff"])), 1)


@pytest.mark.parametrize("route", BODY_ROUTES, ids=lambda r: r.path)
def test_raw_bytes(server: Server, route: Route) -> None:
    types = st.sampled_from(["application/json", "text/plain", "", "application/x-ndjson"])

    @settings(FUZZ, max_examples=examples(40))
    @given(content=raw_bodies(server, route), kind=types)
    @example(content=b"[" * 3000, kind="application/json")  # RecursionError was a 500
    @example(content=b'{"a":' * 3000, kind="application/json")
    @example(content=b'{"model": "smollm2", "prompt": "\\ud800"}', kind="")  # so was this
    def fuzz(content: bytes, kind: str) -> None:
        headers = {"content-type": kind} if kind else {}
        response = send(server, "raw", route.method, route.path, content, headers=headers)
        check(server, route.method, route.path, response)

    fuzz()


# -- what the fuzz found --------------------------------------------------------------------


def _created(template: str) -> bytes:
    return json.dumps({"model": "fz", "from": "smollm2", "template": template}).encode()


def _generated(template: str) -> bytes:
    return json.dumps({"model": "smollm2", "prompt": "Hi", "template": template}).encode()


UNCOMPILABLE = [
    "{% for a in messages %}" * 25 + "{% endfor %}" * 25,  # SyntaxError: nested blocks
    "{{ " + "9" * 5000 + " }}",  # ValueError: over 4300 digits
    "{{ " + "(" * 500 + "1" + ")" * 500 + " }}",  # RecursionError
    "{{ if .Prompt }}" * 2000 + "{{ end }}" * 2000,
]
FOUND = [
    # json.loads raised RecursionError.
    ("/api/chat", b"[" * 3000),
    ("/v1/messages", b'{"a":' * 3000),
    # Lone surrogates reached the runner's wire (UnicodeEncodeError), or a file.
    ("/api/generate", b'{"model": "smollm2", "prompt": "\\ud800"}'),
    ("/api/embed", b'{"model": "smollm2", "input": ["\\udfff"]}'),
    ("/api/create", b'{"model": "fz", "from": "smollm2", "system": "\\ud800"}'),
    (
        "/v1/chat/completions",
        b'{"model": "smollm2", "messages": [{"role": "user", "content": "\\ud800"}]}',
    ),
    # Templates past Python's limits, compiled (create) or rendered too (generate); and a
    # Go function called with the wrong number of arguments (TypeError) when rendered.
    *(("/api/create", _created(template)) for template in UNCOMPILABLE),
    *(("/api/generate", _generated(template)) for template in UNCOMPILABLE),
    ("/api/generate", _generated("{{ .Prompt }}{{ json }}")),
]


@pytest.mark.parametrize(("path", "content"), FOUND, ids=lambda v: str(v)[:24])
def test_what_the_fuzz_found_is_a_400(server: Server, path: str, content: bytes) -> None:
    response = send(server, "found", "POST", path, content)
    assert response.status_code == 400, response.text
    check(server, "POST", path, response)


# -- routes without a body, path parameters, wrong methods --------------------------------

queries = st.dictionaries(
    st.sampled_from(["verbose", "model", "limit", "x"]) | st.text(), st.text()
)


@settings(FUZZ, max_examples=examples(60))
@given(
    route=st.sampled_from(PLAIN_ROUTES),
    query=queries,
    content=st.none() | st.binary(max_size=32),
)
def test_plain_routes(server: Server, route: Route, query: dict[str, str], content: Any) -> None:
    response = send(server, "plain", route.method, route.path, content, params=query)
    check(server, route.method, route.path, response)


path_text = st.text(st.characters(exclude_categories=()), max_size=80) | st.sampled_from(
    ["smollm2", "smollm2:latest", local("smollm2"), "../../x", "%2e%2e%2f", "a" * 3000]
)


def _path(value: str) -> str:
    return quote(value.encode("utf-8", "surrogatepass"), safe="/:")


@settings(FUZZ, max_examples=examples(60))
@given(model=path_text)
def test_model_card_paths(server: Server, model: str) -> None:
    path = "/v1/models/" + _path(model)
    check(server, "GET", path, send(server, "path", "GET", path))


@st.composite
def blob_requests(draw: st.DrawFn) -> tuple[str, str, bytes]:
    data = draw(st.binary(max_size=64))
    real = "sha256:" + hashlib.sha256(data).hexdigest()
    digest = draw(st.sampled_from([real, real.replace(":", "-"), real.upper()]) | path_text)
    method = draw(st.sampled_from(["HEAD", "POST"]))
    return method, "/api/blobs/" + _path(digest), data


@settings(FUZZ, max_examples=examples(60))
@given(request=blob_requests())
def test_blob_routes(server: Server, request: tuple[str, str, bytes]) -> None:
    method, path, data = request
    content = data if method == "POST" else None
    check(server, method, path, send(server, "blob", method, path, content))


@settings(FUZZ, max_examples=examples(40))
@given(
    route=st.sampled_from(BODY_ROUTES + PLAIN_ROUTES),
    method=st.sampled_from(METHODS),
    content=st.none() | st.binary(max_size=16),
)
def test_wrong_methods(server: Server, route: Route, method: str, content: Any) -> None:
    if method == route.method or (route.remote and method == "POST"):
        return
    check(server, method, route.path, send(server, "method", method, route.path, content))


# -- the volume ----------------------------------------------------------------------------


def test_the_fuzz_sent_enough_requests(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    """Last in the file: the whole run sent at least MIN_REQUESTS (when it all ran)."""
    total = sum(SENT.values())
    by_path: dict[str, list[str]] = {}
    for (path, status), count in sorted(ANSWERS.items()):
        by_path.setdefault(path, []).append(f"{status}x{count}")
    with capsys.disabled():  # shown without -s too
        print(f"\ntest_fuzz_api: {total} requests {dict(SENT)}")
        print(f"  registry hosts refused (not 127.0.0.1): {len(server.guard.refused)}")
        for path, counts in by_path.items():
            print(f"  {path}: {' '.join(counts)}")
    if not {"schema", "json", "raw", "plain", "path", "blob", "method"} <= set(SENT):
        pytest.skip("only part of the fuzz ran")
    assert total >= MIN_REQUESTS, dict(SENT)
