"""LoRA's parts without a model load: the scale rule, the step's choice of scale set, the
adapter arithmetic of the estimate, the buffer-size line, the wire field, and the
``lora`` field at the HTTP edge (in-process tier over a scripted runner)."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from assets.lora import LoraSpec, tensor_bytes, write_lora
from inprocess import SYSTEM, InProcess

from pollama.demo import demo_model_path
from pollama.ggufmeta import read_model
from pollama.memory.adapters import adapter_bytes
from pollama.memory.estimate import estimate_memory
from pollama.memory.types import BackendMemory, DeviceMemory
from pollama.options.load import LoadOptions, resolve_load_options
from pollama.protocol.wire import CompletionRequest, LoraScale, ProtocolError
from pollama.runner.buffers import BufferSizes
from pollama.runner.lora import QUANTUM, pick_scales, request_scales
from pollama.runner.measure import measured_memory
from pollama.runner.state import EngineError

MiB = 1024 * 1024


# -- the scale rule and the grouping ---------------------------------------------------------


def test_no_list_keeps_the_load_scales_a_list_turns_the_others_off():
    defaults = (1.0, 1.0, 1.0)
    assert request_scales((), defaults) == defaults
    assert request_scales((LoraScale(1, 0.5),), defaults) == (0.0, 0.5, 0.0)
    assert request_scales((LoraScale(0, -1.0), LoraScale(2, 2.0)), defaults) == (-1.0, 0.0, 2.0)
    assert request_scales((), ()) == ()


@pytest.mark.parametrize(("adapter_id", "count"), [(3, 3), (0, 0)])
def test_an_id_out_of_range_is_a_400(adapter_id: int, count: int):
    with pytest.raises(EngineError) as raised:
        request_scales((LoraScale(adapter_id, 1.0),), (1.0,) * count)
    assert raised.value.status == 400
    assert f"lora id {adapter_id}" in str(raised.value)


def test_the_current_set_keeps_the_context_for_a_quantum_then_the_longest_waiting_takes_it():
    a, b, c = (1.0,), (0.0,), (0.5,)
    assert pick_scales([(a, 10), (b, 3)], a, QUANTUM - 1) == a
    assert pick_scales([(a, 10), (b, 3), (c, 2)], a, QUANTUM) == c
    assert pick_scales([(a, 10)], a, 100) == a  # nobody else waits
    assert pick_scales([(b, 3)], a, 1) == b  # nothing of the current set has work
    assert pick_scales([(a, 5), (b, 4)], None, 0) == b


def test_three_scale_sets_take_turns_and_none_starves():
    """A simulated engine: every slot always has work; each step decodes the chosen set."""
    sets = [(1.0,), (0.5,), (0.0,)]
    last = {s: 0 for s in sets}
    current, held = sets[0], 0
    turns: list[tuple[float, ...]] = []
    for now in range(1, 121):
        chosen = pick_scales([(s, last[s]) for s in sets], current, held)
        current, held = chosen, held + 1 if chosen == current else 1
        last[chosen] = now
        turns.append(chosen)
    runs = [len(list(group)) for _, group in itertools.groupby(turns)]
    assert runs == [QUANTUM] * (120 // QUANTUM)
    assert all(turns.count(s) == 40 for s in sets)
    assert turns[: 3 * QUANTUM] == [s for s in sets for _ in range(QUANTUM)]


# -- memory ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = LoraSpec(rank=8, targets=("attn_q", "attn_v"), layers=(0, 5, 29))
    return write_lora(tmp_path_factory.mktemp("lora") / "a.gguf", spec)


def test_the_estimate_adds_each_adapter_tensor_to_the_layer_it_adapts(adapter: Path):
    model = read_model(demo_model_path())
    config = resolve_load_options(model, LoadOptions(num_ctx=1024), SYSTEM)
    header = read_model(adapter)
    plain = estimate_memory(model, config)
    adapted = estimate_memory(model, config, adapters=[header, header])
    added = [w - p for w, p in zip(adapted.cpu.weights, plain.cpu.weights, strict=True)]
    per_layer = tensor_bytes(adapter) // 3
    assert per_layer == 8 * 576 * 4 * 2 + 8 * (576 + 192) * 4
    assert added == [2 * per_layer if i in (0, 5, 29) else 0 for i in range(31)]
    assert adapted.input_weights == plain.input_weights
    assert adapted.memory_size()[0] - plain.memory_size()[0] == 2 * tensor_bytes(adapter)
    assert adapter_bytes([header], 30).total == tensor_bytes(adapter)


def test_the_lora_buffer_line_is_read_and_counted_as_weights():
    buffers = BufferSizes()
    buffers.feed("load_tensors:   CPU_Mapped model buffer size =    10.00 MiB")
    buffers.feed("llama_adapter_lora_init_impl:        CPU LoRA buffer size =     2.00 MiB")
    buffers.feed("llama_adapter_lora_init_impl:      CUDA0 LoRA buffer size =     1.50 MiB")
    assert buffers.get(None, "LoRA") == 2 * MiB
    placed = BackendMemory(
        input_weights=2 * MiB,
        cpu=DeviceMemory("CPU", None, (3 * MiB, 3 * MiB), (0, 0)),
    )
    measured = measured_memory(placed, buffers, graph_only=False)
    assert measured.memory_size()[0] == 12 * MiB


# -- the wire ---------------------------------------------------------------------------------


def test_the_lora_field_crosses_the_wire():
    request = CompletionRequest(prompt="x", lora=(LoraScale(0, 0.5), LoraScale(2, -1.0)))
    assert CompletionRequest.from_json(request.to_json()) == request
    assert CompletionRequest.from_json({"prompt": "x"}).lora == ()


@pytest.mark.parametrize(
    "entry",
    [{"id": -1, "scale": 1}, {"id": True, "scale": 1}, {"id": 0, "scale": float("inf")}, {}, 3],
)
def test_a_malformed_lora_entry_is_a_protocol_error(entry: Any):
    with pytest.raises(ProtocolError):
        CompletionRequest.from_json({"prompt": "x", "lora": [entry]})


# -- the HTTP edge (in-process) ------------------------------------------------------------------


@pytest.fixture
def app(tmp_path: Path) -> Iterator[InProcess]:
    app = InProcess(tmp_path)
    with app:
        yield app


def _create_with_adapters(app: InProcess, tmp_path: Path, count: int) -> str:
    adapters = {}
    for i in range(count):
        path = write_lora(tmp_path / f"a{i}.gguf", LoraSpec(rank=2, layers=(0,), seed=i))
        data = path.read_bytes()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        assert app.client.post(f"/api/blobs/{digest}", content=data).status_code == 201
        adapters[path.name] = digest
    body = {"model": "tuned", "from": "smollm2", "adapters": adapters}
    assert app.client.post("/api/create", json=body).status_code == 200
    return "tuned"


def _requests(model: str, lora: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    hi = [{"role": "user", "content": "Hi"}]
    return {
        "generate": ("/api/generate", {"model": model, "prompt": "Hi", "lora": lora}),
        "chat": ("/api/chat", {"model": model, "messages": hi, "lora": lora}),
        "openai": ("/v1/chat/completions", {"model": model, "messages": hi, "lora": lora}),
        "completions": ("/v1/completions", {"model": model, "prompt": "Hi", "lora": lora}),
    }


def test_the_lora_field_reaches_the_runner_from_every_route(app: InProcess, tmp_path: Path):
    model = _create_with_adapters(app, tmp_path, 2)
    lora = [{"id": 1, "scale": 0.25}, {"id": 0, "scale": 0}]
    for api, (path, body) in _requests(model, lora).items():
        reply = app.client.post(path, json={**body, "stream": False})
        assert reply.status_code == 200, (api, reply.text)
        (runner,) = app.runners
        assert runner.requests[-1].lora == (LoraScale(1, 0.25), LoraScale(0, 0.0)), api
    assert len(app.runners[0].spec.adapters) == 2


def _message(body: dict[str, Any]) -> str:
    error = body["error"]
    return error if isinstance(error, str) else str(error["message"])


@pytest.mark.parametrize(
    ("lora", "says"),
    [
        ('[{"id": 2, "scale": 1.0}]', "has no LoRA adapter with that id; it has 2 (ids 0-1)"),
        ('[{"id": 0, "scale": 1}, {"id": 0, "scale": 2}]', "lora id 0 is given more than once"),
        ('[{"id": 0, "scale": 1e999}]', "lora.0.scale"),
        ('[{"id": 0, "scale": NaN}]', "lora.0.scale"),
        ('[{"id": "0", "scale": 1.0}]', "lora.0.id"),
        ('[{"id": -1, "scale": 1.0}]', "lora.0.id"),
        ('[{"id": 0}]', "lora.0.scale"),
        ('[{"id": 0, "scale": 1.0, "weight": 2}]', "lora.0.weight"),
        ('{"id": 0, "scale": 1.0}', "lora"),
    ],
)
def test_a_bad_lora_field_is_a_400_before_anything_loads(
    app: InProcess, tmp_path: Path, lora: str, says: str
):
    """``lora`` as JSON text: non-finite numbers are what Python's JSON reader takes and
    no client should send."""
    model = _create_with_adapters(app, tmp_path, 2)
    for api, (path, body) in _requests(model, None).items():
        del body["lora"]
        text = json.dumps({**body, "stream": False})[:-1] + f', "lora": {lora}}}'
        reply = app.client.post(path, content=text)
        assert reply.status_code == 400, (api, reply.text)
        assert says in _message(reply.json()), (api, reply.text)
    assert app.runners == []
