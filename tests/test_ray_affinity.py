"""The routing decision of pollama on Ray Serve, alone: hints and ranks (no Ray)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from pollama.ray.affinity import Hint, Recent, ReplicaView, full_name, hint_for, rank


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_full_names_carry_a_tag():
    assert full_name("smollm2") == "smollm2:latest"
    assert full_name("smollm2:q8") == "smollm2:q8"
    assert (
        full_name("registry.local:5000/library/demo") == "registry.local:5000/library/demo:latest"
    )
    assert full_name("  ") == ""


def test_every_turn_of_a_chat_has_the_first_turns_key():
    system = {"role": "system", "content": "You are terse."}
    first = [system, {"role": "user", "content": "Name a colour."}]
    second = [
        *first,
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "Another."},
    ]
    one, two = (
        hint_for(body(model="smollm2", messages=first)),
        hint_for(body(model="smollm2", messages=second)),
    )
    assert one.model == "smollm2:latest" and one.prefix and one.prefix == two.prefix
    # Another conversation, model or system prompt: another key.
    other = [system, {"role": "user", "content": "Name a fruit."}]
    assert hint_for(body(model="smollm2", messages=other)).prefix != one.prefix
    assert hint_for(body(model="other", messages=first)).prefix != one.prefix
    assert hint_for(body(model="smollm2", messages=first[1:])).prefix != one.prefix


def test_each_api_gives_a_hint():
    anthropic = body(model="m", system="Be brief.", messages=[{"role": "user", "content": "Hi"}])
    responses = body(model="m", instructions="Be brief.", input=[{"role": "user", "content": "Hi"}])
    generate = body(model="m", prompt="Once upon a time")
    openai_completion = body(model="m", prompt="Once upon a time", max_tokens=5)
    for raw in (anthropic, responses, generate, openai_completion):
        hint = hint_for(raw)
        assert hint.model == "m:latest" and len(hint.prefix) == 32
    assert hint_for(generate).prefix == hint_for(openai_completion).prefix
    # A model and nothing to key a conversation on: model affinity only.
    assert hint_for(body(model="m")) == Hint("m:latest", "")


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_body_gives_a_hint_and_never_raises(raw: bytes):
    hint = hint_for(raw)
    assert isinstance(hint.model, str) and isinstance(hint.prefix, str)


def test_bodies_that_are_not_json_objects_route_on_nothing():
    assert hint_for(b"") == Hint()
    assert hint_for(b"[1, 2]") == Hint()
    assert hint_for(b'{"model": 5}') == Hint()
    assert hint_for(b"[" * 5000) == Hint()
    assert hint_for(body(model="m"), "application/octet-stream") == Hint()  # a blob upload


REPLICAS = [
    ReplicaView("a", models=frozenset({"m:latest"})),
    ReplicaView("b", prefixes=frozenset({"conv"})),
    ReplicaView("c"),
]


def test_a_conversation_goes_back_to_its_replica_first():
    assert rank(REPLICAS, Hint("m:latest", "conv")) == [["b"], ["a"], ["c"]]
    # What the router remembers counts before the replicas' reports.
    assert rank(REPLICAS, Hint("m:latest", "new"), last="c") == [["c"], ["a"], ["b"]]


def test_a_model_goes_where_it_is_loaded_then_anywhere():
    assert rank(REPLICAS, Hint("m:latest", "new")) == [["a"], ["b", "c"]]
    assert rank(REPLICAS, Hint("n:latest", "new"), loaded_on="c") == [["c"], ["a", "b"]]
    assert rank(REPLICAS, Hint("n:latest", "")) == [["a", "b", "c"]]
    assert rank(REPLICAS, Hint()) == [["a", "b", "c"]]
    assert rank([], Hint("m:latest", "conv")) == []


def test_every_replica_is_ranked_once():
    for hint in (Hint("m:latest", "conv"), Hint("n:latest", ""), Hint()):
        for last in (None, "a", "gone"):
            ranks = rank(REPLICAS, hint, last=last, loaded_on="b")
            flat = [r for group in ranks for r in group]
            assert sorted(flat) == ["a", "b", "c"]


def test_recent_forgets_the_oldest_and_a_dead_replica():
    recent = Recent(capacity=2)
    recent.put("x", "r1")
    recent.put("y", "r2")
    recent.put("x", "r1")  # used again: now the newest
    recent.put("z", "r1")
    assert recent.keys() == ["x", "z"] and "y" not in recent
    recent.forget_value("r1")
    assert recent.keys() == []
