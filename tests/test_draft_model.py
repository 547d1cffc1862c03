"""Speculative decoding with a draft model (Modelfile ``DRAFT``) is greedy-exact.

The target is the demo model requantized to Q8_0, the draft the same model in Q4_0
(``conftest``): one vocabulary, weights that agree often but not always, so drafts are
partly accepted. Two real servers answer the same requests, one drafting and one not
(``POLLAMA_SPECULATIVE=off``); only their answers are compared, never the model's words.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import gguf
import pytest
from gguf_files import write_gguf
from serving import Server, greedy_chat

from pollama.cli.create import create_request
from pollama.demo import demo_model_path
from pollama.ggufmeta import read_model
from pollama.memory.estimate import draft_memory, estimate_memory
from pollama.options.load import LoadOptions, resolve_load_options
from pollama.store.modelfile import parse_modelfile
from pollama.store.vocab import Vocabulary, vocabulary_difference

STORY = "Write a short story about a robot who learns to paint."
LIST = "List ten fruits, one per line, with a short note on each."
PROMPTS = [STORY, LIST, "Explain how a bicycle works."]


# -- pure pieces ------------------------------------------------------------------------


def test_vocabulary_difference_names_what_differs():
    tokens = [f"t{i}" for i in range(300)]
    base = Vocabulary(model="gpt2", tokens=tokens, bos=1, eos=2)
    assert vocabulary_difference(base, base) is None
    # The first few ids are control tokens conversions name differently: not compared.
    assert vocabulary_difference(replace(base, tokens=["x", *tokens[1:]]), base) is None
    # A few padding tokens more is fine; many more is not.
    assert vocabulary_difference(replace(base, tokens=tokens + ["pad"] * 128), base) is None
    assert "429 tokens" in str(
        vocabulary_difference(replace(base, tokens=tokens + ["pad"] * 129), base)
    )
    changed = [*tokens[:123], "foo", *tokens[124:]]
    assert vocabulary_difference(replace(base, tokens=changed), base) == (
        "token 123 is 'foo' in the draft and 't123' in the model"
    )
    assert "tokenizer" in str(vocabulary_difference(replace(base, model="llama"), base))
    assert "EOS" in str(vocabulary_difference(replace(base, eos=7), base))


def test_modelfile_draft_parses_renders_and_uploads(tmp_path: Path):
    modelfile = parse_modelfile("FROM ./target.gguf\nDRAFT ./draft.gguf\n")
    assert modelfile.draft == "./draft.gguf"
    assert parse_modelfile(modelfile.render()) == modelfile
    (tmp_path / "target.gguf").write_bytes(b"t")
    (tmp_path / "draft.gguf").write_bytes(b"d")
    body = create_request("spec", modelfile, tmp_path, lambda path: f"sha256:{path.name}")
    assert body["draft"] == {"draft.gguf": "sha256:draft.gguf"}
    by_name = parse_modelfile("FROM ./target.gguf\nDRAFT smollm2-draft\n")
    assert create_request("spec", by_name, tmp_path, str)["draft"] == "smollm2-draft"


def test_estimate_counts_the_draft_models_weights_and_kv(q4_0_model: Path, q8_0_model: Path):
    from pollama.devices.types import SystemInfo

    target, draft = read_model(q8_0_model), read_model(q4_0_model)
    system = SystemInfo(16 << 30, 16 << 30, 0, 2)
    config = resolve_load_options(target, LoadOptions(num_ctx=2048, draft_max=8), system)
    without = estimate_memory(target, config).memory_size()[0]
    with_draft = estimate_memory(target, config, draft=draft).memory_size()[0]
    extra = draft_memory(draft, config)
    tensors = sum(t.n_bytes for t in draft.tensors)
    assert extra.weights == tensors  # CPU, no repacked copies: the file's tensors
    assert extra.cache == estimate_memory(draft, config).cpu.layer_cache > 0
    assert with_draft - without == extra.size >= tensors + extra.cache
    # Not counted when nothing drafts (POLLAMA_SPECULATIVE=off): the runner skips it.
    off = replace(config, draft_max=0)
    assert estimate_memory(target, off, draft=draft) == estimate_memory(target, off)


# -- through the API -----------------------------------------------------------------------


def upload(server: Server, path: Path) -> str:
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    response = server.client.post(f"/api/blobs/{digest}", content=path.read_bytes())
    assert response.status_code in (200, 201), response.text
    return digest


def create(server: Server, body: dict[str, Any]) -> Any:
    return server.post("/api/create", {"stream": False, **body})


def store_models(server: Server, target: Path, draft: Path) -> None:
    """``spec``: the target with its draft file; ``smollm2-draft``: the draft alone."""
    files = {"target.gguf": upload(server, target)}
    response = create(
        server, {"model": "spec", "files": files, "draft": {"draft.gguf": upload(server, draft)}}
    )
    assert response.status_code == 200, response.text
    response = create(
        server, {"model": "smollm2-draft", "files": {"draft.gguf": upload(server, draft)}}
    )
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def drafting(
    tmp_path_factory: pytest.TempPathFactory, q8_0_model: Path, q4_0_model: Path
) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("draft-on"), OLLAMA_NUM_PARALLEL="3")
    store_models(running, q8_0_model, q4_0_model)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def plain(
    tmp_path_factory: pytest.TempPathFactory, q8_0_model: Path, q4_0_model: Path
) -> Iterator[Server]:
    running = Server(
        tmp_path_factory.mktemp("draft-off"), OLLAMA_NUM_PARALLEL="3", POLLAMA_SPECULATIVE="off"
    )
    store_models(running, q8_0_model, q4_0_model)
    yield running
    running.stop()


def chat(server: Server, prompt: str, **options: Any) -> dict[str, Any]:
    return greedy_chat(server, "spec", prompt, 48, **options)


def test_create_with_a_draft_and_show_it(drafting: Server, q8_0_model: Path):
    show = drafting.post("/api/show", {"model": "spec"}).json()
    draft_lines = [line for line in show["modelfile"].splitlines() if line.startswith("DRAFT ")]
    assert len(draft_lines) == 1
    # By a stored model's name: the same blob becomes the DRAFT layer.
    files = {"target.gguf": upload(drafting, q8_0_model)}
    response = create(drafting, {"model": "spec-by-name", "files": files, "draft": "smollm2-draft"})
    assert response.status_code == 200, response.text
    by_name = drafting.post("/api/show", {"model": "spec-by-name"}).json()["modelfile"]
    assert draft_lines[0] in by_name.splitlines()
    # A model with no DRAFT shows none.
    plain_show = drafting.post("/api/show", {"model": "smollm2-draft"}).json()["modelfile"]
    assert "DRAFT" not in plain_show


def test_draft_model_text_equals_plain_decoding(drafting: Server, plain: Server):
    drafted = accepted = 0
    for prompt in PROMPTS[:2]:
        fast = chat(drafting, prompt)
        slow = chat(plain, prompt)
        assert fast["message"]["content"] == slow["message"]["content"]
        assert fast["eval_count"] == slow["eval_count"]
        assert "draft_count" not in slow
        assert fast["draft_count"] >= fast["draft_accepted_count"]
        drafted += fast["draft_count"]
        accepted += fast["draft_accepted_count"]
    assert accepted > 0
    assert drafted > accepted  # Q4_0 disagrees with Q8_0 sometimes: rejections ran too
    # draft_num_predict 0: this request does not draft, and still says the same.
    off = chat(drafting, STORY, draft_num_predict=0)
    assert "draft_count" not in off
    assert off["message"]["content"] == chat(plain, STORY)["message"]["content"]


def test_streamed_and_openai_replies_equal_plain_decoding(drafting: Server, plain: Server):
    body = {
        "model": "spec",
        "messages": [{"role": "user", "content": LIST}],
        "options": {"temperature": 0, "num_predict": 40},
    }
    streamed = drafting.stream("/api/chat", {**body, "stream": True})
    text = "".join(line["message"]["content"] for line in streamed)
    assert text == chat(plain, LIST, num_predict=40)["message"]["content"]
    assert streamed[-1]["draft_accepted_count"] > 0
    openai = {
        "model": "spec",
        "messages": [{"role": "user", "content": STORY}],
        "temperature": 0,
        "max_tokens": 40,
    }
    fast = drafting.post("/v1/chat/completions", openai).json()
    slow = plain.post("/v1/chat/completions", openai).json()
    assert fast["choices"][0]["message"]["content"] == slow["choices"][0]["message"]["content"]
    with drafting.client.stream(
        "POST", "/v1/chat/completions", json={**openai, "stream": True}
    ) as r:
        events = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    streamed_text = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
    )
    assert streamed_text == slow["choices"][0]["message"]["content"]


def test_concurrent_requests_draft_together_and_match_alone(drafting: Server, plain: Server):
    alone = [chat(plain, p)["message"]["content"] for p in PROMPTS]
    # Each prompt alone first, so that together most of each comes from the slots' caches
    # (a long prompt sharing a batch can move another row's logits in the last bits, with
    # or without drafts: see test_speculative).
    assert [chat(drafting, p)["message"]["content"] for p in PROMPTS] == alone
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda p: chat(drafting, p), PROMPTS))
    assert all(r["done"] and r["eval_count"] > 0 for r in together)
    assert sum(r.get("draft_accepted_count", 0) for r in together) > 0
    assert all(r.get("draft_count", 0) >= r.get("draft_accepted_count", 0) for r in together)
    matching = sum(r["message"]["content"] == a for r, a in zip(together, alone, strict=True))
    assert matching >= 2  # near-ties in free text may flip in a shared batch (as above)


def test_ps_counts_the_draft_model(drafting: Server, plain: Server, q4_0_model: Path):
    chat(drafting, STORY, num_predict=2)
    chat(plain, STORY, num_predict=2)
    sizes = [
        {m["name"]: m["size"] for m in s.client.get("/api/ps").json()["models"]}["spec:latest"]
        for s in (drafting, plain)
    ]
    tensors = sum(t.n_bytes for t in read_model(q4_0_model).tensors)
    assert sizes[0] - sizes[1] >= tensors


def test_mismatched_vocabulary_is_refused_at_create(
    drafting: Server, q8_0_model: Path, tmp_path: Path
):
    demo = read_model(demo_model_path(), max_array_len=-1)
    tokens = list(demo.get("tokenizer.ggml.tokens"))
    original = tokens[1234]
    tokens[1234] = "foo"

    def header(writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list(tokens)
        writer.add_bos_token_id(demo.get("tokenizer.ggml.bos_token_id"))
        writer.add_eos_token_id(demo.get("tokenizer.ggml.eos_token_id"))

    other = write_gguf(tmp_path / "other.gguf", "llama", header)
    files = {"target.gguf": upload(drafting, q8_0_model)}
    body = {"model": "bad", "files": files, "draft": {"other.gguf": upload(drafting, other)}}
    response = create(drafting, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == (
        'draft model "other.gguf" does not share a vocabulary with "target.gguf": '
        f"token 1234 is 'foo' in the draft and {original!r} in the model"
    )
    assert drafting.post("/api/show", {"model": "bad"}).status_code == 404


@pytest.mark.parametrize("value", [-1, 9])
def test_draft_num_predict_out_of_range_is_a_400(drafting: Server, value: int):
    body = {
        "model": "spec",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": False,
        "options": {"num_predict": 4, "draft_num_predict": value},
    }
    response = drafting.post("/api/chat", body)
    assert response.status_code == 400
    assert "draft_num_predict" in response.json()["error"]


def test_fit_shows_the_stored_draft_model(tmp_path: Path, q4_0_model: Path, q8_0_model: Path):
    from test_cli_fit import pollama

    from pollama.store.disk import Store
    from pollama.store.names import ModelName

    store = Store(tmp_path / "models")
    target, draft = store.add_file(q8_0_model), store.add_file(q4_0_model)
    store.create_model(ModelName.parse("spec"), model_blob=target, draft_blob=draft)
    env = {"OLLAMA_MODELS": str(store.root), "OLLAMA_CONTEXT_LENGTH": "2048"}
    with_draft = json.loads(pollama("fit", "spec", "--json", env=env).stdout)
    alone = json.loads(pollama("fit", str(q8_0_model), "--json", env=env).stdout)
    # The draft counts as the Q4_0 model on its own would on the CPU (with any repacked
    # copies this CPU's extra buffers keep), beside the target.
    own = json.loads(pollama("fit", str(q4_0_model), "--json", env=env).stdout)["cpu"]
    figures = with_draft["draft"]
    assert figures["weights"] == own["weights"] + own["input_weights"]
    assert figures["weights"] >= sum(t.n_bytes for t in read_model(q4_0_model).tensors)
    assert figures["cache"] == own["cache"] > 0
    assert with_draft["total"] - alone["total"] == figures["total"]
    assert alone["draft"] is None
    table = pollama("fit", "spec", env=env).stdout
    assert "draft (cpu)" in table
    off = {**env, "POLLAMA_SPECULATIVE": "off"}  # then the runner does not load it
    assert json.loads(pollama("fit", "spec", "--json", env=off).stdout)["draft"] is None
