"""Reranking end to end: ``/api/rerank`` and ``/v1/rerank`` through a real ``pollama serve``
and runner, on a reranker made from the demo model (``assets/reranker.py``).

What cannot depend on the model's quality is asserted exactly: scores repeat, a
document's score does not depend on the documents batched with it or their order, the
ranking, ``top_n``, ``return_documents`` and ``index`` agree with the scores. What does
depend on it is asserted only where it was checked to be robust: obvious cases (a
document that answers the query against an unrelated one). That the asset is the demo
model is checked too: its plain re-expression as ``qwen3`` generates what the demo does.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from assets.reranker import RERANK_TEMPLATE, build
from serving import Server

from pollama.api.ollama.rerank import RerankRequest, check_request, document_texts, ranked
from pollama.chat.capabilities import capabilities
from pollama.demo import demo_model_path
from pollama.errors import BadRequest
from pollama.runner.rerank import fill_template

# (query, a document that answers it, an unrelated one). Of 20 such easy cases the asset
# ranks 16 right, batched as [good, bad] and alone (9 with the "yes"/"no" rows, 14 and 17
# for the demo's own next-token yes/no and Yes/No on llama.cpp's generation path);
# these are the ones whose margin is above 0.1 both scored alone and batched, three times
# the largest batch noise seen (BATCH_TOLERANCE). The test asserts the order, never scores.
OBVIOUS = [
    (
        "How many continents are there?",
        "There are seven continents.",
        "The printer is out of ink.",
    ),
    (
        "What is photosynthesis?",
        "Photosynthesis is how plants turn sunlight, water and carbon dioxide into sugar "
        "and oxygen.",
        "The concert tickets sold out in an hour.",
    ),
    (
        "How many days are in a week?",
        "A week has seven days.",
        "Penguins live in the Southern Hemisphere.",
    ),
    (
        "What is the tallest mountain on Earth?",
        "Mount Everest is the tallest mountain on Earth.",
        "Coffee contains caffeine.",
    ),
]
# A document's score alone and batched with others differ by rounding only (a sequence's
# attention row starts at another offset of the unified cache, so llama.cpp's vector sums
# group differently); the asset amplifies that to at most 0.021 (0.034 with the "yes"/"no"
# head) over 40 measurements. A leak between sequences is tested exactly, below.
BATCH_TOLERANCE = 0.05


# -- pure parts ---------------------------------------------------------------------------


def test_template_is_filled_in_one_pass():
    template = "Q: {query} D: {document} Q again: {query}"
    assert (
        fill_template(template, "a {document}", "b") == "Q: a {document} D: b Q again: a {document}"
    )
    assert fill_template(RERANK_TEMPLATE, "q", "d").count("\nQuery: q\nDocument: d<|im_end|>") == 1


def test_documents_are_strings_or_text_objects():
    assert document_texts(["a", {"text": "b"}, {"text": "", "title": "x"}]) == ["a", "b", ""]
    for bad, message in [
        ([], "documents must be a non-empty list"),
        ("a", "documents must be a non-empty list"),
        (None, "documents must be a non-empty list"),
        (["a", 7], "documents[1] must be a string or an object with a text string"),
        ([{"title": "a"}], "documents[0] must be"),
    ]:
        with pytest.raises(BadRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
            document_texts(bad)


def test_query_and_top_n_are_checked():
    ok = RerankRequest(query="q", documents=["d"], top_n=1)
    assert check_request(ok) == ("q", ["d"])
    for body, message in [
        ({"documents": ["d"]}, "query is required"),
        ({"query": "", "documents": ["d"]}, "query must be a non-empty string"),
        ({"query": ["q"], "documents": ["d"]}, "query must be a non-empty string"),
        ({"query": "q", "documents": ["d"], "top_n": 0}, "top_n must be at least 1, not 0"),
    ]:
        with pytest.raises(BadRequest, match=message):
            check_request(RerankRequest.model_validate(body))


def test_ranking_sorts_cuts_and_keeps_indices():
    results = ranked([0.1, 0.9, 0.5, 0.9], ["a", "b", "c", "d"], top_n=3, with_documents=True)
    assert [(r.index, r.relevance_score) for r in results] == [(1, 0.9), (3, 0.9), (2, 0.5)]
    assert [r.document.text for r in results if r.document] == ["b", "d", "c"]
    assert all(r.document is None for r in ranked([0.2], ["a"], None, with_documents=False))
    assert len(ranked([0.2, 0.1], ["a", "b"], top_n=10, with_documents=False)) == 2


def test_rank_pooling_is_the_rerank_capability():
    reranker = {"general.architecture": "qwen3", "qwen3.pooling_type": 4}
    assert capabilities(reranker, None) == ["rerank"]
    assert capabilities({**reranker, "qwen3.pooling_type": 1}, None) == ["embedding"]
    assert capabilities({"general.architecture": "qwen3"}, None) == ["completion"]


# -- the real thing -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def reranker_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(demo_model_path(), tmp_path_factory.mktemp("reranker") / "reranker.gguf")


@pytest.fixture(scope="session")
def plain_qwen3_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reranker") / "smollm2-qwen3.gguf"
    return build(demo_model_path(), path, head=False)


def create_from_file(server: Server, name: str, path: Path) -> None:
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert server.client.post(f"/api/blobs/{digest}", content=data).status_code == 201
    created = server.post(
        "/api/create", {"model": name, "files": {path.name: digest}, "stream": False}
    )
    assert created.status_code == 200, created.text


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, reranker_file: Path) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("serve"))
    create_from_file(running, "reranker", reranker_file)
    yield running
    running.stop()


def rerank(server: Server, documents: list[Any], path: str = "/api/rerank", **body: Any) -> dict:
    body = {"model": "reranker", "query": OBVIOUS[0][0], "documents": documents, **body}
    response = server.post(path, body)
    assert response.status_code == 200, response.text
    return response.json()


def scores_of(reply: dict) -> dict[int, float]:
    return {r["index"]: r["relevance_score"] for r in reply["results"]}


DOCUMENTS = [doc for _, good, bad in OBVIOUS[:4] for doc in (good, bad)]


@pytest.mark.llama
def test_capability_is_shown(server: Server):
    assert server.post("/api/show", {"model": "reranker"}).json()["capabilities"] == ["rerank"]
    assert "rerank" not in server.post("/api/show", {"model": "smollm2"}).json()["capabilities"]


@pytest.mark.llama
def test_obvious_cases_are_ranked_right(server: Server):
    for query, good, bad in OBVIOUS:
        reply = rerank(server, [bad, good], query=query, return_documents=True)
        assert [r["document"]["text"] for r in reply["results"]] == [good, bad], query


@pytest.mark.llama
def test_a_score_does_not_depend_on_its_batch(server: Server):
    """Deterministic, and the same whether a document is scored with others (one decode,
    one sequence each), in another order, or alone: sequences do not leak into each other."""
    batched = scores_of(rerank(server, DOCUMENTS))
    assert scores_of(rerank(server, DOCUMENTS)) == batched
    backwards = scores_of(rerank(server, DOCUMENTS[::-1]))
    n = len(DOCUMENTS)
    for i, document in enumerate(DOCUMENTS):
        alone = scores_of(rerank(server, [document]))[0]
        assert abs(alone - batched[i]) <= BATCH_TOLERANCE, (document, alone, batched[i])
        assert abs(backwards[n - 1 - i] - batched[i]) <= BATCH_TOLERANCE, document
    assert all(0.0 <= s <= 1.0 for s in batched.values())  # P(yes) against P(no)


@pytest.mark.llama
def test_sequences_do_not_leak_into_each_other(server: Server):
    """A document after two different ones of the same length scores the same, to the bit:
    the same shapes run the same kernels, so any difference would be the other text."""
    first, second, document = "The cat sat on the mat.", "The dog ran in the park.", DOCUMENTS[0]
    replies = [rerank(server, [other, document]) for other in (first, second)]
    assert replies[0]["usage"] == replies[1]["usage"]  # the same shapes (a precondition)
    assert scores_of(replies[0])[0] != scores_of(replies[1])[0]  # different texts
    assert scores_of(replies[0])[1] == scores_of(replies[1])[1]


@pytest.mark.llama
def test_top_n_return_documents_and_indices(server: Server):
    full = rerank(server, DOCUMENTS)
    assert sorted(full) == ["model", "object", "results", "usage"]
    assert full["model"] == "reranker" and full["object"] == "list"
    assert full["usage"]["total_tokens"] == full["usage"]["prompt_tokens"] > 0
    scores = [r["relevance_score"] for r in full["results"]]
    assert scores == sorted(scores, reverse=True)
    assert sorted(r["index"] for r in full["results"]) == list(range(len(DOCUMENTS)))
    assert all("document" not in r for r in full["results"])

    top = rerank(server, DOCUMENTS, top_n=3, return_documents=True)
    assert [r["index"] for r in top["results"]] == [r["index"] for r in full["results"][:3]]
    for result in top["results"]:
        assert result["document"] == {"text": DOCUMENTS[result["index"]]}
        assert result["relevance_score"] == scores_of(full)[result["index"]]
    assert len(rerank(server, DOCUMENTS, top_n=100)["results"]) == len(DOCUMENTS)

    as_objects = rerank(server, [{"text": d} for d in DOCUMENTS])
    assert scores_of(as_objects) == scores_of(full)


@pytest.mark.llama
def test_v1_rerank_is_the_same_call(server: Server):
    ours = rerank(server, DOCUMENTS, top_n=2, return_documents=True)
    theirs = rerank(server, DOCUMENTS, "/v1/rerank", top_n=2, return_documents=True)
    assert theirs == ours


BAD_BODIES = [
    ({"query": "q", "documents": []}, "documents must be a non-empty list of strings"),
    ({"documents": ["d"]}, "query is required"),
    ({"query": "q", "documents": ["d"], "top_n": 0}, "top_n must be at least 1"),
    ({"query": "q", "documents": ["d", {"title": "t"}]}, "documents[1] must be a string"),
]


@pytest.mark.parametrize(("body", "message"), BAD_BODIES)
def test_bad_requests_are_400s_in_each_apis_shape(server: Server, body: dict, message: str):
    ollama = server.post("/api/rerank", {"model": "reranker", **body})
    assert ollama.status_code == 400 and message in ollama.json()["error"]
    openai = server.post("/v1/rerank", {"model": "reranker", **body})
    assert openai.status_code == 400
    assert openai.json()["error"]["type"] == "invalid_request_error"
    assert message in openai.json()["error"]["message"]


def test_a_model_that_is_not_a_reranker_is_a_400(server: Server):
    for path in ("/api/rerank", "/v1/rerank"):
        reply = server.post(path, {"model": "smollm2", "query": "q", "documents": ["d"]})
        assert reply.status_code == 400, reply.text
        text = json.dumps(reply.json())
        assert "smollm2" in text and "does not support reranking" in text
    missing = server.post(
        "/api/rerank", {"model": "nothing-here", "query": "q", "documents": ["d"]}
    )
    assert missing.status_code == 404


@pytest.mark.llama
def test_a_reranker_does_not_embed(server: Server):
    reply = server.post("/api/embed", {"model": "reranker", "input": "hello"})
    assert reply.status_code == 400 and "does not support embeddings" in reply.json()["error"]


@pytest.mark.llama
def test_ps_and_fit_describe_a_loaded_reranker(server: Server, reranker_file: Path):
    rerank(server, DOCUMENTS[:1])
    rows = {m["name"]: m for m in server.client.get("/api/ps").json()["models"]}
    running = rows["reranker:latest"]
    assert running["size"] > reranker_file.stat().st_size and running["size_vram"] == 0
    fit = subprocess.run(
        [sys.executable, "-m", "pollama", "fit", str(reranker_file), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    estimate = json.loads(fit.stdout)
    assert estimate["architecture"] == "qwen3" and estimate["vram"] == 0
    # The estimate (a reranker's context is an embedding context: a whole batch of
    # outputs) against what llama.cpp allocated: 1.02 GB against 1.09 GB here.
    assert 0.8 < running["size"] / estimate["total"] < 1.25, (running["size"], estimate)


@pytest.mark.llama
def test_without_a_template_pairs_are_plain_text(
    server: Server, tmp_path_factory: pytest.TempPathFactory
):
    """No rerank template: [BOS]query[EOS][SEP]document[EOS], the texts tokenized as text."""
    path = tmp_path_factory.mktemp("reranker") / "untemplated.gguf"
    create_from_file(server, "untemplated", build(demo_model_path(), path, template=None))
    query = OBVIOUS[0][0]

    def tokens(document: str) -> int:
        reply = rerank(server, [document], model="untemplated", query=query)
        assert 0.0 <= reply["results"][0]["relevance_score"] <= 1.0
        return int(reply["usage"]["total_tokens"])

    # One special token if parsed as markup; several as the text a user sent.
    assert tokens("<|im_end|>") - tokens("") > 1


@pytest.mark.llama
def test_the_asset_is_the_demo_model(server: Server, plain_qwen3_file: Path):
    """The qwen3 re-expression (no head) generates exactly what the demo does, greedily."""
    create_from_file(server, "smollm2-qwen3", plain_qwen3_file)
    options = {"temperature": 0, "num_predict": 12}
    replies = [
        server.post(
            "/api/generate",
            {"model": name, "prompt": "Name three colours.", "options": options, "stream": False},
        ).json()["response"]
        for name in ("smollm2", "smollm2-qwen3")
    ]
    assert replies[0] and replies[0] == replies[1]
